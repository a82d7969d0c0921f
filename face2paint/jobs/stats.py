"""Per-stage load from the database: items waiting for each stage and items running in it.

This is the demand an autoscaler needs. The broker cannot tell it: a Redis queue's length counts
only messages nobody has taken, so a queue reads 0 while its workers are busy (scaling in on it
kills busy workers), and Celery's priority levels live in extra lists. Here an item counts
for one stage until it leaves it:

- queued at `detect`: not started yet;
- running at S: its latest attempt at S is open (also while the worker that ran it is dead and
  the broker has yet to redeliver it: the work is still owed);
- queued at the next stage: its latest attempt at S succeeded (the hand-off in flight, or the
  next stage's task waiting in the broker);
- queued at S: its latest attempt at S ended otherwise (a retry waiting for its countdown).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from .db import Item, StageAttempt, utcnow
from .states import PENDING_ITEM_STATES, STAGES, ItemState, Outcome, next_stage


@dataclass
class StageLoad:
    queued: int = 0
    running: int = 0
    oldest_queued_s: float = 0.0  # how long the longest-waiting queued item has waited


def stage_loads(session: Session, now: datetime | None = None) -> dict[str, StageLoad]:
    """Queued and running items per stage (every stage present, zeros included)."""
    now = now or utcnow()
    latest = (
        select(func.max(StageAttempt.id))
        .where(StageAttempt.item_id == Item.id, StageAttempt.stage == Item.stage)
        .correlate(Item)
        .scalar_subquery()
    )
    kind = case(
        (StageAttempt.id.is_(None), "none"),
        (StageAttempt.finished_at.is_(None), "open"),
        else_=StageAttempt.outcome,
    ).label("kind")
    # Waiting since: the end of the attempt before (a stage done, or a retry scheduled), else
    # the upload.
    since = func.min(func.coalesce(StageAttempt.finished_at, Item.created_at)).label("since")
    rows = session.execute(
        select(Item.status, Item.stage, kind, func.count().label("n"), since)
        .select_from(Item)
        .outerjoin(StageAttempt, StageAttempt.id == latest)
        .where(Item.status.in_(PENDING_ITEM_STATES))
        .group_by(Item.status, Item.stage, kind)
    ).all()
    loads = {stage: StageLoad() for stage in STAGES}
    for status, stage, kind_, n, since_ in rows:
        if status == ItemState.QUEUED or stage is None:
            stage, running = STAGES[0], False
        elif kind_ == "open":
            running = True
        elif kind_ == Outcome.SUCCEEDED:
            stage, running = next_stage(stage), False
            if stage is None:  # a finished last stage makes the item terminal; never pending
                continue
        else:
            running = False
        load = loads[stage]
        if running:
            load.running += n
            continue
        load.queued += n
        if since_ is not None:
            if since_.tzinfo is None:  # SQLite aggregates come back as naive UTC
                since_ = since_.replace(tzinfo=now.tzinfo)
            load.oldest_queued_s = max(load.oldest_queued_s, (now - since_).total_seconds())
    return loads
