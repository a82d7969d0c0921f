"""Creating a job from its uploads: inputs stored first, then the job and its items."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..settings import Settings, get_settings
from . import idempotency, webhooks
from .db import Item, Job, new_id, unit_of_work, utcnow
from .errors import JobRejected, clip
from .inputs import NewFile, delete_quietly, sanitize_filename, store_inputs
from .progress import job_error
from .states import TERMINAL_JOB_STATES, ItemState, job_status_from_counts
from .storage import Storage


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

    A workflow: it opens its own units of work, around the uploads rather than across them (on
    SQLite an open transaction holds the database write lock), so the session must have none
    open. `files` are NewFile objects or what NewFile.coerce takes; a file with an `error`
    becomes an item that starts out failed. Returns (job, created). A repeated
    (owner, idempotency_key) returns the existing job with created=False; the same key with
    different files or options raises IdempotencyConflict. The caller then publishes the new
    job's items (enqueue.publish_then_mark).
    """
    settings = settings or get_settings()
    new_files = [NewFile.coerce(f) for f in files]
    if not new_files:
        raise JobRejected("a job needs at least one image")
    if len(new_files) > settings.max_files_per_job:
        raise JobRejected(
            f"{len(new_files)} files in one job; the limit is {settings.max_files_per_job} "
            "(FACE2PAINT_MAX_FILES_PER_JOB)"
        )
    idempotency.check_key(idempotency_key)
    options = dict(options or {})
    hashed = idempotency.request_hash(options, new_files)

    with unit_of_work(session):
        existing = idempotency.earlier_job(session, owner, idempotency_key, hashed)
    if existing is not None:
        return existing, False

    # Inputs first: if we die after this, there are orphaned objects but no job pointing at
    # missing inputs. Orphans of a failed request are removed below when possible.
    job_id = new_id()
    item_ids = [new_id() for _ in new_files]
    stored = store_inputs(storage, job_id, list(zip(item_ids, new_files)))
    job = _new_job(job_id, owner, options, idempotency_key, hashed, item_ids, new_files, stored)
    try:
        with unit_of_work(session):
            session.add(job)
            _rejected_events(session, job)
    except IntegrityError:
        # Most likely a concurrent request with the same idempotency key won the race.
        delete_quietly(storage, stored)
        with unit_of_work(session):
            existing = idempotency.earlier_job(session, owner, idempotency_key, hashed)
        if existing is not None:
            return existing, False
        raise
    except BaseException:
        delete_quietly(storage, stored)
        raise
    return job, True


def _rejected_events(session: Session, job: Job) -> None:
    """The webhook events of uploads refused at once, and of a job that ends with them."""
    for item in job.items:
        if item.status == ItemState.FAILED:
            webhooks.item_ended(session, item, job)
    if job.status in TERMINAL_JOB_STATES:
        webhooks.job_finished(session, job)


def _new_job(job_id, owner, options, key, hashed, item_ids, files, input_keys) -> Job:
    now = utcnow()
    items = []
    for i, (item_id, f, input_key) in enumerate(zip(item_ids, files, input_keys)):
        failed = f.error is not None
        items.append(Item(
            id=item_id,
            index=i,
            filename=sanitize_filename(f.filename, i),
            content_type=(f.content_type or "application/octet-stream")[:127],
            input_key=input_key,
            status=ItemState.FAILED if failed else ItemState.QUEUED,
            attempts=0,
            error=clip(f.error),
            timings={},
            created_at=now,
            finished_at=now if failed else None,
            updated_at=now,
        ))
    n_failed = sum(1 for it in items if it.status == ItemState.FAILED)
    status = job_status_from_counts(len(items), 0, n_failed, 0, started=False)
    job = Job(
        id=job_id, owner=owner, status=status, options=options, idempotency_key=key,
        request_hash=hashed, total=len(items), succeeded=0, failed=n_failed, canceled=0,
        created_at=now, finished_at=now if status in TERMINAL_JOB_STATES else None,
        updated_at=now, items=items,
    )
    job.error = job_error(job)
    return job
