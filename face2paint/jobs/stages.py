"""Stage bookkeeping for the workers: an attempt begins, ends, or finishes and moves the item on;
an item fails. Every function is safe to call twice (tasks are delivered at least once)."""

from __future__ import annotations

import logging

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from ..settings import Settings, get_settings
from .db import Item, Job, StageAttempt, utcnow
from . import notices, webhooks
from .errors import clip
from .locks import lock_attempt, lock_item
from .progress import refresh_job
from .states import (
    PENDING_ITEM_STATES,
    STAGE_STATE,
    TERMINAL_ITEM_STATES,
    ItemState,
    JobState,
    Outcome,
    as_stage,
    check_item_transition,
)

log = logging.getLogger("face2paint.jobs")
_GIVEN_BACK = (Outcome.OUTAGE, Outcome.DUPLICATE)


def _give_up_reason(session: Session, item: Item, stage: str, attempts: int) -> str:
    rows = list(
        session.scalars(
            select(StageAttempt)
            .where(
                StageAttempt.item_id == item.id,
                StageAttempt.stage == stage,
                or_(StageAttempt.outcome.is_(None), StageAttempt.outcome.not_in(_GIVEN_BACK)),
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
    return clip(base + detail)


def _merge_timings(item: Item, timings: dict[str, float] | None) -> None:
    if timings:
        merged = dict(item.timings or {})
        merged.update({str(k): round(float(v), 4) for k, v in timings.items()})
        item.timings = merged  # a new dict: in-place changes to JSON are not tracked


def begin_stage(
    session: Session,
    item_id: str,
    stage: str,
    worker: str | None = None,
    *,
    settings: Settings | None = None,
    task_id: str | None = None,
) -> StageAttempt | None:
    """Start an attempt at `stage` for the item, or return None if the task should not run.
    `task_id`: the broker message that carries the attempt.

    None when: the item is unknown or terminal (done, failed, canceled); the task is a stale
    duplicate of an earlier stage or out of order; or this attempt would exceed
    settings.max_attempts at this stage, in which case the item is marked failed with the reason.
    """
    settings = settings or get_settings()
    stage = as_stage(stage)  # unknown stage names are a programming error: raise
    item = lock_item(session, item_id)
    if item is None:
        log.warning("stage %s for unknown item %s ignored", stage, item_id)
        return None
    if item.status in TERMINAL_ITEM_STATES:
        return None
    target = STAGE_STATE[stage]
    try:
        check_item_transition(item.status, target)
    except ValueError:
        log.warning(
            "stage %s for item %s ignored: item is %s (stale or out-of-order task)",
            stage, item_id, item.status,
        )
        return None

    now = utcnow()
    attempts = item.attempts + 1 if item.stage == stage else 1
    if attempts > settings.max_attempts:
        item.status = ItemState.FAILED
        item.error = _give_up_reason(session, item, stage, attempts - 1)
        item.finished_at = now
        item.updated_at = now
        # The job read under its lock serves the event too (no read of its own).
        webhooks.item_ended(session, item, refresh_job(session, item.job_id))
        log.warning("item %s failed: %s", item_id, item.error)
        return None

    item.status = target
    item.stage = stage
    item.attempts = attempts
    if item.started_at is None:
        item.started_at = now
    item.updated_at = now
    attempt = StageAttempt(
        item_id=item_id, stage=stage, attempt=attempts, worker=worker, started_at=now,
        task_id=task_id,
    )
    session.add(attempt)
    notices.mark_changed(session, item.job_id)  # the item's new stage, for the event streams
    # The first stage to start moves the job from queued to running; a conditional UPDATE, so
    # only the first of many concurrent items writes (lock order item → job holds).
    session.execute(
        update(Job)
        .where(Job.id == item.job_id, Job.status == JobState.QUEUED)
        .values(status=JobState.RUNNING, started_at=now, updated_at=now)
    )
    session.flush()  # the attempt's id, for the caller to end it by
    return attempt


def _locked_attempt(session: Session, attempt) -> tuple[Item | None, StageAttempt] | None:
    attempt_id = attempt.id if isinstance(attempt, StageAttempt) else int(attempt)
    item_id = session.scalar(select(StageAttempt.item_id).where(StageAttempt.id == attempt_id))
    if item_id is None:
        return None
    item = lock_item(session, item_id)  # item before attempt row: one lock order everywhere
    return item, lock_attempt(session, attempt_id)


def end_stage(
    session: Session,
    attempt: StageAttempt | int,
    outcome: str,
    error: str | None = None,
    timings: dict[str, float] | None = None,
) -> StageAttempt | None:
    """Close a stage attempt with its outcome and merge `timings` (name → seconds) into the
    item's timings. The first report wins: ending an attempt twice changes nothing.

    This records the attempt only; a successful one is closed by finish_stage(), and an item is
    ended by fail_item() or finish_stage(output_key=...). Outcome "outage" also gives the
    attempt back: the item's attempt counter goes down by one if the item is still pending at
    that stage.
    """
    try:
        outcome = Outcome(outcome)
    except ValueError:
        raise ValueError(
            f"unknown outcome {outcome!r}; expected one of {', '.join(Outcome)}"
        ) from None
    locked = _locked_attempt(session, attempt)
    if locked is None:
        return None
    item, row = locked
    if row.finished_at is not None:
        return row
    now = utcnow()
    row.finished_at = now
    row.outcome = outcome
    row.error = clip(error)
    if item is not None:
        _merge_timings(item, timings)
        if item.status not in TERMINAL_ITEM_STATES:
            item.updated_at = now
            if outcome == Outcome.OUTAGE and item.stage == row.stage and item.attempts > 0:
                item.attempts -= 1
    return row


def finish_stage(
    session: Session,
    attempt: StageAttempt | int,
    timings: dict[str, float] | None = None,
    *,
    output_key: str | None = None,
    face_count: int | None = None,
    models: dict[str, str] | None = None,
) -> bool:
    """Close a successful attempt; True if the item's chain should go on from it. With
    `output_key` (the finalize stage) the same transaction also marks the item succeeded, so
    a succeeded item always has exactly one succeeded finalize attempt. `models` (role ->
    model id) is what the stage ran, recorded on the item.

    Exactly one attempt at a stage goes on: the latest one. An older attempt that finishes
    after a newer one began was a duplicate delivery (a worker whose broker connection dropped
    puts its unacknowledged messages back in the queue while it still runs them; a sweep
    raced a slow publish). It is recorded with outcome "duplicate", given back like an outage
    (it says nothing bad about the input), and neither publishes the next stage nor completes
    the item; the newer attempt does, or if that one dies, its redelivery.

    The caller commits before it publishes the next stage, so what it publishes is durable.
    """
    locked = _locked_attempt(session, attempt)
    if locked is None:
        return False
    item, row = locked
    if row.finished_at is not None or item is None:
        return False
    latest = session.scalar(
        select(func.max(StageAttempt.id)).where(
            StageAttempt.item_id == item.id, StageAttempt.stage == row.stage
        )
    )
    current = item.status in PENDING_ITEM_STATES and item.stage == row.stage and latest == row.id
    now = utcnow()
    row.finished_at = now
    row.outcome = Outcome.SUCCEEDED if current else Outcome.DUPLICATE
    _merge_timings(item, timings)
    if current and models:
        item.models = {**(item.models or {}), **models}  # a new dict: JSON changes in place go unseen
    if current and output_key is not None:
        check_item_transition(item.status, ItemState.SUCCEEDED)
        item.output_key = output_key
        if face_count is not None:
            item.face_count = int(face_count)
        item.status = ItemState.SUCCEEDED
        item.error = None
        item.finished_at = now
        item.updated_at = now
        webhooks.item_ended(session, item, refresh_job(session, item.job_id))
    elif item.status not in TERMINAL_ITEM_STATES:
        item.updated_at = now
        if not current and item.stage == row.stage and item.attempts > 0:
            item.attempts -= 1
    if not current:
        log.warning("attempt %d at %s of item %s was a duplicate; its result is not used further",
                    row.attempt, row.stage, item.id)
    return current


def fail_item(session: Session, item_id: str, reason: str) -> Item | None:
    """Mark a pending item failed with a readable reason and update the job. A terminal item
    (already done, failed or canceled) is left as it is."""
    item = lock_item(session, item_id)
    if item is None or item.status in TERMINAL_ITEM_STATES:
        return item
    check_item_transition(item.status, ItemState.FAILED)
    now = utcnow()
    item.status = ItemState.FAILED
    item.error = clip(reason) or "failed"
    item.finished_at = now
    item.updated_at = now
    webhooks.item_ended(session, item, refresh_job(session, item.job_id))
    return item
