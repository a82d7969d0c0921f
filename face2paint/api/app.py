"""The FastAPI application: a thin adapter over jobs/ that enqueues stage tasks by name.

Built once per process by create_app(): the lifespan opens what requests share (database
engine and session factory, storage, rate limiter, Celery app and Enqueuer, the sweeper) on
app.state, where deps.py hands them to the routes.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..jobs.db import make_engine, session_factory
from ..jobs.storage import storage_from_settings
from ..settings import Settings, get_settings
from . import errors, metrics, site
from .body_limit import BodyLimit, max_request_bytes
from .publishing import Enqueuer
from .ratelimit import RateLimiter
from .routes import ROUTERS
from .sweeper import sweep_forever


def create_app(settings: Settings | None = None, *, sweeper: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from ..worker.app import make_celery

        state = app.state
        state.settings = settings
        state.engine = make_engine(settings.resolved_database_url)
        state.sessions = session_factory(state.engine)
        state.storage = storage_from_settings(settings)
        state.limiter = RateLimiter.from_settings(settings)
        state.celery = make_celery(settings)
        state.enqueuer = Enqueuer.for_celery(state.celery)
        task = asyncio.create_task(sweep_forever(app)) if sweeper else None
        try:
            yield
        finally:
            if task:
                task.cancel()
            state.limiter.close()
            state.engine.dispose()

    app = FastAPI(
        title="face2paint",
        version="1",
        description="Batch anime-style portraits that keep faces intact.",
        lifespan=lifespan,
        docs_url=None,  # site.install serves /docs and /redoc from local files
        redoc_url=None,
    )
    for router in ROUTERS:
        app.include_router(router)
    site.install(app)
    # Refuse oversized bodies before anything reads them. Added before the metrics middleware,
    # so it runs inside it: a BaseHTTPMiddleware wraps receive() in a task group, and an
    # error raised through that would reach FastAPI as an ExceptionGroup (a 400, not a 413).
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes(settings))
    metrics.install(app)
    errors.install(app)
    return app
