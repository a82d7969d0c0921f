"""Publish, then mark enqueued: the one way items reach the broker, for a new job (the submit
route) and for items a crash left behind (the sweeper).

The publisher is a parameter, so jobs/ never imports the worker: the API passes
worker.app.enqueue_items. Publishing comes after the items are committed and before they are
marked; a crash in between leaves items with `enqueued_at` unset, which the sweeper finds and
publishes (a duplicate publish is harmless: stages are idempotent, see stages.finish_stage).
"""

from __future__ import annotations

from typing import Protocol, Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session

from .db import Item, unit_of_work, utcnow
from .states import PENDING_ITEM_STATES, Stage

_CHUNK = 500  # ids per IN (...): SQLite's bound-parameter limit


class Publish(Protocol):
    def __call__(self, item_ids: list[str], from_stage: str) -> None:
        """Send each item's chain of stages, starting at `from_stage`, to the broker."""


def mark_enqueued(session: Session, item_ids: Sequence[str]) -> int:
    """Record that the items' tasks were published (after the publish, never before).

    Also restarts the stall clock of re-enqueued items, so the sweeper waits a full timeout
    before sending them again. Returns the number of pending items updated.
    """
    now = utcnow()
    updated = 0
    ids = list(item_ids)
    for start in range(0, len(ids), _CHUNK):
        result = session.execute(
            update(Item)
            .where(Item.id.in_(ids[start : start + _CHUNK]), Item.status.in_(PENDING_ITEM_STATES))
            .values(enqueued_at=now, updated_at=now)
        )
        updated += result.rowcount or 0
    return updated


def publish_then_mark(
    session: Session, publish: Publish, item_ids: Sequence[str], from_stage: str = Stage.DETECT
) -> int:
    """Publish the items' chains from `from_stage`, then mark them enqueued in a unit of work
    of its own. The items must be committed already: the session may have no transaction open
    (a worker could otherwise take a task for a row it cannot see yet). A failed publish raises
    and marks nothing. Returns the number of items marked."""
    ids = list(item_ids)
    if not ids:
        return 0
    if session.in_transaction():
        raise RuntimeError(
            "publish_then_mark with a transaction open: commit the items first "
            "(end its unit of work), then publish them"
        )
    publish(ids, from_stage)
    with unit_of_work(session):
        return mark_enqueued(session, ids)
