"""Canceling a job: its pending items stop, its finished ones keep their results."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from .db import Item, Job, utcnow
from .lookup import get_job
from .progress import refresh_job
from .states import PENDING_ITEM_STATES, ItemState


def cancel_job(session: Session, job_id: str, owner: str) -> Job:
    """Cancel every pending item of the owner's job (JobNotFound if it is not theirs); a second
    cancel changes nothing. Workers find canceled items terminal and stop at their next stage
    boundary; a stage already running finishes but its result is dropped."""
    get_job(session, job_id, owner)
    now = utcnow()
    # Items first, then the job (in refresh_job): the same lock order as the workers'.
    session.execute(
        update(Item)
        .where(Item.job_id == job_id, Item.status.in_(PENDING_ITEM_STATES))
        .values(status=ItemState.CANCELED, finished_at=now, updated_at=now)
    )
    return refresh_job(session, job_id)
