"""Job-change notices (jobs/notices.py) on a real Redis: a committed change to a job publishes
its id, a rolled-back one publishes nothing, and a Redis that is gone costs a commit nothing
but the notice."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from face2paint.cli.stack import free_port
from face2paint.jobs import db
from face2paint.jobs.create import create_job
from face2paint.jobs.migrate import upgrade
from face2paint.jobs.notices import Publisher, channel, mark_changed, publish_after_commit
from face2paint.jobs.redis_client import redis_client_for
from face2paint.jobs.stages import begin_stage, fail_item
from face2paint.jobs.storage import LocalStorage
from face2paint.settings import Settings


@pytest.fixture
def setup(tmp_path, redis_url):
    url = f"sqlite:///{tmp_path / 'f2p.db'}"
    upgrade(url)
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    publish_after_commit(sessions, Publisher.for_broker(redis_url))
    settings = Settings(home=tmp_path)
    with sessions() as s:
        job, _ = create_job(s, LocalStorage(tmp_path / "storage"), "alice",
                            [("a.jpg", "image/jpeg", b"x"), ("b.jpg", "image/jpeg", b"y")],
                            {"style": "paprika"}, settings=settings)
    listener = redis_client_for(redis_url).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel(job.id))
    yield sessions, job.id, [i.id for i in job.items], listener, settings
    listener.close()
    engine.dispose()


def _heard(listener, wait_s: float = 5.0) -> int:
    """How many notices arrived: waits up to wait_s for the first, then takes what follows."""
    n, deadline = 0, time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        if listener.get_message(timeout=min(left, 0.3) if not n else 0.3) is not None:
            n += 1
        elif n:
            break
    return n


def test_committed_changes_are_announced_once_per_transaction(setup):
    sessions, job_id, items, listener, settings = setup
    with db.session_scope(sessions) as s:
        assert begin_stage(s, items[0], "detect", "w1", settings=settings) is not None
    assert _heard(listener) == 1
    # Two changes to the job in one transaction: one notice.
    with db.session_scope(sessions) as s:
        fail_item(s, items[0], "detect: no image")
        fail_item(s, items[1], "detect: no image")
    assert _heard(listener) == 1


def test_a_rolled_back_change_is_not_announced(setup):
    sessions, job_id, items, listener, settings = setup
    with pytest.raises(RuntimeError):
        with db.session_scope(sessions) as s:
            begin_stage(s, items[0], "detect", "w1", settings=settings)
            raise RuntimeError("the stage's caller failed")
    # The mark went with the rollback: the next, unrelated commit on a session announces nothing.
    with db.session_scope(sessions) as s:
        s.execute(text("SELECT 1"))
    assert _heard(listener, wait_s=1.0) == 0
    with db.session_scope(sessions) as s:
        begin_stage(s, items[0], "detect", "w1", settings=settings)
    assert _heard(listener) == 1


def test_a_redis_that_is_gone_costs_a_commit_only_its_notice(setup):
    sessions, job_id, items, listener, settings = setup
    dead = Publisher.for_broker(f"redis://127.0.0.1:{free_port()}/0")
    tries = []
    pipeline = dead.client.pipeline
    dead.client.pipeline = lambda **kw: tries.append(1) or pipeline(**kw)
    assert dead.publish([job_id]) == 0 and len(tries) == 1
    # Quiet for a while after the failure: later commits do not each wait for a connect.
    assert all(dead.publish([job_id]) == 0 for _ in range(100)) and len(tries) == 1
    sessions2 = db.session_factory(sessions.kw["bind"])
    publish_after_commit(sessions2, dead)
    with db.session_scope(sessions2) as s:
        mark_changed(s, job_id)
        assert begin_stage(s, items[0], "detect", "w1", settings=settings) is not None
    with sessions2() as s:
        assert s.get(db.Item, items[0]).status == "detecting"
