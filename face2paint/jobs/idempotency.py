"""Idempotent submission: a repeated (owner, Idempotency-Key) gets the job it created, as long
as the request is the same (options and file contents, by sha256)."""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import Job
from .errors import IdempotencyConflict, JobRejected
from .inputs import NewFile


def check_key(key: str | None) -> None:
    if key is not None and not (0 < len(key) <= 255):
        raise JobRejected("an idempotency key must be 1 to 255 characters")


def request_hash(options: dict, files: Sequence[NewFile]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    for f in files:
        h.update(b"\0")
        h.update(hashlib.sha256(f.data).digest())
    return h.hexdigest()


def earlier_job(session: Session, owner: str, key: str | None, hashed: str) -> Job | None:
    """The job this owner created with `key`, or None. IdempotencyConflict when that job came
    from a different request."""
    if key is None:
        return None
    job = session.scalars(
        select(Job).where(Job.owner == owner, Job.idempotency_key == key)
    ).one_or_none()
    if job is not None and job.request_hash and job.request_hash != hashed:
        raise IdempotencyConflict(key, job.id)
    return job
