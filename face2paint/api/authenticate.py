"""The Authenticate middleware: API keys are checked from the headers alone, before a byte of
the request body is read, so an unauthenticated or revoked upload is refused (401) without
being received, parsed or spooled to disk. Pure ASGI, like BodyLimit: it never calls
receive() itself.

Which requests need a key is told by the route they will reach: the middleware matches the
request against the app's routes as the router will, and authenticates those whose endpoint
depends on deps.require_owner (OwnerDep), so a new route is covered by taking OwnerDep. The
lookup runs in the thread pool on the request's one database session, which is handed to the
route through the scope's state (with the owner), and closed when the request ends at the
latest (deps.request_session closes it as soon as the route returns).
"""

from __future__ import annotations

import json

import anyio
import anyio.to_thread
from fastapi.dependencies.models import Dependant
from starlette.exceptions import HTTPException
from starlette.routing import Match

from .auth import authenticate
from .logs import escape

STATE_OWNER = "owner"
STATE_SESSION = "session"


def _depends_on(dependant: Dependant, call) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


def takes_owner(route) -> bool:
    """Whether the route's endpoint depends on deps.require_owner (OwnerDep)."""
    from .deps import require_owner

    dependant = getattr(route, "dependant", None)
    return bool(dependant and _depends_on(dependant, require_owner))


def _routes(routes):
    """The app's routes as its router matches them: FastAPI >= 0.16x keeps included routers
    whole and matches through their effective route contexts; before, they were flattened."""
    from fastapi import routing

    iter_contexts = getattr(routing, "iter_route_contexts", None)
    return iter_contexts(routes) if iter_contexts is not None else routes


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


def _has_body(scope) -> bool:
    cl = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (cl is not None and cl.strip() not in ("", "0"))


class Authenticate:
    def __init__(self, app):
        self.app = app
        self._needs_key: dict[int, tuple[object, bool]] = {}

    def _route_needs_key(self, scope) -> bool:
        for route in _routes(scope["app"].router.routes):
            match, _ = route.matches(scope)
            if match is Match.FULL:
                # By identity (routes may be unhashable); the route is kept, so is its id.
                original = getattr(route, "original_route", route)
                known = self._needs_key.get(id(original))
                if known is None:
                    known = self._needs_key[id(original)] = (original, takes_owner(route))
                return known[1]
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self._route_needs_key(scope):
            return await self.app(scope, receive, send)
        state = scope["app"].state
        client = scope.get("client")
        try:
            auth = await anyio.to_thread.run_sync(
                authenticate, state.sessions, getattr(state, "limiter", None), scope["method"],
                _header(scope, b"authorization"), _header(scope, b"x-api-key"),
                client[0] if client else "unknown")
        except HTTPException as e:
            return await _refuse(scope, send, e)
        scope.setdefault("state", {}).update({STATE_OWNER: auth.owner, STATE_SESSION: auth.session})
        extra = [(k.lower().encode(), v.encode()) for k, v in auth.headers.items()]

        async def send_with_headers(message):
            if message["type"] == "http.response.start" and extra:
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            # Normally closed already (when the route returned); closing twice is harmless.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(auth.session.close)


async def _refuse(scope, send, e: HTTPException) -> None:
    body = json.dumps({"detail": escape(e.detail)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (e.headers or {}).items()]
    if _has_body(scope):
        # The body is never read: the connection cannot carry another request after it.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": e.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
