"""Domain operations on jobs, items and API keys, shared by the API and the workers.

Conventions:
- Every function that changes something commits its own transaction before returning, so its
  effect is durable (and its row locks released) when it returns. Don't leave unrelated
  pending changes in the session you pass in.
- Every such function is safe to call twice: a repeated call finds the work done and changes
  nothing (tasks are delivered at least once; the sweeper re-enqueues).
- On PostgreSQL, rows are locked with SELECT ... FOR UPDATE, always in the order item → job, so
  concurrent workers and a cancel cannot deadlock. On SQLite every transaction takes the
  database write lock up front (see db.make_engine), which serialises the same operations.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable, NamedTuple, Sequence

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..settings import Settings, get_settings
from .db import ApiKey, FaceRow, Item, Job, StageAttempt, new_id, utcnow
from .keys import input_key
from .storage import Storage
from .states import (
    CANCELED,
    FAILED,
    JOB_FAILED,
    JOB_PARTIALLY_SUCCEEDED,
    JOB_QUEUED,
    JOB_RUNNING,
    PENDING_ITEM_STATES,
    QUEUED,
    STAGE_STATE,
    SUCCEEDED,
    TERMINAL_ITEM_STATES,
    check_item_transition,
    job_status_from_counts,
    next_stage,
    stage_index,
)

log = logging.getLogger("face2paint.jobs")

# "outage": the attempt was interrupted by a database, storage or broker outage; it is given
# back (does not count against max_attempts), since the input is not at fault.
# "duplicate": a second delivery of the same stage ran at the same time; see finish_stage().
OUTCOMES = ("succeeded", "failed", "retry", "canceled", "outage", "duplicate")
API_KEY_PREFIX = "f2p_"
_MAX_ERROR_CHARS = 4000


class JobRejected(ValueError):
    """The request cannot become a job (no files, too many files, bad idempotency key)."""


class IdempotencyConflict(ValueError):
    """The idempotency key was already used by this owner for a different request."""

    def __init__(self, key: str, job_id: str):
        super().__init__(
            f"idempotency key {key!r} was already used for a different request (job {job_id}); "
            "use a new key for a new upload, or resend exactly the same files and options"
        )
        self.key, self.job_id = key, job_id


class InvalidCursor(ValueError):
    pass


class StuckItem(NamedTuple):
    item_id: str
    stage: str  # the stage to enqueue the item's chain from


@dataclass
class NewFile:
    filename: str
    content_type: str
    data: bytes
    error: str | None = None  # set when the upload can never be processed: the item fails
    format: str | None = None  # image format sniffed from the header (PIL name), if known


# --- helpers --------------------------------------------------------------------------------


def _settings(settings: Settings | None) -> Settings:
    return settings or get_settings()


def _truncate(text: str | None) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def _lock(session: Session, model, row_id: str):
    # populate_existing: a row already in the session's identity map must be refreshed with
    # the values read under the lock, not kept as it was.
    return session.scalars(
        select(model)
        .where(model.id == row_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def _lock_item(session: Session, item_id: str) -> Item | None:
    return _lock(session, Item, item_id)


def _lock_job(session: Session, job_id: str) -> Job | None:
    return _lock(session, Job, job_id)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def sanitize_filename(raw: str | None, index: int) -> str:
    """A name for display only: no directories, no control characters, at most 255 chars."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _CONTROL.sub("", name).strip()
    if name in ("", ".", ".."):
        name = f"image-{index + 1}"
    return name[:255]


_EXT_BY_FORMAT = {
    "JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
    "TIFF": "tiff",
}
_EXT_BY_TYPE = {
    "image/jpeg": "jpg", "image/jpg": "jpg", "image/png": "png", "image/webp": "webp",
    "image/gif": "gif", "image/bmp": "bmp", "image/tiff": "tiff",
}


def _extension(f: NewFile) -> str:
    # From the sniffed format or declared type, never from the user's file name.
    if f.format and f.format.upper() in _EXT_BY_FORMAT:
        return _EXT_BY_FORMAT[f.format.upper()]
    return _EXT_BY_TYPE.get((f.content_type or "").split(";")[0].strip().lower(), "bin")


def _as_new_file(f: Any) -> NewFile:
    if isinstance(f, NewFile):
        return f
    if isinstance(f, (tuple, list)):
        if len(f) not in (3, 4):
            raise TypeError("a file is (filename, content_type, data) or with an error as 4th")
        return NewFile(*f)
    # Any object with these attributes, such as the API's Upload.
    return NewFile(
        filename=getattr(f, "filename"),
        content_type=getattr(f, "content_type", None) or "application/octet-stream",
        data=getattr(f, "data"),
        error=getattr(f, "error", None),
        format=getattr(f, "format", None),
    )


def _request_hash(options: dict, files: Sequence[NewFile]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    for f in files:
        h.update(b"\0")
        h.update(hashlib.sha256(f.data).digest())
    return h.hexdigest()


def _find_idempotent(session: Session, owner: str, key: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.owner == owner, Job.idempotency_key == key)
    ).one_or_none()


def _same_request(job: Job, key: str, request_hash: str) -> Job:
    if job.request_hash and job.request_hash != request_hash:
        raise IdempotencyConflict(key, job.id)
    return job


def _delete_quietly(storage: Storage, keys: Iterable[str]) -> None:
    for key in keys:
        try:
            storage.delete(key)
        except Exception:  # noqa: BLE001 - cleanup of orphans is best effort
            log.warning("could not delete orphaned input %s", key, exc_info=True)


# --- jobs -----------------------------------------------------------------------------------


def create_job(
    session: Session,
    storage: Storage,
    owner: str,
    files: Sequence[Any],
    options: dict | None = None,
    idempotency_key: str | None = None,
    *,
    settings: Settings | None = None,
) -> tuple[Job, bool]:
    """Store the inputs, then create the job and its items in one transaction.

    `files` are (filename, content_type, data) tuples, NewFile objects, or objects with those
    attributes (plus optional `error`, which makes the item start out failed, and `format`).
    Returns (job, created). A repeated (owner, idempotency_key) returns the existing job with
    created=False; the same key with different files or options raises IdempotencyConflict.
    The caller publishes the items' first stage, then calls mark_enqueued().
    """
    settings = _settings(settings)
    new_files = [_as_new_file(f) for f in files]
    if not new_files:
        raise JobRejected("a job needs at least one image")
    if len(new_files) > settings.max_files_per_job:
        raise JobRejected(
            f"{len(new_files)} files in one job; the limit is {settings.max_files_per_job} "
            "(FACE2PAINT_MAX_FILES_PER_JOB)"
        )
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 255):
        raise JobRejected("an idempotency key must be 1 to 255 characters")
    options = dict(options or {})
    request_hash = _request_hash(options, new_files)

    if idempotency_key is not None:
        existing = _find_idempotent(session, owner, idempotency_key)
        if existing is not None:
            return _same_request(existing, idempotency_key, request_hash), False
    # End the lookup's transaction: uploads can take a while, and on SQLite an open
    # transaction holds the database write lock.
    session.rollback()

    # Inputs first: if we die after this, there are orphaned objects but no job pointing at
    # missing inputs. Orphans of a failed request are removed below when possible.
    now = utcnow()
    job_id = new_id()
    items: list[Item] = []
    stored: list[str] = []
    try:
        for i, f in enumerate(new_files):
            item_id = new_id()
            key = input_key(job_id, item_id, _extension(f))
            storage.put_bytes(key, f.data, f.content_type)
            stored.append(key)
            failed = f.error is not None
            items.append(
                Item(
                    id=item_id,
                    index=i,
                    filename=sanitize_filename(f.filename, i),
                    content_type=(f.content_type or "application/octet-stream")[:127],
                    input_key=key,
                    status=FAILED if failed else QUEUED,
                    attempts=0,
                    error=_truncate(f.error),
                    timings={},
                    created_at=now,
                    finished_at=now if failed else None,
                    updated_at=now,
                )
            )
    except BaseException:
        _delete_quietly(storage, stored)
        raise

    n_failed = sum(1 for it in items if it.status == FAILED)
    status = job_status_from_counts(len(items), 0, n_failed, 0, started=False)
    job = Job(
        id=job_id,
        owner=owner,
        status=status,
        options=options,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        total=len(items),
        succeeded=0,
        failed=n_failed,
        canceled=0,
        created_at=now,
        finished_at=now if status not in (JOB_QUEUED, JOB_RUNNING) else None,
        updated_at=now,
        items=items,
    )
    if status in (JOB_FAILED, JOB_PARTIALLY_SUCCEEDED):
        job.error = _job_error(job)
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        # Most likely a concurrent request with the same idempotency key won the race.
        session.rollback()
        _delete_quietly(storage, stored)
        if idempotency_key is not None:
            existing = _find_idempotent(session, owner, idempotency_key)
            if existing is not None:
                return _same_request(existing, idempotency_key, request_hash), False
        raise
    except BaseException:
        session.rollback()
        _delete_quietly(storage, stored)
        raise
    return job, True


def mark_enqueued(session: Session, item_ids: Sequence[str]) -> int:
    """Record that the items' tasks were published (after the publish, never before).

    Also restarts the stall clock of re-enqueued items, so the sweeper waits a full timeout
    before sending them again. Returns the number of pending items updated.
    """
    now = utcnow()
    updated = 0
    ids = list(item_ids)
    for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
        chunk = ids[start : start + 500]
        result = session.execute(
            update(Item)
            .where(Item.id.in_(chunk), Item.status.in_(PENDING_ITEM_STATES))
            .values(enqueued_at=now, updated_at=now)
        )
        updated += result.rowcount or 0
    session.commit()
    return updated


def _job_error(job: Job) -> str | None:
    if job.failed and job.status in (JOB_FAILED, JOB_PARTIALLY_SUCCEEDED):
        return f"{job.failed} of {job.total} images failed; see the job's items for the reasons"
    return None


def _refresh_job_locked(session: Session, job_id: str) -> Job | None:
    """Recompute the job's counts and status from its items, under the job's row lock.

    The counts are read after taking the lock, so of two concurrent refreshes the later one
    sees the earlier one's item changes (READ COMMITTED takes a new snapshot per statement).
    """
    job = _lock_job(session, job_id)
    if job is None:
        return None
    rows = session.execute(
        select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
    ).all()
    counts = {status: n for status, n in rows}
    total = sum(counts.values())
    succeeded, failed, canceled = (counts.get(s, 0) for s in (SUCCEEDED, FAILED, CANCELED))
    started = job.started_at is not None or any(
        counts.get(s, 0) for s in PENDING_ITEM_STATES if s != QUEUED
    )
    status = job_status_from_counts(total, succeeded, failed, canceled, started=started)
    changed = (job.total, job.succeeded, job.failed, job.canceled, job.status) != (
        total, succeeded, failed, canceled, status,
    )
    if not changed:
        return job
    now = utcnow()
    job.total, job.succeeded, job.failed, job.canceled = total, succeeded, failed, canceled
    job.status = status
    if status != JOB_QUEUED and job.started_at is None and started:
        job.started_at = now
    if status not in (JOB_QUEUED, JOB_RUNNING) and job.finished_at is None:
        job.finished_at = now
    job.error = _job_error(job)
    job.updated_at = now
    return job


def refresh_job(session: Session, job_id: str) -> Job | None:
    """Recompute a job's counts and status from its items (and finished_at once terminal)."""
    job = _refresh_job_locked(session, job_id)
    session.commit()
    return job


def cancel_job(session: Session, job_id: str, owner: str) -> Job | None:
    """Cancel every pending item of the owner's job; finished items keep their results.

    Returns None when the owner has no such job. Workers find canceled items terminal and stop
    at their next stage boundary; a stage already running finishes but its result is dropped.
    """
    if get_job(session, job_id, owner) is None:
        session.rollback()
        return None
    now = utcnow()
    # Items first, then the job (inside _refresh_job_locked): the same lock order as workers.
    session.execute(
        update(Item)
        .where(Item.job_id == job_id, Item.status.in_(PENDING_ITEM_STATES))
        .values(status=CANCELED, finished_at=now, updated_at=now)
    )
    job = _refresh_job_locked(session, job_id)
    session.commit()
    return job


def get_job(session: Session, job_id: str, owner: str) -> Job | None:
    """The job, if it exists and belongs to `owner` (None for anyone else's job)."""
    return session.scalars(select(Job).where(Job.id == job_id, Job.owner == owner)).one_or_none()


def list_items(session: Session, job_id: str, owner: str) -> list[Item] | None:
    if get_job(session, job_id, owner) is None:
        return None
    return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.index)))


def get_item(session: Session, job_id: str, item_id: str, owner: str) -> Item | None:
    return session.scalars(
        select(Item)
        .join(Job, Job.id == Item.job_id)
        .where(Item.id == item_id, Item.job_id == job_id, Job.owner == owner)
    ).one_or_none()


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        ts = datetime.fromisoformat(created)
        if ts.tzinfo is None or not isinstance(job_id, str):
            raise ValueError
        return ts, job_id
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidCursor(
            "invalid cursor; pass the next_cursor of a previous page, or no cursor to start "
            "from the newest job"
        ) from None


def list_jobs(
    session: Session, owner: str, cursor: str | None = None, limit: int = 50
) -> tuple[list[Job], str | None]:
    """The owner's jobs, newest first, and an opaque cursor for the next page (None at the end).

    Keyset pagination on (created_at, id): pages stay correct while new jobs are created.
    """
    limit = max(1, min(int(limit), 200))
    query = select(Job).where(Job.owner == owner)
    if cursor:
        ts, job_id = _decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < ts, and_(Job.created_at == ts, Job.id < job_id))
        )
    rows = list(
        session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
    )
    if len(rows) > limit:
        return rows[:limit], _encode_cursor(rows[limit - 1])
    return rows, None


# --- stages ---------------------------------------------------------------------------------


def _give_up_reason(session: Session, item: Item, stage: str, attempts: int) -> str:
    rows = list(
        session.scalars(
            select(StageAttempt)
            .where(
                StageAttempt.item_id == item.id,
                StageAttempt.stage == stage,
                or_(StageAttempt.outcome.is_(None),
                    StageAttempt.outcome.not_in(("outage", "duplicate"))),
            )
            .order_by(StageAttempt.attempt.desc(), StageAttempt.id.desc())
            .limit(attempts)
        )
    )
    died = sum(1 for r in rows if r.finished_at is None)
    errors = [r.error for r in rows if r.error]
    base = f"gave up after {attempts} attempts at stage {stage}"
    if rows and died == len(rows):
        return f"{base} (the worker died each time)"
    detail = f"; last error: {errors[0]}" if errors else ""
    if died:
        detail += f" (the worker died in {died} of them)"
    return _truncate(base + detail)


def begin_stage(
    session: Session,
    item_id: str,
    stage: str,
    worker: str | None = None,
    *,
    settings: Settings | None = None,
) -> StageAttempt | None:
    """Start an attempt at `stage` for the item, or return None if the task should not run.

    None when: the item is unknown or terminal (done, failed, canceled); the task is a stale
    duplicate of an earlier stage or out of order; or this attempt would exceed
    settings.max_attempts at this stage, in which case the item is marked failed with the reason.
    """
    settings = _settings(settings)
    stage_index(stage)  # unknown stage names are a programming error: raise
    item = _lock_item(session, item_id)
    if item is None:
        session.rollback()
        log.warning("stage %s for unknown item %s ignored", stage, item_id)
        return None
    if item.status in TERMINAL_ITEM_STATES:
        session.rollback()
        return None
    target = STAGE_STATE[stage]
    try:
        check_item_transition(item.status, target)
    except ValueError:
        session.rollback()
        log.warning(
            "stage %s for item %s ignored: item is %s (stale or out-of-order task)",
            stage, item_id, item.status,
        )
        return None

    now = utcnow()
    attempts = item.attempts + 1 if item.stage == stage else 1
    if attempts > settings.max_attempts:
        item.status = FAILED
        item.error = _give_up_reason(session, item, stage, attempts - 1)
        item.finished_at = now
        item.updated_at = now
        _refresh_job_locked(session, item.job_id)
        session.commit()
        log.warning("item %s failed: %s", item_id, item.error)
        return None

    item.status = target
    item.stage = stage
    item.attempts = attempts
    if item.started_at is None:
        item.started_at = now
    item.updated_at = now
    attempt = StageAttempt(
        item_id=item_id, stage=stage, attempt=attempts, worker=worker, started_at=now
    )
    session.add(attempt)
    # The first stage to start moves the job from queued to running; a conditional UPDATE, so
    # only the first of many concurrent items writes (lock order item → job holds).
    session.execute(
        update(Job)
        .where(Job.id == item.job_id, Job.status == JOB_QUEUED)
        .values(status=JOB_RUNNING, started_at=now, updated_at=now)
    )
    session.commit()
    return attempt


def end_stage(
    session: Session,
    attempt: StageAttempt | int,
    outcome: str,
    error: str | None = None,
    timings: dict[str, float] | None = None,
) -> StageAttempt | None:
    """Close a stage attempt with its outcome and merge `timings` (name → seconds) into the
    item's timings. The first report wins: ending an attempt twice changes nothing.

    This records the attempt only; to end the item use fail_item() or complete_item().
    Outcome "outage" also gives the attempt back: the item's attempt counter goes down by one
    if the item is still pending at that stage.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
    attempt_id = attempt.id if isinstance(attempt, StageAttempt) else int(attempt)
    item_id = session.scalar(select(StageAttempt.item_id).where(StageAttempt.id == attempt_id))
    if item_id is None:
        session.rollback()
        return None
    item = _lock_item(session, item_id)  # item before attempt row: one lock order everywhere
    row = session.scalars(
        select(StageAttempt)
        .where(StageAttempt.id == attempt_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if row.finished_at is not None:
        session.rollback()
        return row
    now = utcnow()
    row.finished_at = now
    row.outcome = outcome
    row.error = _truncate(error)
    if item is not None:
        if timings:
            merged = dict(item.timings or {})
            merged.update({str(k): round(float(v), 4) for k, v in timings.items()})
            item.timings = merged  # a new dict: in-place changes to JSON are not tracked
        if item.status not in TERMINAL_ITEM_STATES:
            item.updated_at = now
            if outcome == "outage" and item.stage == row.stage and item.attempts > 0:
                item.attempts -= 1
    session.commit()
    return row


def finish_stage(
    session: Session,
    attempt: StageAttempt | int,
    timings: dict[str, float] | None = None,
    *,
    output_key: str | None = None,
    face_count: int | None = None,
) -> bool:
    """Close a successful attempt; True if the item's chain should go on from it. With
    `output_key` (the finalize stage) the same transaction also marks the item succeeded, so
    a succeeded item always has exactly one succeeded finalize attempt.

    Exactly one attempt at a stage goes on: the latest one. An older attempt that finishes
    after a newer one began was a duplicate delivery (a worker whose broker connection dropped
    puts its unacknowledged messages back in the queue while it still runs them; a sweep
    raced a slow publish). It is recorded with outcome "duplicate", given back like an outage
    (it says nothing bad about the input), and neither publishes the next stage nor completes
    the item; the newer attempt does, or if that one dies, its redelivery.
    """
    attempt_id = attempt.id if isinstance(attempt, StageAttempt) else int(attempt)
    item_id = session.scalar(select(StageAttempt.item_id).where(StageAttempt.id == attempt_id))
    if item_id is None:
        session.rollback()
        return False
    item = _lock_item(session, item_id)
    row = session.scalars(
        select(StageAttempt)
        .where(StageAttempt.id == attempt_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if row.finished_at is not None or item is None:
        session.rollback()
        return False
    latest = session.scalar(
        select(func.max(StageAttempt.id)).where(
            StageAttempt.item_id == item_id, StageAttempt.stage == row.stage
        )
    )
    current = item.status in PENDING_ITEM_STATES and item.stage == row.stage and latest == row.id
    now = utcnow()
    row.finished_at = now
    row.outcome = "succeeded" if current else "duplicate"
    if current and output_key is not None:
        check_item_transition(item.status, SUCCEEDED)
        item.output_key = output_key
        if face_count is not None:
            item.face_count = int(face_count)
        item.status = SUCCEEDED
        item.error = None
        item.finished_at = now
    if timings:
        merged = dict(item.timings or {})
        merged.update({str(k): round(float(v), 4) for k, v in timings.items()})
        item.timings = merged
    if current and output_key is not None:
        item.updated_at = now
        _refresh_job_locked(session, item.job_id)
    elif item.status not in TERMINAL_ITEM_STATES:
        item.updated_at = now
        if not current and item.stage == row.stage and item.attempts > 0:
            item.attempts -= 1
    session.commit()
    if not current:
        log.warning("attempt %d at %s of item %s was a duplicate; its result is not used further",
                    row.attempt, row.stage, item_id)
    return current


def fail_item(session: Session, item_id: str, reason: str) -> Item | None:
    """Mark a pending item failed with a readable reason and update the job. A terminal item
    (already done, failed or canceled) is left as it is."""
    item = _lock_item(session, item_id)
    if item is None:
        session.rollback()
        return None
    if item.status in TERMINAL_ITEM_STATES:
        session.rollback()
        return item
    check_item_transition(item.status, FAILED)
    now = utcnow()
    item.status = FAILED
    item.error = _truncate(reason) or "failed"
    item.finished_at = now
    item.updated_at = now
    _refresh_job_locked(session, item.job_id)
    session.commit()
    return item


def _face_fields(face: Any) -> tuple[list, list | None, float]:
    get = face.get if isinstance(face, dict) else lambda k: getattr(face, k)
    box = [float(v) for v in get("box")]
    landmarks = get("landmarks")
    if landmarks is not None:
        landmarks = [[float(x), float(y)] for x, y in landmarks]
    return box, landmarks, float(get("score"))


def _replace_faces(session: Session, item: Item, faces: Sequence[Any]) -> None:
    session.execute(
        delete(FaceRow)
        .where(FaceRow.item_id == item.id)
    )
    for idx, face in enumerate(faces):
        box, landmarks, score = _face_fields(face)
        session.add(FaceRow(item_id=item.id, idx=idx, box=box, landmarks=landmarks, score=score))
    item.face_count = len(faces)


def record_faces(
    session: Session,
    item_id: str,
    faces: Sequence[Any],
    *,
    width: int | None = None,
    height: int | None = None,
) -> Item | None:
    """Replace the item's detected faces (dicts or objects with box, landmarks, score) and
    record the image size. Running detection twice leaves one set of faces."""
    item = _lock_item(session, item_id)
    if item is None or item.status in TERMINAL_ITEM_STATES:
        session.rollback()
        return item
    _replace_faces(session, item, faces)
    if width is not None:
        item.width = int(width)
    if height is not None:
        item.height = int(height)
    item.updated_at = utcnow()
    session.commit()
    return item


def complete_item(
    session: Session,
    item_id: str,
    output_key: str,
    face_count: int | None = None,
    faces: Sequence[Any] | None = None,
) -> Item | None:
    """Mark the item succeeded with its result, from the finalizing state.

    A terminal item is left as it is: completing twice is a no-op, and a cancel that came first
    wins. Completing from any other state raises InvalidTransition (a skipped stage is a bug).
    """
    item = _lock_item(session, item_id)
    if item is None:
        session.rollback()
        return None
    if item.status in TERMINAL_ITEM_STATES:
        session.rollback()
        return item
    check_item_transition(item.status, SUCCEEDED)
    now = utcnow()
    if faces is not None:
        _replace_faces(session, item, faces)
    if face_count is not None:
        item.face_count = int(face_count)
    item.output_key = output_key
    item.status = SUCCEEDED
    item.error = None
    item.finished_at = now
    item.updated_at = now
    _refresh_job_locked(session, item.job_id)
    session.commit()
    return item


def stuck_items(
    session: Session,
    older_than_s: float,
    *,
    unpublished_after_s: float = 30.0,
    limit: int = 500,
) -> list[StuckItem]:
    """Items the sweeper should publish again, oldest first, as (item_id, stage) pairs:

    - queued items never published (enqueued_at IS NULL) for `unpublished_after_s`: the
      process died between the commit and the publish;
    - pending items (queued or in a stage) not updated for `older_than_s` (use the stage
      timeout): the task was lost (broker restart) or the worker died mid-stage.

    The stage is the item's current one, or the next one when the current stage's latest
    attempt succeeded (its worker finished but the next stage's task was never published, or
    was lost): no need to run a finished stage again and count it as another attempt.

    After publishing, call mark_enqueued(), which restarts their clocks.
    """
    now = utcnow()
    stalled_before = now - timedelta(seconds=older_than_s)
    unpublished_before = now - timedelta(seconds=unpublished_after_s)
    rows = session.execute(
        select(Item.id, Item.stage)
        .where(
            Item.status.in_(PENDING_ITEM_STATES),
            or_(
                Item.updated_at < stalled_before,
                and_(
                    Item.status == QUEUED,
                    Item.enqueued_at.is_(None),
                    Item.updated_at < unpublished_before,
                ),
            ),
        )
        .order_by(Item.updated_at)
        .limit(limit)
    ).all()
    done = set()
    ids_with_stage = [(item_id, stage) for item_id, stage in rows if stage]
    for start in range(0, len(ids_with_stage), 500):
        chunk = ids_with_stage[start : start + 500]
        latest = (
            select(StageAttempt.item_id, StageAttempt.stage, func.max(StageAttempt.id).label("id"))
            .where(StageAttempt.item_id.in_([i for i, _ in chunk]))
            .group_by(StageAttempt.item_id, StageAttempt.stage)
            .subquery()
        )
        done.update(
            session.execute(
                select(StageAttempt.item_id, StageAttempt.stage)
                .join(latest, StageAttempt.id == latest.c.id)
                .where(StageAttempt.outcome == "succeeded")
            ).all()
        )
    session.rollback()  # read only; release SQLite's write lock promptly
    out = []
    for item_id, stage in rows:
        if stage is None:
            stage = "detect"
        elif (item_id, stage) in done and next_stage(stage) is not None:
            stage = next_stage(stage)
        out.append(StuckItem(item_id, stage))
    return out


# --- API keys -------------------------------------------------------------------------------


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, owner: str) -> str:
    """Create a key for `owner` and return its plaintext, which is not stored anywhere:
    only its sha256 is. Show it to the user once."""
    if not owner or len(owner) > 255:
        raise ValueError("an API key owner must be 1 to 255 characters")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner=owner, key_hash=hash_api_key(key), created_at=utcnow()))
    session.commit()
    return key


def owner_for_key(session: Session, key: str | None) -> str | None:
    """The owner of an active key, or None for an unknown or revoked key."""
    if not key or len(key) > 512:
        return None
    return session.scalar(
        select(ApiKey.owner).where(
            ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None)
        )
    )


def revoke_api_key(session: Session, key: str) -> bool:
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    session.commit()
    return bool(result.rowcount)
