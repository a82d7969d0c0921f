"""A job's counts and status, recomputed from its items (never set by hand)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import notices, webhooks
from .db import Item, Job, utcnow
from .locks import lock_job
from .states import (
    PENDING_ITEM_STATES,
    TERMINAL_JOB_STATES,
    ItemState,
    JobState,
    job_status_from_counts,
)


def job_error(job: Job) -> str | None:
    if job.failed and job.status in (JobState.FAILED, JobState.PARTIALLY_SUCCEEDED):
        return f"{job.failed} of {job.total} images failed; see the job's items for the reasons"
    return None


def refresh_job(session: Session, job_id: str) -> Job | None:
    """Recompute a job's counts and status from its items (and finished_at once terminal),
    under the job's row lock; the caller holds the locks of the items it changed (item → job).

    The counts are read after taking the lock, so of two concurrent refreshes the later one
    sees the earlier one's item changes (READ COMMITTED takes a new snapshot per statement).
    """
    job = lock_job(session, job_id)
    if job is None:
        return None
    notices.mark_changed(session, job_id)
    rows = session.execute(
        select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
    ).all()
    counts = {status: n for status, n in rows}
    total = sum(counts.values())
    succeeded, failed, canceled = (
        counts.get(s, 0) for s in (ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELED)
    )
    started = job.started_at is not None or any(
        counts.get(s, 0) for s in PENDING_ITEM_STATES if s != ItemState.QUEUED
    )
    status = job_status_from_counts(total, succeeded, failed, canceled, started=started)
    if (job.total, job.succeeded, job.failed, job.canceled, job.status) == (
        total, succeeded, failed, canceled, status,
    ):
        return job
    now = utcnow()
    job.total, job.succeeded, job.failed, job.canceled = total, succeeded, failed, canceled
    job.status = status
    if status != JobState.QUEUED and job.started_at is None and started:
        job.started_at = now
    finished = status in TERMINAL_JOB_STATES and job.finished_at is None
    if finished:
        job.finished_at = now
    job.error = job_error(job)
    job.updated_at = now
    if finished:
        webhooks.job_finished(session, job)  # the outbox row, in this transaction
    return job
