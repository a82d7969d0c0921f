"""Canceling a job: its pending items stop, its finished ones keep their results."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from .db import Item, Job, utcnow
from .lookup import get_job
from .progress import refresh_job
from .states import PENDING_ITEM_STATES, ItemState


CANCELED_BY_OWNER = "canceled by the owner"


def cancel_job(session: Session, job_id: str, owner: str, reason: str = CANCELED_BY_OWNER) -> Job:
    """Cancel every pending item of the owner's job (JobNotFound if it is not theirs), giving
    each the reason; a second cancel changes nothing. Workers find canceled items terminal and
    stop at their next stage boundary; a stage already running finishes but its output is
    removed (worker/tasks.py)."""
    get_job(session, job_id, owner)
    return cancel_pending(session, job_id, reason)


def cancel_pending(session: Session, job_id: str, reason: str) -> Job:
    now = utcnow()
    # Items first, then the job (in refresh_job): the same lock order as the workers'.
    session.execute(
        update(Item)
        .where(Item.job_id == job_id, Item.status.in_(PENDING_ITEM_STATES))
        .values(status=ItemState.CANCELED, error=reason, finished_at=now, updated_at=now)
    )
    return refresh_job(session, job_id)
