"""The Celery application: queues, routing and the reliability settings for long GPU tasks.

This module imports no model code, so the API can enqueue tasks by name through it without
torch installed. Each item runs as a chain detect -> parse -> stylize -> finalize, one queue
per stage, so CPU workers take detect/parse/finalize and GPU workers take stylize.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery, chain

from ..jobs.states import STAGES
from ..settings import Settings, get_settings

TASK_NAMES = {stage: f"face2paint.{stage}" for stage in STAGES}


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
        # slow stage would be run twice concurrently.
        broker_transport_options={"visibility_timeout": settings.stage_timeout_s * 3},
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_routes={name: {"queue": stage} for stage, name in TASK_NAMES.items()},
        task_default_queue="detect",
        task_time_limit=settings.stage_timeout_s,
        task_soft_time_limit=max(1, settings.stage_timeout_s - 30),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


@lru_cache(maxsize=1)
def celery_app() -> Celery:
    return make_celery()


def item_chain(item_id: str, from_stage: str = "detect", app: Celery | None = None):
    """The remaining stages of one item as a chain of immutable signatures, by task name."""
    app = app or celery_app()
    stages = STAGES[STAGES.index(from_stage):]
    return chain(
        app.signature(TASK_NAMES[s], args=(item_id,), immutable=True, queue=s) for s in stages
    )


def enqueue_items(item_ids: list[str], from_stage: str = "detect", app: Celery | None = None) -> None:
    for item_id in item_ids:
        item_chain(item_id, from_stage, app).apply_async()
