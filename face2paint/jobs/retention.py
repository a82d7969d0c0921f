"""Deleting a job's photos: on the owner's request (DELETE /v1/jobs/{id}) and after the
retention period (settings.retention_days, by the API's sweeper).

Every object of a job lives under its prefix (keys.job_prefix), so removing the job's data is
removing that prefix. The database side is marked first and committed, then the objects go:
a job marked deleted or expired but not yet `purged_at` is purged again by the next sweep
(storage down, a process killed between the two), so nothing is left behind for good. A stage
that was running while its job was deleted writes into a purged prefix; the worker removes what
it wrote when it finds its item canceled (worker/tasks.py).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from .cancel import cancel_pending
from .db import Job, utcnow
from .errors import JobNotFound
from .keys import item_prefix, job_prefix
from .states import STAGES, TERMINAL_JOB_STATES

DELETED_REASON = "canceled: the job was deleted by its owner"


def mark_deleted(session: Session, job_id: str, owner: str) -> Job:
    """Cancel what is still pending and mark the owner's job deleted (JobNotFound if it is not
    theirs). Deleting a deleted job again changes nothing (idempotent). Its idempotency key is
    released, so the same key may start a new job."""
    job = session.scalars(select(Job).where(Job.id == job_id, Job.owner == owner)).one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    if job.deleted_at is None:
        job = cancel_pending(session, job_id, DELETED_REASON)
        now = utcnow()
        job.deleted_at = now
        job.idempotency_key = None
        job.updated_at = now
    return job


def expire_finished(session: Session, retention_days: float, limit: int = 500) -> list[str]:
    """Mark expired the jobs that finished more than `retention_days` ago (oldest first, at
    most `limit`); their ids. Pending jobs never expire: retention counts from the end."""
    before = utcnow() - timedelta(days=retention_days)
    ids = list(session.scalars(
        select(Job.id)
        .where(Job.finished_at.is_not(None), Job.finished_at <= before,
               Job.status.in_(TERMINAL_JOB_STATES), Job.expired_at.is_(None),
               Job.deleted_at.is_(None))
        .order_by(Job.finished_at)
        .limit(limit)
    ))
    if ids:
        now = utcnow()
        session.execute(update(Job).where(Job.id.in_(ids)).values(expired_at=now, updated_at=now))
    return ids


def to_purge(session: Session, limit: int = 500) -> list[str]:
    """Jobs deleted or expired whose objects are not known to be gone yet."""
    return list(session.scalars(
        select(Job.id)
        .where(or_(Job.deleted_at.is_not(None), Job.expired_at.is_not(None)),
               Job.purged_at.is_(None))
        .limit(limit)
    ))


def mark_purged(session: Session, job_ids: list[str]) -> None:
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(purged_at=utcnow()))


# --- objects (storage calls, no database) ---------------------------------------------------


def purge_objects(storage, job_id: str) -> int:
    """Delete every object under the job's prefix; how many. Raises StorageUnavailable when
    the storage cannot be reached (the job stays unpurged and is tried again)."""
    keys = storage.list(job_prefix(job_id))
    for key in keys:
        storage.delete(key)
    return len(keys)


def drop_item_artifacts(storage, job_id: str, item_id: str, *, result: bool = False) -> int:
    """Delete an item's stage artifacts (and its result too when `result`: a canceled item's
    late finalize); its input stays while the job is kept. How many objects went."""
    prefix = item_prefix(job_id, item_id)
    n = 0
    for key in storage.list(prefix):
        head = key[len(prefix):].split("/", 1)[0]
        if head in STAGES or (result and head.startswith("result.")):
            storage.delete(key)
            n += 1
    return n
