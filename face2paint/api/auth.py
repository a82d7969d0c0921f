"""API-key authentication: keys come in headers only and are looked up by their sha256, never
stored in plain text. After the key is known, the request takes a token from the key's
rate-limit bucket (ratelimit.py): 429 with Retry-After when the bucket is empty.

The dependency that runs this on every /v1 request is deps.OwnerDep.
"""

from __future__ import annotations

from fastapi import HTTPException, Response

from ..jobs.api_keys import hash_api_key
from .ratelimit import RateLimiter

_READ_METHODS = {"GET", "HEAD", "OPTIONS"}
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str:
    """The key of `Authorization: Bearer KEY` or `X-API-Key: KEY`; 401 when neither is sent."""
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    if authorization and authorization.lower().startswith("bearer ") and authorization[7:].strip():
        return authorization[7:].strip()
    raise HTTPException(
        401,
        "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY' "
        "(create one with `face2paint keys create --owner NAME`)",
        headers=_CHALLENGE,
    )


def unknown_key() -> HTTPException:
    return HTTPException(401, "unknown or revoked API key", headers=_CHALLENGE)


def take_token(limiter: RateLimiter | None, method: str, key: str, response: Response) -> None:
    """One token from the key's bucket for this kind of request; 429 when there is none."""
    if limiter is None or not limiter.enabled:
        return
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
    response.headers.update(headers)
