"""API-key authentication: keys are looked up by their sha256, never stored in plain text.

After the key is known, the request takes a token from the key's rate-limit bucket (see
ratelimit.py): 429 with Retry-After when the bucket is empty.
"""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import Header, HTTPException, Request, Response

from ..jobs import service

_READ_METHODS = {"GET", "HEAD", "OPTIONS"}


def _key_from(authorization: Optional[str], x_api_key: Optional[str]) -> Optional[str]:
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def _rate_limit(request: Request, response: Response, key: str) -> None:
    limiter = getattr(request.app.state, "limiter", None)
    if limiter is None or not limiter.enabled:
        return
    kind = "read" if request.method in _READ_METHODS else "write"
    decision = limiter.check(service.hash_api_key(key), kind)
    headers = {"X-RateLimit-Limit": f"{decision.limit};w=60", "X-RateLimit-Remaining": str(decision.remaining)}
    if not decision.allowed:
        raise HTTPException(
            429,
            f"rate limit exceeded for this API key: at most {decision.limit} "
            f"{'read' if kind == 'read' else 'write'} requests per minute; "
            f"retry after {decision.retry_after_header} s",
            headers={**headers, "Retry-After": decision.retry_after_header},
        )
    response.headers.update(headers)


def require_owner(
    request: Request,
    response: Response,
    authorization: Annotated[Optional[str], Header()] = None,
    x_api_key: Annotated[Optional[str], Header()] = None,
) -> str:
    key = _key_from(authorization, x_api_key)
    if not key:
        raise HTTPException(
            401,
            "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY' "
            "(create one with `face2paint keys create --owner NAME`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    with request.app.state.sessions() as s:
        owner = service.owner_for_key(s, key)
    if owner is None:
        raise HTTPException(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    _rate_limit(request, response, key)
    request.state.owner = owner
    return owner
