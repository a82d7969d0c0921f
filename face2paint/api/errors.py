"""Every error answer in one place: the domain's errors as HTTP statuses instead of a
try/except in each route, request validation (422) without echoing the input, the 4xx answers
declared in each route's OpenAPI, and a plain 500 for anything unexpected.

A message to a client is ours, never an internal exception's text, and any client text in it
(ids, keys, names) is escaped (logs.escape): no control characters or lone surrogates go back
out. Failures of the server's own parts are 503 (database, storage unreachable) or 507 (storage
full), each with a fixed one-line reason; details go to the log.
"""

from __future__ import annotations

import errno
import logging
from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, OperationalError, TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..jobs.errors import (IdempotencyConflict, InvalidCursor, JobExpired, JobRejected, NoResultYet,
                           NotFound, ResultGone)
from ..jobs.storage import StorageUnavailable
from .logs import escape

log = logging.getLogger("face2paint.api")

STATUS = {
    JobRejected: 400,
    InvalidCursor: 400,
    NotFound: 404,
    IdempotencyConflict: 409,
    NoResultYet: 409,
    ResultGone: 410,
    JobExpired: 410,
}
DATABASE_DOWN = "the database is unavailable; retry later (the server log has the details)"
STORAGE_DOWN = "the object storage is unavailable; retry later (the server log has the details)"
STORAGE_FULL = ("the storage is full: nothing was stored; retry later, or ask the operator to "
                "free space in FACE2PAINT_STORAGE_URL")
INTERNAL = "internal error; see the server log"


class FieldError(BaseModel):
    loc: list[Union[str, int]]
    msg: str
    type: str


class ErrorOut(BaseModel):
    """What every error answer holds: one line, or for a request that failed validation, the
    fields at fault (without their values)."""

    detail: Union[str, list[FieldError]]


def message(text: Any) -> str:
    """A client-facing message, escaped."""
    return escape(str(text))


def _json(status: int, detail, headers=None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


def install(app: FastAPI) -> None:
    for error, status in STATUS.items():
        app.add_exception_handler(error, _answer(status))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, (list, dict)) else message(exc.detail)
        return _json(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's own answer echoes the input (a NUL byte, a megabyte of it); ours names the
        # fields and what is wrong with them.
        fields = [{"loc": [message(p) if isinstance(p, str) else p for p in e.get("loc", ())],
                   "msg": message(e.get("msg", "invalid")), "type": message(e.get("type", "invalid"))}
                  for e in exc.errors()[:20]]
        return _json(422, fields)

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_down(request: Request, exc: Exception):
        log.warning("database unavailable on %s %s: %r", request.method, request.url.path, exc)
        return _json(503, DATABASE_DOWN, {"Retry-After": "5"})

    @app.exception_handler(StorageUnavailable)
    async def storage_down(request: Request, exc: Exception):
        log.warning("storage unavailable on %s %s: %s", request.method, request.url.path, exc)
        return _json(503, STORAGE_DOWN, {"Retry-After": "5"})

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("storage full on %s %s: %s", request.method, request.url.path, exc)
            return _json(507, STORAGE_FULL)
        return await unexpected(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return await database_down(request, exc)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, INTERNAL)


def _answer(status: int):
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return _json(status, message(exc))

    return handler


# The answers a route may give besides its own success, for its OpenAPI document.
ANSWERS = {
    400: "The request is malformed (a bad cursor, body framing, an unusable upload).",
    401: "No API key, or an unknown or revoked one.",
    404: "No such job or item for this API key.",
    409: "A conflict: the idempotency key was used for another request, or no result yet.",
    410: "Gone: the item failed or was canceled (the reason is given), or the job expired.",
    413: "The request body or a file is larger than the limits.",
    415: "No file in the request is an image of a supported format.",
    422: "A parameter, header or form field is not valid.",
    429: "Too many requests (per API key) or failed authentications (per client address).",
}


def answers(*statuses: int) -> dict[int, dict]:
    """OpenAPI `responses` for these error statuses (from ANSWERS), for a route decorator."""
    return {status: {"model": ErrorOut, "description": ANSWERS[status]} for status in statuses}


def document(route: APIRoute, statuses) -> None:
    """Declare `statuses` in the route's OpenAPI responses, keeping any it declared itself."""
    for status, answer in answers(*statuses).items():
        route.responses.setdefault(status, answer)
