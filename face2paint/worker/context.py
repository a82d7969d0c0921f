"""Per-process resources of a worker: database sessions, object storage and the model cache.

Created lazily in the process that uses them (a prefork pool process), never inherited across
fork: `resources()` makes a new set when the pid changes, so an engine or a loaded model of
the parent is never reused by its children. The stage task base class (tasks.StageTask) hands
them to the stages.
"""

from __future__ import annotations

import os
from functools import cached_property

from ..jobs import db, notices
from ..jobs.storage import storage_from_settings
from ..settings import Settings, get_settings


class Resources:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.pid = os.getpid()

    @cached_property
    def _sessions(self):
        from .app import publish_outbox_after_commit

        sessions = db.session_factory(db.make_engine(self.settings.resolved_database_url))
        publish_outbox_after_commit(sessions)  # webhook deliveries, once their rows are committed
        # Job-change notices, so that the streams following a job hear of each stage at once.
        notices.publish_after_commit(sessions,
                                     notices.Publisher.for_broker(self.settings.broker_url))
        return sessions

    def session_scope(self):
        """A new session with one unit of work (jobs/__init__.py): committed when the block
        ends, rolled back on error."""
        return db.session_scope(self._sessions)

    @cached_property
    def storage(self):
        return storage_from_settings(self.settings)

    @cached_property
    def models(self):
        """The process's model cache: each model loads on the first stage that needs it."""
        from ..models.cache import ModelCache
        from ..models.registry import Registry
        from . import metrics

        cache = ModelCache(Registry(self.settings))
        cache.on_load = lambda record: metrics.model_loaded(record.model_id, record.seconds)
        return cache


_current: Resources | None = None


def resources() -> Resources:
    global _current
    if _current is None or _current.pid != os.getpid():
        _current = Resources(get_settings())
    return _current


def session_scope():
    return resources().session_scope()
