"""API keys: stored as sha256 hashes only; the plaintext is shown once, when created. A key's
first characters (its prefix: `f2p_` and 8 more, 48 bits, far too few to guess the rest) are
kept too, so `keys list` can show which key is which and `keys revoke` can name one by it."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .db import ApiKey, utcnow
from .webhooks import key_secret, new_secret

API_KEY_PREFIX = "f2p_"
SHOWN_CHARS = len(API_KEY_PREFIX) + 8


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, owner: str) -> str:
    """Create a key for `owner` and return its plaintext, which is not stored anywhere:
    only its sha256 is. Show it to the user once."""
    if not owner or len(owner) > 255:
        raise ValueError("an API key owner must be 1 to 255 characters")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner=owner, key_hash=hash_api_key(key), prefix=key[:SHOWN_CHARS],
                       created_at=utcnow(), webhook_secret=new_secret()))
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


def list_api_keys(session: Session, owner: str | None = None) -> list[ApiKey]:
    """Every key (or one owner's), oldest first; revoked ones included."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if owner is not None:
        query = query.where(ApiKey.owner == owner)
    return list(session.scalars(query))


class KeyNotFound(LookupError):
    def __str__(self) -> str:
        return str(self.args[0])


def find_api_keys(session: Session, ref: str) -> list[ApiKey]:
    """The keys `ref` names: the whole key, a key's id (as `keys list` shows it) or its
    prefix. KeyNotFound when none or, for a prefix, more than one (say which)."""
    ref = (ref or "").strip()
    if ref.startswith(API_KEY_PREFIX) and len(ref) > SHOWN_CHARS:
        rows = list(session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_api_key(ref))))
    else:
        rows = list(session.scalars(select(ApiKey).where(ApiKey.id == ref)))
        if not rows and len(ref) >= len(API_KEY_PREFIX) + 4:
            rows = list(session.scalars(select(ApiKey).where(ApiKey.prefix.startswith(ref, autoescape=True))))
    if not rows:
        raise KeyNotFound(f"no API key matches {ref!r}; `face2paint keys list` shows the ids and prefixes")
    if len(rows) > 1:
        raise KeyNotFound(f"{len(rows)} API keys start with {ref!r}; give the id from `face2paint keys list`")
    return rows


def revoke_matching(session: Session, ref: str) -> ApiKey:
    """Revoke the key `ref` names (see find_api_keys); revoking a revoked key changes nothing."""
    (row,) = find_api_keys(session, ref)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
