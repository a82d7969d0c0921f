"""API keys: stored as sha256 hashes only; the plaintext is shown once, when created."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .db import ApiKey, utcnow
from .webhooks import key_secret, new_secret

API_KEY_PREFIX = "f2p_"


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, owner: str) -> str:
    """Create a key for `owner` and return its plaintext, which is not stored anywhere:
    only its sha256 is. Show it to the user once."""
    if not owner or len(owner) > 255:
        raise ValueError("an API key owner must be 1 to 255 characters")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner=owner, key_hash=hash_api_key(key), created_at=utcnow(),
                       webhook_secret=new_secret()))
    return key


def webhook_secret(session: Session, key: str) -> str | None:
    """The webhook signing secret of a key (made with it; None for keys older than webhooks)."""
    found = key_secret(session, hash_api_key(key))
    return found[1] if found else None


def owner_for_key(session: Session, key: str | None) -> str | None:
    """The owner of an active key, or None for an unknown or revoked key."""
    if not key or len(key) > 512:
        return None
    return session.scalar(
        select(ApiKey.owner).where(
            ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None)
        )
    )


def revoke_api_key(session: Session, key: str) -> bool:
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(result.rowcount)
