"""The FastAPI application: a thin adapter over jobs/ that enqueues stage tasks by name.

Built once per process by create_app(): the lifespan opens what requests share (database
engine and session factory, storage, rate limiter, Celery app and Enqueuer, the sweeper) on
app.state, where deps.py hands them to the routes.

A request passes, outermost first: the metrics middleware, BodyLimit (body framing and size,
before anything is read), Authenticate (the API key, from the headers, before anything is
read), then the routes. Each route's OpenAPI lists the error answers it can give (errors.py).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.utils import get_flat_params
from fastapi.routing import APIRoute

from ..jobs.db import make_engine, session_factory
from ..jobs.notices import Publisher, publish_after_commit
from ..jobs.redis_client import redis_client_for
from ..jobs.storage import storage_from_settings
from ..settings import Settings, get_settings
from . import errors, logs, metrics, site
from .authenticate import Authenticate, takes_owner
from .body_limit import BodyLimit, max_request_bytes
from .publishing import Enqueuer
from .ratelimit import RateLimiter
from .routes import ROUTERS
from .sweeper import sweep_forever


def create_app(settings: Settings | None = None, *, sweeper: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from ..worker.app import make_celery, publish_outbox_after_commit
        from ..worker.capabilities import Catalog

        logs.install()  # the server has set up its logging by now
        state = app.state
        state.settings = settings
        state.engine = make_engine(settings.resolved_database_url)
        state.sessions = session_factory(state.engine)
        state.storage = storage_from_settings(settings)
        state.limiter = RateLimiter.from_settings(settings)
        state.celery = make_celery(settings)
        publish_outbox_after_commit(state.sessions, state.celery)  # webhook deliveries
        state.notices = Publisher.for_broker(settings.broker_url)  # cancels, for the streams
        publish_after_commit(state.sessions, state.notices)
        # The event streams' side: one asyncio client, a pubsub connection per stream.
        state.redis_async = redis_client_for(settings.broker_url, asyncio=True)
        state.enqueuer = Enqueuer.for_celery(state.celery)
        state.catalog = Catalog.from_settings(settings)  # which models the workers hold
        task = asyncio.create_task(sweep_forever(app)) if sweeper else None
        try:
            yield
        finally:
            if task:
                task.cancel()
            state.limiter.close()
            state.catalog.close()
            if state.notices is not None:
                state.notices.close()
            if state.redis_async is not None:
                await state.redis_async.aclose()
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
        document_errors(router)  # before including: FastAPI copies each route's responses then
        app.include_router(router)
    site.install(app)
    # Added innermost first. Both run before anything reads the body, and inside the metrics
    # middleware: a BaseHTTPMiddleware wraps receive() in a task group, and an error raised
    # through that would reach FastAPI as an ExceptionGroup (a 400, not a 413).
    app.add_middleware(Authenticate)
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes(settings))
    metrics.install(app)
    errors.install(app)
    return app


def document_errors(router: APIRouter) -> None:
    """Declare in each route's OpenAPI the 4xx answers the edge gives: 400 (body framing) and
    413 (body size) for a route with a body, 401 and 429 for one that takes an API key, 422 for
    one with parameters, 404 for one with an id in its path. The routes declare their other
    domain answers (409, 415...) themselves."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        params = get_flat_params(route.dependant)
        statuses = []
        if route.body_field is not None:
            statuses += [400, 413]
        if takes_owner(route):
            statuses += [401, 429]
        if route.param_convertors:
            statuses.append(404)
        if route.body_field is not None or params:
            statuses.append(422)
        errors.document(route, statuses)
