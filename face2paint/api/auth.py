"""API-key authentication: keys are looked up by their sha256, never stored in plain text."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import Header, HTTPException, Request

from ..jobs import service


def _key_from(authorization: Optional[str], x_api_key: Optional[str]) -> Optional[str]:
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def require_owner(
    request: Request,
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
    request.state.owner = owner
    return owner
