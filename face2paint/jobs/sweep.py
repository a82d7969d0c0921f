"""Finding the items a crash left behind, for the sweeper (api/sweeper.py) to publish again."""

from __future__ import annotations

from datetime import timedelta
from typing import NamedTuple

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from .db import Item, StageAttempt, utcnow
from .states import PENDING_ITEM_STATES, ItemState, Outcome, Stage, next_stage

_CHUNK = 500  # ids per IN (...): SQLite's bound-parameter limit


class StuckItem(NamedTuple):
    item_id: str
    stage: Stage  # the stage to enqueue the item's chain from


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

    Publishing them (enqueue.publish_then_mark) restarts their clocks.
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
                    Item.status == ItemState.QUEUED,
                    Item.enqueued_at.is_(None),
                    Item.updated_at < unpublished_before,
                ),
            ),
        )
        .order_by(Item.updated_at)
        .limit(limit)
    ).all()
    done = set()
    ids_with_stage = [item_id for item_id, stage in rows if stage]
    for start in range(0, len(ids_with_stage), _CHUNK):
        chunk = ids_with_stage[start : start + _CHUNK]
        latest = (
            select(StageAttempt.item_id, StageAttempt.stage, func.max(StageAttempt.id).label("id"))
            .where(StageAttempt.item_id.in_(chunk))
            .group_by(StageAttempt.item_id, StageAttempt.stage)
            .subquery()
        )
        done.update(
            session.execute(
                select(StageAttempt.item_id, StageAttempt.stage)
                .join(latest, StageAttempt.id == latest.c.id)
                .where(StageAttempt.outcome == Outcome.SUCCEEDED)
            ).all()
        )
    out = []
    for item_id, stage in rows:
        if stage is None:
            stage = Stage.DETECT
        elif (item_id, stage) in done and next_stage(stage) is not None:
            stage = next_stage(stage)
        out.append(StuckItem(item_id, stage))
    return out
