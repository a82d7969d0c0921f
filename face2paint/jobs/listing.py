"""An owner's jobs, newest first, in pages with an opaque cursor."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime, timezone

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from .db import Job
from .errors import InvalidCursor

MAX_PAGE = 200
MAX_CURSOR_CHARS = 256  # encode_cursor's are about 100
_CURSOR_CHARS = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_ID = re.compile(r"[0-9a-f]{32}")  # db.new_id
_ISO_TIME = re.compile(r"[0-9:.T+-]{19,40}")  # datetime.isoformat() with an offset
_EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(9000, 1, 1, tzinfo=timezone.utc)


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at in UTC, job id) of a cursor from encode_cursor; InvalidCursor (one fixed
    message) for anything else. Defensive, since a cursor is client input: its size is capped
    before decoding, its JSON must be a flat array of two strings (no nesting, so no deep
    recursion), the id must have the shape of an id (no NUL or surrogate reaches SQL) and the
    timestamp must be an aware ISO time within the years every backend can bind."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR_CHARS \
            or not _CURSOR_CHARS.fullmatch(cursor):
        raise InvalidCursor()
    try:
        raw = base64.urlsafe_b64decode(cursor.rstrip("=") + "=" * (-len(cursor.rstrip("=")) % 4))
        if raw.count(b"[") + raw.count(b"{") > 1:  # a cursor is one flat array
            raise ValueError("nested")
        value = json.loads(raw)
        if not (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, str) for v in value)):
            raise ValueError("not [created_at, id]")
        created, job_id = value
        if not _ID.fullmatch(job_id) or not _ISO_TIME.fullmatch(created):
            raise ValueError("not an id and a time")
        ts = datetime.fromisoformat(created)
        if ts.tzinfo is None:
            raise ValueError("naive")
        ts = ts.astimezone(timezone.utc)  # OverflowError at the ends of the datetime range
        if not (_EARLIEST <= ts <= _LATEST):
            raise ValueError("out of range")
        return ts, job_id
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error):
        raise InvalidCursor() from None


def list_jobs(
    session: Session, owner: str, cursor: str | None = None, limit: int = 50
) -> tuple[list[Job], str | None]:
    """The owner's jobs, newest first, and the cursor of the next page (None at the end).

    Keyset pagination on (created_at, id): pages stay correct while new jobs are created.
    """
    limit = max(1, min(int(limit), MAX_PAGE))
    query = select(Job).where(Job.owner == owner, Job.deleted_at.is_(None))
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
