"""Entry point for `celery -A face2paint.worker.main worker`: the app with its tasks registered,
its liveness heartbeat, the models it can run published for the API and (when FACE2PAINT_WORKER_METRICS_PORT is set) its metrics endpoint."""

from . import capabilities, liveness, metrics
from . import tasks  # noqa: F401  (registers the stage tasks)
from . import webhooks  # noqa: F401  (registers the webhook task)
from .app import celery_app

app = celery_app()
liveness.install(app)
capabilities.install(app)
metrics.install(app)
