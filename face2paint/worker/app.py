"""The Celery application: queues, routing and the reliability settings for long GPU tasks.

This module imports no model code, so the API can enqueue tasks by name through it without
torch installed. Each item runs through detect -> parse -> stylize -> finalize, one queue per
stage, so CPU workers take detect/parse/finalize and GPU workers take stylize; a worker that
consumes several stage queues runs consecutive stages in one task (worker/tasks.py).
"""

from __future__ import annotations

import base64
import json
import logging
from functools import lru_cache

from celery import Celery

from ..jobs.states import STAGES
from ..settings import Settings, get_settings

TASK_NAMES = {stage: f"face2paint.{stage}" for stage in STAGES}
# Webhook deliveries (worker/webhooks.py): a queue of their own, so a slow receiver never
# holds up a stage; the CPU workers take it.
WEBHOOK_TASK, WEBHOOK_QUEUE = "face2paint.webhook", "webhooks"
UNACKED_MUTEX_EXPIRE_S = 30
log = logging.getLogger("face2paint.worker")


def broker_url(settings: Settings) -> str:
    if settings.broker_url:
        return settings.broker_url
    raise RuntimeError(
        "FACE2PAINT_BROKER_URL is not set; start the embedded stack with `face2paint up` "
        "or `face2paint run`, or point it at Redis (redis://host:6379/0)"
    )


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("face2paint", broker=settings.broker_url or "redis://localhost:6379/0")
    app.conf.update(
        # Ack after the task ran, and requeue when the worker process dies mid-task, so a
        # killed GPU worker loses nothing; the attempt counter in the database caps retries.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Redis redelivers unacked messages after this; it must exceed the longest stage or a
        # slow stage would be run twice concurrently. This is what recovers the task of a
        # worker killed outright (parent and pool): every live worker looks for such messages
        # every unacked_restore_interval seconds (kombu's default throttle would make that
        # only every 10th look, i.e. minutes late).
        broker_transport_options={
            "visibility_timeout": settings.stage_timeout_s * 3,
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            # The restore scan runs under a Redis lock that a worker killed mid-scan leaves
            # behind until it expires (kombu's default: 300 s, during which nobody restores).
            # The scan takes milliseconds, so a short expiry costs nothing.
            "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
        },
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_routes={**{name: {"queue": stage} for stage, name in TASK_NAMES.items()},
                     WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE}},
        task_default_queue="detect",
        task_time_limit=settings.stage_timeout_s,
        # The soft limit raises in the task so the stage can record a readable timeout; a
        # fixed 30 s margin would leave nothing of a short timeout (1 s of 10).
        task_soft_time_limit=max(1, settings.stage_timeout_s - max(1, min(30, settings.stage_timeout_s // 10))),
        # A stage killed at the hard time limit is requeued like a killed worker (and counted
        # by the attempt cap) instead of acknowledged and left for the sweeper.
        task_acks_on_timeout=False,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


@lru_cache(maxsize=1)
def celery_app() -> Celery:
    return make_celery()


def stage_signature(item_id: str, stage: str = "detect", app: Celery | None = None, **kwargs):
    """One stage's task for one item, by task name. There is no chain: each stage publishes
    the next itself once its attempt is committed, or runs it in the same task
    (worker/tasks.py), so a message says where an item's run starts, not all of it."""
    app = app or celery_app()
    return app.signature(TASK_NAMES[stage], args=(item_id,), kwargs=kwargs, queue=stage)


def enqueue_items(item_ids: list[str], from_stage: str = "detect", app: Celery | None = None) -> None:
    for item_id in item_ids:
        stage_signature(item_id, from_stage, app).apply_async()


def enqueue_webhooks(delivery_ids: list[str], countdown: float | None = None,
                     app: Celery | None = None) -> None:
    """Send webhook deliveries to their queue (`countdown`: seconds before they run)."""
    app = app or celery_app()
    for delivery_id in delivery_ids:
        app.send_task(WEBHOOK_TASK, args=(delivery_id,), queue=WEBHOOK_QUEUE, countdown=countdown)


def publish_outbox_after_commit(sessions, app: Celery | None = None) -> None:
    """Publish the webhook deliveries a session's transaction wrote (jobs/webhooks.py) once it
    has committed, on every session of `sessions` (a sessionmaker). Best effort: a broker that
    is down loses nothing, since the rows are committed and the sweeper sends them later."""
    from ..jobs.db import after_commit
    from ..jobs.webhooks import OUTBOX

    def _publish(ids):
        try:
            enqueue_webhooks(ids, app=app)
        except Exception:  # noqa: BLE001 - the sweeper publishes them again
            log.warning("could not publish %d webhook deliveries; the sweeper will", len(ids),
                        exc_info=True)

    after_commit(sessions, OUTBOX, _publish)


def _stage_task_item(payload: dict) -> str | None:
    headers = payload.get("headers") or {}
    if headers.get("task") not in _OUR_TASKS:
        return None
    body = payload.get("body")
    if (payload.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return args[0] if args and isinstance(args[0], str) else None


_OUR_TASKS = frozenset(TASK_NAMES.values())


def redis_broker_messages(channel, queues) -> list[dict] | None:
    """Every message of `queues` in a kombu Redis broker, waiting or delivered and not yet
    acknowledged, as kombu's message payloads; None when the channel is not kombu's Redis one.

    kombu has no public API for reading a queue's messages without consuming them, so this is
    the one place that knows its Redis layout: a list per queue and priority step (the key
    from the private `Channel._q_for_pri`), and a hash of unacknowledged messages
    (`unacked_key`, a documented transport option) whose values are JSON
    [payload, exchange, routing_key]. tests/test_broker_layout.py fails if kombu changes it.
    The lists are read in one transaction.
    """
    if not all(hasattr(channel, a) for a in ("_q_for_pri", "unacked_key", "priority_steps")):
        return None  # not the Redis transport
    with channel.conn_or_acquire() as client:
        pipe = client.pipeline(transaction=True)
        for queue in queues:
            for pri in channel.priority_steps:
                pipe.lrange(channel._q_for_pri(queue, pri), 0, -1)
        pipe.hvals(channel.unacked_key)
        *queued, unacked = pipe.execute()
    payloads = []
    entries = [(m, False) for q in queued for m in q] + [(m, True) for m in unacked]
    for raw, is_unacked in entries:
        try:
            payload = json.loads(raw)
            payloads.append(payload[0] if is_unacked else payload)
        except (ValueError, TypeError, KeyError, IndexError):
            continue  # not a kombu message
    return payloads


def items_in_broker(app: Celery | None = None) -> set[str] | None:
    """Ids of items that have a stage task in the broker: waiting in a queue, or delivered to a
    worker and not yet acknowledged. None when the broker cannot be inspected (not the Redis
    transport): the caller then cannot tell a lost task from a queued one.

    The sweeper uses this so that an item waiting behind a long backlog is not published a
    second time: only items whose task is really gone (a broker restart without persistence,
    a crash before the publish) are sent again. A message that a worker has popped but not yet
    recorded as unacked (a moment) can still be missed, which at worst publishes that item
    twice; stages are idempotent. Raises when the broker is unreachable (then nothing can be
    published either).
    """
    app = app or celery_app()
    with app.connection_for_read() as conn:
        payloads = redis_broker_messages(conn.default_channel, STAGES)
    if payloads is None:
        return None
    ids = set()
    for payload in payloads:
        try:
            item_id = _stage_task_item(payload)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            continue  # not one of ours
        if item_id:
            ids.add(item_id)
    return ids
