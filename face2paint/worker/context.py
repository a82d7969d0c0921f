"""Per-process database and storage handles for the worker, created lazily after fork."""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache

from ..jobs import db
from ..jobs.storage import storage_from_settings
from ..settings import get_settings


@lru_cache(maxsize=None)
def _sessions(pid: int):
    # Keyed by pid: an engine inherited across fork must not be reused by the child.
    return db.session_factory(db.make_engine(get_settings().resolved_database_url))


@contextmanager
def session_scope():
    """A new session with one unit of work (jobs/__init__.py): committed when the block ends,
    rolled back on error."""
    with db.session_scope(_sessions(os.getpid())) as session:
        yield session


@lru_cache(maxsize=None)
def _storage(pid: int):
    return storage_from_settings(get_settings())


def storage():
    return _storage(os.getpid())
