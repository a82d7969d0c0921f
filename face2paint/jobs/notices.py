"""Job-change notices: once a transaction that changed a job or one of its items commits, the
job's id is published on a Redis channel, so that whoever follows the job (the event stream
of api/routes/events.py, and through it the web page, `Job.wait` and the CLI) hears of it at
once instead of at its next poll.

Best effort by design: the database stays the only truth. A notice lost (Redis down, a
broker that is not Redis, a process that never installed the publisher) only delays a
follower to its own poll, which it keeps as the fallback.

The domain functions mark what changed on the session (`mark_changed`, from begin_stage and
refresh_job); `publish_after_commit` publishes a sessionmaker's marks after each commit
(db.after_commit, the webhook outbox's mechanism too) and drops them on a rollback.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.orm import Session

from .db import after_commit
from .redis_client import redis_client_for

log = logging.getLogger("face2paint.notices")

CHANGED = "face2paint.changed_jobs"  # session.info key: ids of the jobs to announce on commit
CHANNEL_PREFIX = "face2paint:job-changed:"
RETRY_S = 5.0  # after a Redis error, publish nothing this long (no commit waits on a dead Redis)


def channel(job_id: str) -> str:
    return CHANNEL_PREFIX + job_id


def mark_changed(session: Session, job_id: str) -> None:
    session.info.setdefault(CHANGED, set()).add(job_id)


class Publisher:
    """Publishes job ids on their channels; after a failure, stays quiet for RETRY_S."""

    def __init__(self, client):
        self.client = client
        self._quiet_until = 0.0

    @classmethod
    def for_broker(cls, broker_url: str | None) -> "Publisher | None":
        client = redis_client_for(broker_url)
        return cls(client) if client is not None else None

    def publish(self, job_ids) -> int:
        """How many were published (0 while quiet or when Redis fails)."""
        if not job_ids or time.monotonic() < self._quiet_until:
            return 0
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.publish(channel(job_id), b"1")
                pipe.execute()
            return len(job_ids)
        except Exception as e:  # noqa: BLE001 - followers fall back to polling
            self._quiet_until = time.monotonic() + RETRY_S
            log.debug("job-change notices not published (%r); followers will poll", e)
            return 0

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass


def publish_after_commit(sessions, publisher: "Publisher | None") -> None:
    """Publish the jobs each committed transaction of `sessions` (a sessionmaker) changed;
    without a publisher the marks are only dropped."""
    after_commit(sessions, CHANGED, publisher.publish if publisher is not None else _drop)


def _drop(job_ids) -> None:
    pass
