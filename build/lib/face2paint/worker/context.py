"""Per-process database and storage handles for the worker, created lazily after fork."""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache

from ..jobs.db import default_database_url, make_engine, session_factory
from ..jobs.storage import storage_from_settings
from ..settings import get_settings


@lru_cache(maxsize=None)
def _sessions(pid: int):
    # Keyed by pid: an engine inherited across fork must not be reused by the child.
    settings = get_settings()
    return session_factory(make_engine(settings.database_url or default_database_url(settings)))


@contextmanager
def session_scope():
    """One transaction: commit on success, roll back on error."""
    session = _sessions(os.getpid())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@lru_cache(maxsize=None)
def _storage(pid: int):
    return storage_from_settings(get_settings())


def storage():
    return _storage(os.getpid())
