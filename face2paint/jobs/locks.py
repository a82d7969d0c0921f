"""Row locks, and the one order they are taken in: item → stage attempt → job.

Every operation that changes an item and its job locks the item first, then its attempt row,
then the job, so concurrent workers, a cancel and the sweeper never deadlock. On PostgreSQL
these are SELECT ... FOR UPDATE locks, held until the unit of work ends; on SQLite every
transaction takes the database write lock up front (db.make_engine), which serialises the same
operations.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import Item, Job, StageAttempt


def _lock(session: Session, model, row_id):
    # populate_existing: a row already in the session's identity map must be refreshed with
    # the values read under the lock, not kept as it was.
    return session.scalars(
        select(model)
        .where(model.id == row_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def lock_item(session: Session, item_id: str) -> Item | None:
    return _lock(session, Item, item_id)


def lock_attempt(session: Session, attempt_id: int) -> StageAttempt | None:
    return _lock(session, StageAttempt, attempt_id)


def lock_job(session: Session, job_id: str) -> Job | None:
    return _lock(session, Job, job_id)
