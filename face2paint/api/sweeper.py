"""Re-enqueues items that a crash left behind: committed but never published, or stuck in a
stage longer than the stage timeout allows. Stages are idempotent, so a duplicate is harmless."""

from __future__ import annotations

import asyncio
import logging

from ..jobs import service

log = logging.getLogger("face2paint.sweeper")
INTERVAL_S = 10.0


def sweep_once(sessions, settings) -> int:
    from ..worker.app import enqueue_items

    with sessions() as s:
        stuck = service.stuck_items(s, older_than_s=settings.stage_timeout_s)
    by_stage: dict[str, list[str]] = {}
    for item_id, stage in stuck:
        by_stage.setdefault(stage, []).append(item_id)
    for stage, ids in by_stage.items():
        enqueue_items(ids, from_stage=stage)
        with sessions() as s:
            service.mark_enqueued(s, ids)
            s.commit()
    if stuck:
        log.warning("re-enqueued %d stuck items", len(stuck))
    return len(stuck)


async def sweep_forever(app) -> None:
    while True:
        await asyncio.sleep(INTERVAL_S)
        try:
            await asyncio.to_thread(sweep_once, app.state.sessions, app.state.settings)
        except Exception:  # keep sweeping through outages
            log.exception("sweep failed")
