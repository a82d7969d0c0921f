"""Entry point for `celery -A face2paint.worker.main worker`: the app with its tasks registered."""

from . import tasks  # noqa: F401  (registers the stage tasks)
from .app import celery_app

app = celery_app()
