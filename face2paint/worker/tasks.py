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

from ..jobs import service
from ..jobs.db import Item, Job
from ..jobs.keys import artifact_key, result_key
from ..settings import get_settings
from . import artifacts
from .app import celery_app
from .context import session_scope, storage

log = logging.getLogger("face2paint.worker")
app = celery_app()


class PermanentError(Exception):
    """This input can never succeed (bad image, unknown model): fail the item, no retry."""


@lru_cache(maxsize=4)
def pipeline_for(style: str | None, params_items: tuple):
    from ..models.pipeline import Face2Paint
    from ..models.types import Params

    pipe, chosen = Face2Paint.from_registry(style=style, params=Params(**dict(params_items)))
    log.info("models loaded: %s", chosen)
    return pipe


def _pipeline(options: dict):
    from ..models.registry import ModelUnavailable

    try:
        return pipeline_for(options.get("style"), tuple(sorted((options.get("params") or {}).items())))
    except (ModelUnavailable, ValueError, TypeError) as e:
        raise PermanentError(str(e)) from e


def _worker_name(task) -> str:
    return getattr(task.request, "hostname", None) or socket.gethostname()


def run_stage(task, stage: str, item_id: str, work) -> None:
    """Common frame of every stage: attempt bookkeeping, errors, retries, chain control."""
    with session_scope() as s:
        attempt = service.begin_stage(s, item_id, stage, _worker_name(task))
        if attempt is None:
            # Terminal, canceled, or over the attempt cap (begin_stage recorded why).
            with session_scope() as s2:
                item = s2.get(Item, item_id)
                if item is not None:
                    service.refresh_job(s2, item.job_id)
            raise Ignore()
        attempt_id, attempt_no = attempt.id, attempt.attempt
        item = s.get(Item, item_id)
        job = s.get(Job, item.job_id)
        ctx = {"job_id": job.id, "item_id": item.id, "input_key": item.input_key,
               "options": dict(job.options or {})}
    t0 = time.perf_counter()
    try:
        outcome = work(ctx) or {}
    except (Ignore, SoftTimeLimitExceeded):
        raise
    except PermanentError as e:
        _finish(attempt_id, "failed", str(e), stage, t0)
        with session_scope() as s:
            service.fail_item(s, item_id, f"{stage}: {e}")
            service.refresh_job(s, ctx["job_id"])
        raise Ignore()
    except Exception as e:  # transient: storage or database outage, a crash in a library
        log.warning("stage %s of item %s failed, will retry: %r", stage, item_id, e)
        _finish(attempt_id, "retry", repr(e), stage, t0)
        settings = get_settings()
        with session_scope() as s:
            item = s.get(Item, item_id)
            exhausted = item.attempts >= settings.max_attempts
        if exhausted:
            with session_scope() as s:
                service.fail_item(s, item_id, f"{stage}: gave up after {settings.max_attempts} attempts: {e}")
                service.refresh_job(s, ctx["job_id"])
            raise Ignore()
        raise task.retry(exc=e, countdown=min(30, 2 ** attempt_no), max_retries=None)
    _finish(attempt_id, "succeeded", None, stage, t0, outcome.get("timings"))


def _finish(attempt_id, outcome, error, stage, t0, timings=None):
    with session_scope() as s:
        timings = dict(timings or {})
        timings[stage] = round(time.perf_counter() - t0, 4)
        service.end_stage(s, attempt_id, outcome, error=error, timings=timings)


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
    st.put_bytes(_key(ctx, "detect", "image.png"), artifacts.png_bytes(image.rgb), "image/png")
    st.put_bytes(
        _key(ctx, "detect", "faces.json"),
        # Full precision: rounded landmarks would shift the alignment and change the output.
        artifacts.json_bytes({"original_size": list(image.original_size),
                              "faces": [{"box": list(f.box), "landmarks": f.landmarks.tolist(),
                                         "score": f.score} for f in faces]}),
        "application/json",
    )
    with session_scope() as s:
        service.record_faces(s, ctx["item_id"], [f.to_dict() for f in faces],
                             width=image.original_size[0], height=image.original_size[1])


def _read_detect(ctx):
    from ..models.types import Face

    st = storage()
    rgb = artifacts.png_array(st.get_bytes(_key(ctx, "detect", "image.png")))
    meta = artifacts.json_obj(st.get_bytes(_key(ctx, "detect", "faces.json")))
    return rgb, [Face.from_dict(d) for d in meta["faces"]], tuple(meta["original_size"])


def _parse(ctx):
    import numpy as np

    rgb, faces, _ = _read_detect(ctx)
    pipe = _pipeline(ctx["options"])
    aligned = pipe.prepare(rgb, faces) if faces else []
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

    rgb, _, _ = _read_detect(ctx)
    pipe = _pipeline(ctx["options"])
    parsed = artifacts.npz_arrays(storage().get_bytes(_key(ctx, "parse", "faces.npz")))
    t = time.perf_counter()
    crops = pipe.stylize_crops(list(parsed["refined"]))
    t_faces = time.perf_counter() - t
    background = pipe.stylize_background(rgb)
    st = storage()
    st.put_bytes(_key(ctx, "stylize", "background.png"), artifacts.png_bytes(background), "image/png")
    st.put_bytes(
        _key(ctx, "stylize", "faces.npz"),
        artifacts.npz_bytes(crops=np.stack(crops) if len(crops) else np.zeros((0,) + parsed["refined"].shape[1:], np.uint8)),
        "application/octet-stream",
    )
    return {"timings": {"stylize_faces": round(t_faces, 4)}}


def _finalize(ctx):
    from ..models.image_io import resize_to
    from ..models.paste import paste_face, unsharp

    st = storage()
    meta = artifacts.json_obj(st.get_bytes(_key(ctx, "detect", "faces.json")))
    out = artifacts.png_array(st.get_bytes(_key(ctx, "stylize", "background.png")))
    options = ctx["options"]
    face_count = 0
    if options.get("face2paint", True):
        parsed = artifacts.npz_arrays(st.get_bytes(_key(ctx, "parse", "faces.npz")))
        crops = artifacts.npz_arrays(st.get_bytes(_key(ctx, "stylize", "faces.npz")))["crops"]
        for crop, mask, inverse in zip(crops, parsed["mask"], parsed["inverse"]):
            out = paste_face(out, crop, inverse, mask.astype("float32") / 255.0)
        face_count = len(crops)
        weight = (options.get("params") or {}).get("post_sharpen_weight", 0.3)
        out = unsharp(out, weight)
    original = tuple(meta["original_size"])
    if (out.shape[1], out.shape[0]) != original:
        out = resize_to(out, original)
    key = result_key(ctx["job_id"], ctx["item_id"])
    st.put_bytes(key, artifacts.png_bytes(out), "image/png")
    with session_scope() as s:
        service.complete_item(s, ctx["item_id"], key, face_count=face_count)
        service.refresh_job(s, ctx["job_id"])


@app.task(name="face2paint.detect", bind=True)
def detect(self, item_id: str) -> None:
    run_stage(self, "detect", item_id, _detect)


@app.task(name="face2paint.parse", bind=True)
def parse(self, item_id: str) -> None:
    run_stage(self, "parse", item_id, _parse)


@app.task(name="face2paint.stylize", bind=True)
def stylize(self, item_id: str) -> None:
    run_stage(self, "stylize", item_id, _stylize)


@app.task(name="face2paint.finalize", bind=True)
def finalize(self, item_id: str) -> None:
    run_stage(self, "finalize", item_id, _finalize)
