"""An owner's jobs, newest first, in pages with an opaque cursor."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from .db import Job
from .errors import InvalidCursor

MAX_PAGE = 200


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        ts = datetime.fromisoformat(created)
        if ts.tzinfo is None or not isinstance(job_id, str):
            raise ValueError
        return ts, job_id
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidCursor() from None


def list_jobs(
    session: Session, owner: str, cursor: str | None = None, limit: int = 50
) -> tuple[list[Job], str | None]:
    """The owner's jobs, newest first, and the cursor of the next page (None at the end).

    Keyset pagination on (created_at, id): pages stay correct while new jobs are created.
    """
    limit = max(1, min(int(limit), MAX_PAGE))
    query = select(Job).where(Job.owner == owner)
    if cursor:
        ts, job_id = decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < ts, and_(Job.created_at == ts, Job.id < job_id))
        )
    rows = list(
        session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
    )
    if len(rows) > limit:
        return rows[:limit], encode_cursor(rows[limit - 1])
    return rows, None
