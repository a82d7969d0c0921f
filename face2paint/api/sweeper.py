"""Re-enqueues items that a crash left behind: committed but never published, or stuck in a
stage longer than the stage timeout allows (their task lost with a broker restart, or its
worker gone). Stages are idempotent, so a duplicate is harmless, but the sweeper avoids them:
an item whose task is still in the broker (queued behind a backlog, or held by a worker) is left
alone, and a stalled item is sent from the next stage when its current one had finished.

Timing (settings; tests shorten both):
    FACE2PAINT_SWEEP_INTERVAL_S             seconds between sweeps (default 10)
    FACE2PAINT_SWEEP_UNPUBLISHED_AFTER_S    a committed item never published is sent after
                                            this many seconds (default 30)
A published item counts as stalled after FACE2PAINT_STAGE_TIMEOUT_S without progress.

It also publishes again the webhook deliveries due for FACE2PAINT_WEBHOOK_LOST_AFTER_S that no
worker took (their message lost, or never sent after a crash): sweep_webhooks_once.

Each sweep also applies the retention period (retention_once): jobs finished more than
FACE2PAINT_RETENTION_DAYS ago are marked expired, and the objects of expired and deleted jobs
are removed from storage (jobs/retention.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging

from ..jobs.db import unit_of_work
from ..jobs.enqueue import mark_enqueued, publish_then_mark
from ..jobs.retention import expire_finished, mark_purged, purge_objects, to_purge
from ..jobs.storage import StorageError
from ..jobs.sweep import stuck_items
from ..jobs.webhooks import lost_deliveries

log = logging.getLogger("face2paint.sweeper")


def sweep_once(sessions, settings, app=None) -> int:
    """One sweep, on one session; returns how many items were sent again. `app`: the Celery
    app (default: the one from the environment). Never passes the `submit` fault point."""
    from ..worker.app import enqueue_items, items_in_broker

    publish = functools.partial(enqueue_items, app=app)
    with sessions() as s:
        with unit_of_work(s):
            stuck = stuck_items(
                s, older_than_s=settings.stage_timeout_s,
                unpublished_after_s=settings.sweep_unpublished_after_s,
            )
        if not stuck:
            return 0
        present = items_in_broker(app)
        if present is not None:
            waiting = [i.item_id for i in stuck if i.item_id in present]
            stuck = [i for i in stuck if i.item_id not in present]
            if waiting:
                # Their tasks are in the broker: restart their clocks instead of sending them
                # again (and look at the broker again only after another stage timeout).
                with unit_of_work(s):
                    mark_enqueued(s, waiting)
        by_stage: dict[str, list[str]] = {}
        for item_id, stage in stuck:
            by_stage.setdefault(stage, []).append(item_id)
        for stage, ids in by_stage.items():
            publish_then_mark(s, publish, ids, stage)
    if stuck:
        shown = ", ".join(f"{i.item_id}@{i.stage}" for i in stuck[:20])
        more = f" and {len(stuck) - 20} more" if len(stuck) > 20 else ""
        log.warning("re-enqueued %d stuck items: %s%s", len(stuck), shown, more)
    return len(stuck)


def sweep_webhooks_once(sessions, settings) -> int:
    """Publish again the webhook deliveries whose message was lost; how many. The sessions
    publish what the unit of work put in their outbox once it commits
    (worker.app.publish_outbox_after_commit)."""
    with sessions() as s, unit_of_work(s):
        ids = lost_deliveries(s, settings.webhook_lost_after_s)
    if ids:
        log.warning("published %d webhook deliveries again (their message was lost)", len(ids))
    return len(ids)


def retention_once(sessions, storage, settings) -> int:
    """Expire the jobs past the retention period, then remove the objects of every expired or
    deleted job not purged yet; how many jobs were purged. A job whose objects could not all
    be removed (storage down) stays unpurged for the next sweep."""
    with sessions() as s:
        with unit_of_work(s):
            expired = expire_finished(s, settings.retention_days)
        with unit_of_work(s):
            pending = to_purge(s)
        purged = []
        for job_id in pending:
            try:
                purge_objects(storage, job_id)
            except StorageError as e:
                log.warning("could not remove the objects of job %s yet: %s", job_id, e)
                continue
            purged.append(job_id)
        with unit_of_work(s):
            mark_purged(s, purged)
    if expired:
        log.info("expired %d jobs older than %g days", len(expired), settings.retention_days)
    return len(purged)


async def sweep_forever(app) -> None:
    state = app.state
    while True:
        await asyncio.sleep(state.settings.sweep_interval_s)
        try:
            await asyncio.to_thread(sweep_once, state.sessions, state.settings, state.celery)
        except Exception:  # keep sweeping through outages
            log.exception("sweep failed")
        try:
            await asyncio.to_thread(sweep_webhooks_once, state.sessions, state.settings)
        except Exception:
            log.exception("webhook sweep failed")
        try:
            await asyncio.to_thread(retention_once, state.sessions, state.storage, state.settings)
        except Exception:  # keep sweeping through outages
            log.exception("retention sweep failed")
