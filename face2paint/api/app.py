"""The FastAPI application: a thin adapter over jobs/ that enqueues stage tasks by name.

It imports no torch, onnxruntime or OpenCV: uploads are checked by their header with Pillow
only; decoding and everything heavier happen on the workers.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..jobs.db import default_database_url, make_engine, session_factory
from ..jobs.storage import storage_from_settings
from ..settings import Settings, get_settings
from . import metrics, routes
from .sweeper import sweep_forever

log = logging.getLogger("face2paint.api")


def create_app(settings: Settings | None = None, *, sweeper: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.engine = make_engine(settings.database_url or default_database_url(settings))
        app.state.sessions = session_factory(app.state.engine)
        app.state.storage = storage_from_settings(settings)
        task = asyncio.create_task(sweep_forever(app)) if sweeper else None
        try:
            yield
        finally:
            if task:
                task.cancel()
            app.state.engine.dispose()

    app = FastAPI(
        title="face2paint",
        version="1",
        description="Batch anime-style portraits that keep faces intact.",
        lifespan=lifespan,
    )
    app.include_router(routes.router)
    app.include_router(routes.health)
    metrics.install(app)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # never leak internals
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": "internal error; see the server log"})

    return app
