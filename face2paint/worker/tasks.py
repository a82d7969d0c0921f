"""One Celery task per stage. Each stage records its attempt, writes its own terminal state and
stops the item's chain itself (Ignore) instead of relying on chain error callbacks.

Models load lazily on first use inside the worker process, never in the parent of a prefork
pool, and stay loaded for the life of the process.
"""

from __future__ import annotations

import logging
import socket
import time
from functools import lru_cache

from celery.exceptions import Ignore, SoftTimeLimitExceeded

from ..jobs.db import Item, Job
from ..jobs.faces import record_faces
from ..jobs.keys import artifact_key, item_prefix, result_key
from ..jobs.progress import refresh_job
from ..jobs.stages import begin_stage, end_stage, fail_item, finish_stage
from ..jobs.states import STAGES
from ..jobs.storage import StorageUnavailable
from ..settings import get_settings
from . import artifacts, faults, metrics
from .app import celery_app
from .context import session_scope, storage

log = logging.getLogger("face2paint.worker")
app = celery_app()


class PermanentError(Exception):
    """This input can never succeed (bad image, unknown model): fail the item, no retry."""


# How long a stage keeps retrying through a database, storage or broker outage before the item
# fails. Outage retries don't count against settings.max_attempts, which is for poison inputs.
OUTAGE_GIVE_UP_S = 15 * 60


def is_outage(e: BaseException) -> bool:
    """Errors that say a service is unreachable, not that this input is bad: retry later."""
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(e, (StorageUnavailable, OperationalError, InterfaceError, BrokerError)):
        return True
    return isinstance(e, DBAPIError) and bool(e.connection_invalidated)


def _retry_cap_s() -> int:
    # Retry countdowns stay well under the broker's visibility timeout (3 x stage timeout): a
    # worker holds a countdown message unacked, and Redis would hand it out a second time.
    return max(1, min(30, get_settings().stage_timeout_s // 4))


@lru_cache(maxsize=4)
def pipeline_for(style: str | None, params_items: tuple):
    from ..models.pipeline import Face2Paint
    from ..models.types import Params

    t0 = time.perf_counter()
    pipe, chosen = Face2Paint.from_registry(style=style, params=Params(**dict(params_items)))
    metrics.model_loaded(pipe.models, time.perf_counter() - t0)
    log.info("models loaded: %s", chosen)
    return pipe


def _pipeline(options: dict):
    from ..models.registry import ModelUnavailable

    try:
        pipe = pipeline_for(options.get("style"), tuple(sorted((options.get("params") or {}).items())))
    except (ModelUnavailable, ValueError, TypeError) as e:
        raise PermanentError(str(e)) from e
    metrics.note_models(pipe.models)
    return pipe


def _worker_name(task) -> str:
    return getattr(task.request, "hostname", None) or socket.gethostname()


def _begin(task, stage: str, item_id: str, outage: dict | None):
    """Start an attempt; (attempt_id, attempt_no, ctx), or None if the task must not run."""
    if outage and outage.get("attempt"):
        # The attempt an outage interrupted could not be closed then; close it now, which
        # also gives it back (an outage is not the input's fault).
        with session_scope() as s:
            end_stage(s, outage["attempt"], "outage", error=outage.get("error"))
    with session_scope() as s:
        attempt = begin_stage(s, item_id, stage, _worker_name(task))
        if attempt is None:
            # Terminal, canceled, stale, or over the attempt cap (begin_stage recorded why).
            item = s.get(Item, item_id)
            if item is not None:
                refresh_job(s, item.job_id)
            return None
        item = s.get(Item, item_id)
        job = s.get(Job, item.job_id)
        ctx = {"job_id": job.id, "item_id": item.id, "input_key": item.input_key,
               "filename": item.filename, "options": dict(job.options or {})}
        return attempt.id, attempt.attempt, ctx


def _fail(item_id: str, job_id: str | None, reason: str) -> None:
    with session_scope() as s:
        item = fail_item(s, item_id, reason)
        if item is not None:
            refresh_job(s, job_id or item.job_id)


def _retry_after_outage(task, stage, item_id, e, outage, attempt_id, job_id=None):
    since = (outage or {}).get("since") or time.time()
    if attempt_id is not None:
        try:
            with session_scope() as s:
                end_stage(s, attempt_id, "outage", error=repr(e))
            attempt_id = None
        except Exception:  # the database is down too: the next try closes it
            log.debug("could not close attempt %s yet", attempt_id, exc_info=True)
    waited = time.time() - since
    if waited > OUTAGE_GIVE_UP_S:
        reason = (f"{stage}: gave up after {waited / 60:.0f} min of retrying through an outage: {e}. "
                  "Check the database, storage and broker, then submit the image again")
        try:
            _fail(item_id, job_id, reason)
        except Exception:  # noqa: BLE001 - still down: the sweeper sends the item again later
            log.error("item %s: %s (could not record it)", item_id, reason)
        raise Ignore()
    log.warning("stage %s of item %s hit an outage, retrying: %r", stage, item_id, e)
    raise task.retry(
        exc=e, countdown=min(_retry_cap_s(), 2 ** task.request.retries),
        kwargs={"outage": {"since": since, "attempt": attempt_id, "error": str(e)[:1000]}},
    )


def run_stage(task, stage: str, item_id: str, work, outage: dict | None = None) -> None:
    """Common frame of every stage: attempt bookkeeping, errors, retries, chain control.

    - a PermanentError fails the item at once;
    - an outage (database, storage, broker unreachable) retries with backoff, refunding the
      attempt, for up to OUTAGE_GIVE_UP_S;
    - any other error (a library crash, the soft time limit) counts as an attempt and retries
      until settings.max_attempts, then fails the item with the last error;
    - a worker killed mid-stage leaves its attempt open; the broker redelivers the task
      (acks_late + reject_on_worker_lost) and begin_stage counts it, so an input that kills
      its worker every time stops at the cap.
    Raising Ignore stops the item's chain; returning lets Celery publish the next stage.
    """
    try:
        begun = _begin(task, stage, item_id, outage)
    except Exception as e:
        if is_outage(e):
            # Still down: carry the interrupted attempt (if any) on to the next try.
            _retry_after_outage(task, stage, item_id, e, outage, (outage or {}).get("attempt"))
        raise
    if begun is None:
        raise Ignore()
    attempt_id, attempt_no, ctx = begun
    t0 = time.perf_counter()
    try:
        outcome = work(ctx) or {}
        timings = dict(outcome.get("timings") or {})
        timings[stage] = round(time.perf_counter() - t0, 4)
        with session_scope() as s:
            goes_on = finish_stage(s, attempt_id, timings, output_key=outcome.get("output_key"),
                                   face_count=outcome.get("face_count"))
        if not goes_on:
            raise Ignore()  # a duplicate delivery: the newer attempt publishes the next stage
        if stage == STAGES[-1]:
            _drop_artifacts(ctx)
        return
    except Ignore:
        raise
    except PermanentError as e:
        error, permanent = e, True
    except Exception as e:  # noqa: BLE001 - classified below
        if is_outage(e):
            _retry_after_outage(task, stage, item_id, e, outage, attempt_id, ctx["job_id"])
        error, permanent = e, False
    try:
        if permanent:
            _finish(attempt_id, "failed", str(error), stage, t0)
            _fail(item_id, ctx["job_id"], f"{stage}: {error}")
            raise Ignore()
        settings = get_settings()
        if isinstance(error, SoftTimeLimitExceeded):
            message = (f"timed out after {settings.stage_timeout_s} s "
                       "(FACE2PAINT_STAGE_TIMEOUT_S)")
        else:
            message = f"{type(error).__name__}: {error}"
        log.warning("stage %s of item %s failed (attempt %d): %s", stage, item_id, attempt_no, message)
        _finish(attempt_id, "retry", message, stage, t0)
        if attempt_no >= settings.max_attempts:
            _fail(item_id, ctx["job_id"],
                  f"{stage}: gave up after {attempt_no} attempts; last error: {message}")
            raise Ignore()
    except Exception as e:
        if is_outage(e):
            _retry_after_outage(task, stage, item_id, e, outage, attempt_id, ctx["job_id"])
        raise
    raise task.retry(exc=error, countdown=min(_retry_cap_s(), 2 ** attempt_no))


def _drop_artifacts(ctx) -> None:
    """Once an item has its result, its stage artifacts (several MB per photo) are garbage.
    Best effort: a leftover costs only space. Failed items keep theirs, for diagnosis. A late
    duplicate of a stage that finds them gone retries and then stops at the terminal item."""
    st = storage()
    prefix = item_prefix(ctx["job_id"], ctx["item_id"])
    try:
        for key in st.list(prefix):
            if key[len(prefix):].split("/", 1)[0] in STAGES:
                st.delete(key)
    except Exception as e:  # noqa: BLE001 - never fail a finished item over clean-up
        log.warning("could not remove the stage artifacts of item %s: %r", ctx["item_id"], e)


def _finish(attempt_id, outcome, error, stage, t0, timings=None):
    with session_scope() as s:
        timings = dict(timings or {})
        timings[stage] = round(time.perf_counter() - t0, 4)
        end_stage(s, attempt_id, outcome, error=error, timings=timings)


def _load_input(ctx):
    from ..models.image_io import ImageError, load_image

    settings = get_settings()
    data = storage().get_bytes(ctx["input_key"])
    try:
        return load_image(data, max_side=settings.max_side, max_pixels=settings.max_image_pixels)
    except ImageError as e:
        raise PermanentError(str(e)) from e


def _key(ctx, stage, name):
    return artifact_key(ctx["job_id"], ctx["item_id"], stage, name)


# --- stages ---------------------------------------------------------------------------------


def _detect(ctx):
    image = _load_input(ctx)
    options = ctx["options"]
    faces = []
    if options.get("face2paint", True):
        faces = _pipeline(options).detect(image.rgb)
    st = storage()
    st.put_bytes(_key(ctx, "detect", "image.npy"), artifacts.npy_bytes(image.rgb), "application/octet-stream")
    faults.hit("detect", ctx["item_id"], (ctx["filename"],))
    st.put_bytes(
        _key(ctx, "detect", "faces.json"),
        # Full precision: rounded landmarks would shift the alignment and change the output.
        artifacts.json_bytes({"original_size": list(image.original_size),
                              "faces": [{"box": list(f.box), "landmarks": f.landmarks.tolist(),
                                         "score": f.score} for f in faces]}),
        "application/json",
    )
    with session_scope() as s:
        record_faces(s, ctx["item_id"], [f.to_dict() for f in faces],
                     width=image.original_size[0], height=image.original_size[1])


def _read_image(ctx):
    return artifacts.npy_array(storage().get_bytes(_key(ctx, "detect", "image.npy")))


def _read_detect(ctx):
    from ..models.types import Face

    meta = artifacts.json_obj(storage().get_bytes(_key(ctx, "detect", "faces.json")))
    return _read_image(ctx), [Face.from_dict(d) for d in meta["faces"]], tuple(meta["original_size"])


def _parse(ctx):
    import numpy as np

    rgb, faces, _ = _read_detect(ctx)
    pipe = _pipeline(ctx["options"])
    aligned = pipe.prepare(rgb, faces) if faces else []
    faults.hit("parse", ctx["item_id"], (ctx["filename"],))
    s = pipe.params.face_size
    storage().put_bytes(
        _key(ctx, "parse", "faces.npz"),
        artifacts.npz_bytes(
            refined=np.stack([a.refined for a in aligned]) if aligned else np.zeros((0, s, s, 3), np.uint8),
            mask=np.stack([(a.paste_mask * 255).astype(np.uint8) for a in aligned]) if aligned else np.zeros((0, s, s), np.uint8),
            inverse=np.stack([a.inverse for a in aligned]) if aligned else np.zeros((0, 2, 3)),
        ),
        "application/octet-stream",
    )


def _stylize(ctx):
    import numpy as np

    rgb = _read_image(ctx)
    pipe = _pipeline(ctx["options"])
    parsed = artifacts.npz_arrays(storage().get_bytes(_key(ctx, "parse", "faces.npz")))
    t = time.perf_counter()
    crops = pipe.stylize_crops(list(parsed["refined"]), [pipe.work_size(m) for m in parsed["inverse"]])
    t_faces = time.perf_counter() - t
    metrics.stylize_batch(pipe.models["stylize"], len(crops))
    background = pipe.stylize_background(rgb)
    st = storage()
    st.put_bytes(_key(ctx, "stylize", "background.npy"), artifacts.npy_bytes(background),
                 "application/octet-stream")
    faults.hit("stylize", ctx["item_id"], (ctx["filename"],))
    st.put_bytes(
        _key(ctx, "stylize", "faces.npz"),
        artifacts.npz_bytes(crops=np.stack(crops) if len(crops) else np.zeros((0,) + parsed["refined"].shape[1:], np.uint8)),
        "application/octet-stream",
    )
    return {"timings": {"stylize_faces": round(t_faces, 4)}}


def _finalize(ctx):
    from ..models.image_io import resize_to
    from ..models.paste import compose
    from ..models.types import Params

    st = storage()
    meta = artifacts.json_obj(st.get_bytes(_key(ctx, "detect", "faces.json")))
    out = artifacts.npy_array(st.get_bytes(_key(ctx, "stylize", "background.npy")))
    options = ctx["options"]
    face_count = 0
    if options.get("face2paint", True):
        parsed = artifacts.npz_arrays(st.get_bytes(_key(ctx, "parse", "faces.npz")))
        crops = artifacts.npz_arrays(st.get_bytes(_key(ctx, "stylize", "faces.npz")))["crops"]
        masks = [m.astype("float32") / 255.0 for m in parsed["mask"]]
        weight = Params(**(options.get("params") or {})).post_sharpen_weight
        out = compose(out, list(crops), list(parsed["inverse"]), masks, weight)
        face_count = len(crops)
    original = tuple(meta["original_size"])
    if (out.shape[1], out.shape[0]) != original:
        out = resize_to(out, original)
    key = result_key(ctx["job_id"], ctx["item_id"])
    # Deterministic key: a finalize that runs again (its worker died after this write)
    # overwrites the same object, so an item never has two results.
    st.put_bytes(key, artifacts.png_bytes(out), "image/png")
    faults.hit("finalize", ctx["item_id"], (ctx["filename"],))
    # run_stage marks the item succeeded when it closes this attempt (one transaction).
    return {"output_key": key, "face_count": face_count}


# max_retries=None on the task: retry(max_retries=None) means "the task's default" (3), after
# which Celery raises the error and acks the message. Retries are bounded by the attempt cap
# and OUTAGE_GIVE_UP_S instead.
@app.task(name="face2paint.detect", bind=True, max_retries=None)
def detect(self, item_id: str, outage: dict | None = None) -> None:
    run_stage(self, "detect", item_id, _detect, outage)


@app.task(name="face2paint.parse", bind=True, max_retries=None)
def parse(self, item_id: str, outage: dict | None = None) -> None:
    run_stage(self, "parse", item_id, _parse, outage)


@app.task(name="face2paint.stylize", bind=True, max_retries=None)
def stylize(self, item_id: str, outage: dict | None = None) -> None:
    run_stage(self, "stylize", item_id, _stylize, outage)


@app.task(name="face2paint.finalize", bind=True, max_retries=None)
def finalize(self, item_id: str, outage: dict | None = None) -> None:
    run_stage(self, "finalize", item_id, _finalize, outage)
