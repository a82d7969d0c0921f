"""One Celery task per stage, on one base class (StageTask) that holds the stage and the
process's resources and runs the frame every stage shares: attempt bookkeeping, errors, retries
and chain control. Each stage records its attempt, writes its own terminal state and stops the
item's chain itself (Ignore) instead of relying on chain error callbacks.

The stage bodies only unpack the artifacts of the stages before, call one pipeline method
(models/pipeline.py) and pack what it returns. Models load lazily from the process's model
cache when a stage first needs them (detect: the detector, parse: the parser, stylize: the
stylizers, finalize: none), inside the pool process, never in the parent of a prefork pool,
and stay loaded for the life of the process, whatever parameters the jobs ask for.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from functools import cached_property

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

from ..jobs.db import Item, Job
from ..jobs.faces import record_faces
from ..jobs.keys import artifact_key, result_key
from ..jobs.progress import refresh_job
from ..jobs.stages import begin_stage, end_stage, fail_item, finish_stage
from ..jobs.retention import drop_item_artifacts
from ..jobs.states import STAGES, ItemState
from ..jobs.storage import StorageUnavailable
from ..models.registry import ModelUnavailable
from . import artifacts, faults, metrics
from .app import TASK_NAMES, celery_app
from .context import resources, session_scope

log = logging.getLogger("face2paint.worker")
app = celery_app()

OCTETS = "application/octet-stream"


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


# The pipeline role whose model each stage runs (finalize runs none).
_MODEL_ROLE = {"detect": "detect", "parse": "parse", "stylize": "stylize"}


@dataclass
class StageContext:
    """What a stage body works with: the item, the job's options, the stage's storage handle
    and the pipeline over the process's model cache."""

    job_id: str
    item_id: str
    input_key: str
    filename: str
    options: dict
    storage: object
    models: object  # the process's ModelCache

    @cached_property
    def params(self):
        try:  # the style preset's defaults under the request's own params
            return self.pipe.params_for(self.options.get("params") or {})
        except TypeError as e:
            raise PermanentError(f"bad params: {e}") from e

    @cached_property
    def pipe(self):
        from ..models.pipeline import Face2Paint

        return Face2Paint(self.models, style=self.options.get("style"),
                          face_style=self.options.get("face_style"),
                          background_style=self.options.get("background_style"))

    @property
    def face2paint(self) -> bool:
        return bool(self.options.get("face2paint", True))

    def key(self, stage: str, name: str) -> str:
        return artifact_key(self.job_id, self.item_id, stage, name)

    def read(self, stage: str, name: str) -> bytes:
        return self.storage.get_bytes(self.key(stage, name))


class StageTask(Task):
    """Base of the four stage tasks: `stage` is set per task (`@app.task(stage=...)`); the
    resources (database sessions, storage, model cache) are the pool process's own."""

    stage: str = ""
    # retry(max_retries=None) means "the task's default", after which Celery raises the error
    # and acks the message; retries are bounded by the attempt cap and OUTAGE_GIVE_UP_S instead.
    max_retries = None
    # Retry countdowns: Celery's exponential backoff with full jitter, capped (see backoff_s).
    retry_backoff = 1
    retry_jitter = True

    @property
    def resources(self):
        return resources()

    def backoff_s(self, retries: int) -> int:
        # The cap stays well under the broker's visibility timeout (3 x stage timeout): a
        # worker holds a countdown message unacked, and Redis would hand it out a second time.
        cap = max(1, min(30, self.resources.settings.stage_timeout_s // 4))
        return get_exponential_backoff_interval(self.retry_backoff, retries, cap,
                                                full_jitter=self.retry_jitter)

    def context(self, row: dict) -> StageContext:
        res = self.resources
        storage = faults.at_first_write(res.storage, self.stage, row["item_id"], (row["filename"],))
        return StageContext(**row, storage=storage, models=res.models)

    # --- the frame ------------------------------------------------------------------------

    def run_stage(self, item_id: str, work, outage: dict | None = None) -> None:
        """Common frame of every stage: attempt bookkeeping, errors, retries, chain control.

        - a PermanentError (or a model that cannot be had) fails the item at once;
        - an outage (database, storage, broker unreachable) retries with backoff, refunding the
          attempt, for up to OUTAGE_GIVE_UP_S;
        - any other error (a library crash, the soft time limit) counts as an attempt and
          retries until settings.max_attempts, then fails the item with the last error;
        - a worker killed mid-stage leaves its attempt open; the broker redelivers the task
          (acks_late + reject_on_worker_lost) and begin_stage counts it, so an input that kills
          its worker every time stops at the cap.
        Raising Ignore stops the item's chain; returning lets Celery publish the next stage.
        """
        stage = self.stage
        try:
            begun = self._begin(item_id, outage)
        except Exception as e:
            if is_outage(e):
                # Still down: carry the interrupted attempt (if any) on to the next try.
                self._retry_after_outage(item_id, e, outage, (outage or {}).get("attempt"))
            raise
        if begun is None:
            _tidy_ended(None, item_id)
            raise Ignore()
        attempt_id, attempt_no, row = begun
        job_id = row["job_id"]
        t0 = time.perf_counter()
        try:
            ctx = self.context(row)
            used = _models_used(stage, ctx)
            if stage in _MODEL_ROLE:  # the stage histogram's model label (worker/metrics.py)
                metrics.note_models({stage: ctx.pipe.choice(_MODEL_ROLE[stage]).model_id})
            outcome = work(ctx) or {}
            timings = dict(outcome.get("timings") or {})
            timings[stage] = round(time.perf_counter() - t0, 4)
            with session_scope() as s:
                goes_on = finish_stage(s, attempt_id, timings, output_key=outcome.get("output_key"),
                                       face_count=outcome.get("face_count"), models=used)
            if not goes_on:
                # A duplicate delivery (the newer attempt publishes the next stage), or the item
                # was canceled meanwhile: then what this stage wrote goes.
                _tidy_ended(job_id, item_id)
                raise Ignore()
            if stage == STAGES[-1]:
                self._drop_artifacts(job_id, item_id)
            return
        except Ignore:
            raise
        except (PermanentError, ModelUnavailable) as e:
            error, permanent = e, True
        except Exception as e:  # noqa: BLE001 - classified below
            if is_outage(e):
                self._retry_after_outage(item_id, e, outage, attempt_id, job_id)
            error, permanent = e, False
        try:
            if permanent:
                self._finish(attempt_id, "failed", str(error), t0)
                _fail(item_id, job_id, f"{stage}: {error}")
                raise Ignore()
            settings = self.resources.settings
            if isinstance(error, SoftTimeLimitExceeded):
                message = (f"timed out after {settings.stage_timeout_s} s "
                           "(FACE2PAINT_STAGE_TIMEOUT_S)")
            else:
                message = f"{type(error).__name__}: {error}"
            log.warning("stage %s of item %s failed (attempt %d): %s", stage, item_id, attempt_no, message)
            self._finish(attempt_id, "retry", message, t0)
            if attempt_no >= settings.max_attempts:
                _fail(item_id, job_id, f"{stage}: gave up after {attempt_no} attempts; last error: {message}")
                raise Ignore()
        except Exception as e:
            if is_outage(e):
                self._retry_after_outage(item_id, e, outage, attempt_id, job_id)
            raise
        raise self.retry(exc=error, countdown=self.backoff_s(attempt_no))

    def _worker_name(self) -> str:
        return getattr(self.request, "hostname", None) or socket.gethostname()

    def _begin(self, item_id: str, outage: dict | None):
        """Start an attempt; (attempt_id, attempt_no, row), or None if the task must not run."""
        if outage and outage.get("attempt"):
            # The attempt an outage interrupted could not be closed then; close it now, which
            # also gives it back (an outage is not the input's fault).
            with session_scope() as s:
                end_stage(s, outage["attempt"], "outage", error=outage.get("error"))
        with session_scope() as s:
            attempt = begin_stage(s, item_id, self.stage, self._worker_name())
            if attempt is None:
                # Terminal, canceled, stale, or over the attempt cap (begin_stage recorded why).
                item = s.get(Item, item_id)
                if item is not None:
                    refresh_job(s, item.job_id)
                return None
            item = s.get(Item, item_id)
            job = s.get(Job, item.job_id)
            row = {"job_id": job.id, "item_id": item.id, "input_key": item.input_key,
                   "filename": item.filename, "options": dict(job.options or {})}
            return attempt.id, attempt.attempt, row

    def _retry_after_outage(self, item_id, e, outage, attempt_id, job_id=None):
        stage = self.stage
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
        raise self.retry(
            exc=e, countdown=self.backoff_s(self.request.retries),
            kwargs={"outage": {"since": since, "attempt": attempt_id, "error": str(e)[:1000]}},
        )

    def _finish(self, attempt_id, outcome, error, t0):
        with session_scope() as s:
            end_stage(s, attempt_id, outcome, error=error,
                              timings={self.stage: round(time.perf_counter() - t0, 4)})

    def _drop_artifacts(self, job_id: str, item_id: str, result: bool = False) -> None:
        _drop_artifacts(job_id, item_id, result)


def _drop_artifacts(job_id: str, item_id: str, result: bool = False) -> None:
    """Once an item has ended, its stage artifacts (several MB per photo) are garbage, whether
    it succeeded, failed or was canceled (the photos of people are personal data; a failed
    item's reason is in the database). A canceled item's late result goes too. Best effort: a
    leftover costs only space, and the job's retention removes it. A late duplicate of a stage
    that finds them gone retries and then stops at the terminal item."""
    try:
        drop_item_artifacts(resources().storage, job_id, item_id, result=result)
    except Exception as e:  # noqa: BLE001 - never fail a finished item over clean-up
        log.warning("could not remove the stage artifacts of item %s: %r", item_id, e)


def _tidy_ended(job_id: str | None, item_id: str) -> None:
    """After a stage found its item ended (canceled, failed): remove what is left of it."""
    try:
        with session_scope() as s:
            item = s.get(Item, item_id)
            status, job_id = (item.status, item.job_id) if item is not None else (None, job_id)
    except Exception:  # noqa: BLE001 - clean-up only
        return
    if status in (ItemState.CANCELED, ItemState.FAILED):
        _drop_artifacts(job_id, item_id, result=status == ItemState.CANCELED)


def _models_used(stage: str, ctx: StageContext) -> dict[str, str]:
    """The models this stage runs for the item, per role (none when face2paint is off for
    the face stages)."""
    if stage == "stylize":
        return {"stylize": ctx.pipe.choice("stylize").model_id,
                "stylize_background": ctx.pipe.choice("stylize_background").model_id}
    if stage in ("detect", "parse") and ctx.face2paint:
        return {stage: ctx.pipe.choice(stage).model_id}
    return {}


def _fail(item_id: str, job_id: str | None, reason: str) -> None:
    with session_scope() as s:
        item = fail_item(s, item_id, reason)
        if item is not None:
            refresh_job(s, job_id or item.job_id)
            job_id = item.job_id
    if job_id:
        _drop_artifacts(job_id, item_id)


# --- stages: unpack, one pipeline call, pack -------------------------------------------------


def _load_input(ctx: StageContext):
    from ..models.image_io import ImageError, load_image

    settings = resources().settings
    data = ctx.storage.get_bytes(ctx.input_key)
    try:
        return load_image(data, max_side=settings.max_side, max_pixels=settings.max_image_pixels)
    except ImageError as e:
        raise PermanentError(str(e)) from e


def _image(ctx: StageContext):
    return artifacts.npy_array(ctx.read("detect", "image.npy"))


def _faces(ctx: StageContext):
    from ..models.face import FaceBatch

    if not ctx.face2paint:
        return ctx.pipe.pack([], ctx.params)
    return FaceBatch.from_arrays(artifacts.npz_arrays(ctx.read("parse", "faces.npz")))


def _detect(ctx: StageContext):
    image = _load_input(ctx)
    faces = ctx.pipe.detect(image.rgb) if ctx.face2paint else []
    ctx.storage.put_bytes(ctx.key("detect", "image.npy"), artifacts.npy_bytes(image.rgb), OCTETS)
    ctx.storage.put_bytes(ctx.key("detect", "faces.json"),
                          artifacts.faces_bytes(faces, image.original_size), "application/json")
    with session_scope() as s:
        record_faces(s, ctx.item_id, [f.to_dict() for f in faces],
                     width=image.original_size[0], height=image.original_size[1])


def _parse(ctx: StageContext):
    faces, _ = artifacts.faces_from(ctx.read("detect", "faces.json"))
    aligned = ctx.pipe.prepare(_image(ctx), faces, ctx.params) if faces else []
    ctx.storage.put_bytes(ctx.key("parse", "faces.npz"),
                          artifacts.npz_bytes(**ctx.pipe.pack(aligned, ctx.params).arrays()), OCTETS)


def _stylize(ctx: StageContext):
    rgb, faces = _image(ctx), _faces(ctx)
    metrics.stylize_batch(ctx.pipe.choice("stylize").model_id, len(faces))
    t = time.perf_counter()
    crops = ctx.pipe.stylize_faces(faces, ctx.params)
    t_faces = time.perf_counter() - t
    background = ctx.pipe.stylize_background(rgb, ctx.params)
    ctx.storage.put_bytes(ctx.key("stylize", "background.npy"), artifacts.npy_bytes(background), OCTETS)
    ctx.storage.put_bytes(ctx.key("stylize", "faces.npz"), artifacts.images_npz(crops), OCTETS)
    return {"timings": {"stylize_faces": round(t_faces, 4)}}


def _finalize(ctx: StageContext):
    _, original_size = artifacts.faces_from(ctx.read("detect", "faces.json"))
    background = artifacts.npy_array(ctx.read("stylize", "background.npy"))
    faces = _faces(ctx)
    crops = artifacts.images_from(ctx.read("stylize", "faces.npz")) if ctx.face2paint else []
    out = ctx.pipe.finalize(background, faces, crops, original_size, ctx.params, ctx.face2paint)
    data, ext, mime = artifacts.result_bytes(out, ctx.options)
    key = result_key(ctx.job_id, ctx.item_id, ext)
    # Deterministic key: a finalize that runs again (its worker died after this write)
    # overwrites the same object, so an item never has two results.
    ctx.storage.put_bytes(key, data, mime)
    # run_stage marks the item succeeded when it closes this attempt (one transaction).
    return {"output_key": key, "face_count": len(faces)}


def _task(stage: str):
    return app.task(name=TASK_NAMES[stage], base=StageTask, bind=True, stage=stage)


@_task("detect")
def detect(self, item_id: str, outage: dict | None = None) -> None:
    self.run_stage(item_id, _detect, outage)


@_task("parse")
def parse(self, item_id: str, outage: dict | None = None) -> None:
    self.run_stage(item_id, _parse, outage)


@_task("stylize")
def stylize(self, item_id: str, outage: dict | None = None) -> None:
    self.run_stage(item_id, _stylize, outage)


@_task("finalize")
def finalize(self, item_id: str, outage: dict | None = None) -> None:
    self.run_stage(item_id, _finalize, outage)
