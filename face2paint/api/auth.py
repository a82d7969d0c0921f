"""API-key authentication: keys come in headers only and are looked up by their sha256, never
stored in plain text. After the key is known, the request takes a token from the key's
rate-limit bucket (ratelimit.py): 429 with Retry-After when the bucket is empty. Failed
authentications are counted per client address, and an address that failed too often is
refused (429) before its key is even looked up.

`authenticate` is the whole check; the Authenticate middleware (authenticate.py) runs it from
the headers alone, before a byte of the body is read, for every route that takes OwnerDep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from ..jobs.api_keys import hash_api_key, owner_for_key
from ..jobs.db import unit_of_work
from .errors import DATABASE_DOWN
from .ratelimit import RateLimiter

_READ_METHODS = {"GET", "HEAD", "OPTIONS"}
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
MISSING_KEY = ("missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY' "
               "(create one with `face2paint keys create --owner NAME`)")
UNKNOWN_KEY = "unknown or revoked API key"


@dataclass
class Authenticated:
    owner: str
    session: Session  # the request's one session: the lookup ran on it, the route goes on with it
    headers: dict[str, str] = field(default_factory=dict)  # rate-limit headers for the response


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key of `X-API-Key: KEY` or `Authorization: Bearer KEY`, or None."""
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    if authorization and authorization.lower().startswith("bearer ") and authorization[7:].strip():
        return authorization[7:].strip()
    return None


def authenticate(sessions: Callable[[], Session], limiter: RateLimiter | None, method: str,
                 authorization: str | None, x_api_key: str | None, address: str) -> Authenticated:
    """The owner of the request's key, on a new session from `sessions` (the caller closes
    it), after the key's rate-limit token; HTTPException 401, 429 or 503 otherwise. Blocking
    (database and Redis): run it off the event loop."""
    limiter = limiter if limiter is not None and (limiter.enabled or limiter.auth_failures_per_minute > 0) else None
    if limiter is not None:
        blocked = limiter.auth_blocked(address)
        if not blocked.allowed:
            raise _too_many_failures(blocked.retry_after_header, blocked.limit)
    key = key_from_headers(authorization, x_api_key)
    owner = session = None
    if key is not None:
        session = sessions()
        try:
            with unit_of_work(session):
                owner = owner_for_key(session, key)
        except SQLAlchemyError:
            session.close()
            raise HTTPException(503, DATABASE_DOWN, headers={"Retry-After": "5"}) from None
    if owner is None:
        if session is not None:
            session.close()
        if limiter is not None:
            limiter.auth_failed(address)
        raise HTTPException(401, MISSING_KEY if key is None else UNKNOWN_KEY, headers=_CHALLENGE)
    try:
        headers = take_token(limiter, method, key)
    except BaseException:
        session.close()
        raise
    return Authenticated(owner, session, headers)


def _too_many_failures(retry_after: str, limit: int) -> HTTPException:
    return HTTPException(
        429,
        f"too many failed authentications from this address (at most {limit} a minute); "
        f"retry after {retry_after} s with a valid API key",
        headers={"Retry-After": retry_after},
    )


def take_token(limiter: RateLimiter | None, method: str, key: str) -> dict[str, str]:
    """One token from the key's bucket for this kind of request: the rate-limit headers for
    the response, or HTTPException 429 when there is none."""
    if limiter is None or not limiter.enabled:
        return {}
    kind = "read" if method in _READ_METHODS else "write"
    decision = limiter.check(hash_api_key(key), kind)
    headers = {"X-RateLimit-Limit": f"{decision.limit};w=60",
               "X-RateLimit-Remaining": str(decision.remaining)}
    if not decision.allowed:
        raise HTTPException(
            429,
            f"rate limit exceeded for this API key: at most {decision.limit} "
            f"{kind} requests per minute; retry after {decision.retry_after_header} s",
            headers={**headers, "Retry-After": decision.retry_after_header},
        )
    return headers
