"""The domain's errors as HTTP answers, in one place instead of a try/except in each route,
and a plain 500 for anything unexpected (details go to the log, never to the client)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..jobs.errors import IdempotencyConflict, InvalidCursor, JobRejected, NoResultYet, NotFound

log = logging.getLogger("face2paint.api")

STATUS = {
    JobRejected: 400,
    InvalidCursor: 400,
    NotFound: 404,
    IdempotencyConflict: 409,
    NoResultYet: 409,
}


def install(app: FastAPI) -> None:
    for error, status in STATUS.items():
        app.add_exception_handler(error, _answer(status))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": "internal error; see the server log"})


def _answer(status: int):
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    return handler
