"""How the API hands items to the broker: jobs.enqueue.publish_then_mark with the Celery
publisher (worker.app.enqueue_items, which sends tasks by name and imports no model code).

The `submit` fault point (worker/faults.py, for tests/test_faults.py) is installed here, at the
seam between a new job's commit and its publish, when FACE2PAINT_FAULTS is set: the app then
gets a FaultyEnqueuer. Production code calls no fault hook. The sweeper's publishes never pass
the point, so an API that crashed there recovers its items once restarted.
"""

from __future__ import annotations

import functools
import logging

from sqlalchemy.orm import Session

from ..jobs.db import Job
from ..jobs.enqueue import Publish, publish_then_mark
from ..jobs.states import ItemState, Stage

log = logging.getLogger("face2paint.api")


class Enqueuer:
    def __init__(self, publish: Publish):
        self.publish = publish

    @classmethod
    def for_celery(cls, celery_app=None) -> "Enqueuer":
        """Publishing through `celery_app` (default: the one from the environment), with the
        fault point when FACE2PAINT_FAULTS is set."""
        from ..worker import faults
        from ..worker.app import enqueue_items

        publish = functools.partial(enqueue_items, app=celery_app)
        return (FaultyEnqueuer if faults.enabled() else cls)(publish)

    def items(self, session: Session, item_ids: list[str], from_stage: str = Stage.DETECT) -> int:
        """Publish, then mark enqueued (raises when the broker cannot be reached)."""
        return publish_then_mark(session, self.publish, item_ids, from_stage)

    def new_job(self, session: Session, job: Job) -> int:
        """Publish a just-created job's queued items (those rejected at upload start out
        failed). A broker that is down is no reason to fail the request: the job is stored, and
        the sweeper publishes its items once the broker is back. Returns the items published."""
        ids = [i.id for i in job.items if i.status == ItemState.QUEUED]
        try:
            return self.items(session, ids)
        except Exception:  # any publish failure is recovered the same way
            log.warning("could not publish job %s; the sweeper will", job.id, exc_info=True)
            return 0


class FaultyEnqueuer(Enqueuer):
    """The `submit` fault point: after the job is committed, before its items are published."""

    def new_job(self, session: Session, job: Job) -> int:
        from ..worker import faults

        if any(i.status == ItemState.QUEUED for i in job.items):
            faults.hit("submit", job.id, [i.filename for i in job.items])
        return super().new_job(session, job)
