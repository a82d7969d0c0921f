"""Which stage a redelivered message begins (worker/tasks.StageTask.resume_stage), on a real
SQLite database: a merged task whose worker died resumes in the later stage it began; a stale
copy of a message (put back in the queue by a broker connection drop while the first delivery
went on) must not take over a stage that another message carries or that was handed on."""

from __future__ import annotations

import pytest

from face2paint.jobs import db, migrate
from face2paint.jobs.create import create_job
from face2paint.jobs.db import session_scope
from face2paint.jobs.stages import begin_stage, end_stage, finish_stage
from face2paint.jobs.states import STAGES
from face2paint.jobs.storage import LocalStorage
from face2paint.settings import Settings
from face2paint.worker import tasks

CARRIER, OTHER = "task-carrier", "task-other"


@pytest.fixture
def sessions(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    migrate.upgrade(url)
    engine = db.make_engine(url)
    yield db.session_factory(engine)
    engine.dispose()


@pytest.fixture
def item_id(sessions, tmp_path):
    settings = Settings(home=tmp_path)
    with sessions() as s:
        job, _ = create_job(s, LocalStorage(tmp_path / "storage"), "owner",
                            [("a.png", "image/png", b"x")], settings=settings)
        return job.items[0].id


@pytest.fixture(autouse=True)
def all_queues(monkeypatch):
    """As in a worker that consumes every stage queue (the embedded one)."""
    monkeypatch.setattr(tasks, "worker_queues", lambda app_=None: frozenset(STAGES))


def resumed(sessions, task, item_id: str, request_id: str) -> str:
    task.push_request(id=request_id)
    try:
        with session_scope(sessions) as s:
            return task.resume_stage(s, item_id)
    finally:
        task.pop_request()


def run(sessions, item_id: str, stage: str, task_id: str, outcome: str | None = "succeeded"):
    """One attempt at `stage` carried by `task_id`, ended with `outcome` (None: left open)."""
    with session_scope(sessions) as s:
        attempt = begin_stage(s, item_id, stage, "w", task_id=task_id)
        assert attempt is not None
    if outcome == "succeeded":
        with session_scope(sessions) as s:
            assert finish_stage(s, attempt.id)
    elif outcome is not None:
        with session_scope(sessions) as s:
            end_stage(s, attempt.id, outcome, error="boom")


def test_a_merged_task_whose_worker_died_resumes_where_it_was(sessions, item_id):
    # detect, parse and stylize under one message; the worker died in stylize.
    for stage in ("detect", "parse"):
        run(sessions, item_id, stage, CARRIER)
    run(sessions, item_id, "stylize", CARRIER, outcome=None)
    assert resumed(sessions, tasks.detect, item_id, CARRIER) == "stylize"


def test_a_merged_task_retried_in_a_later_stage_resumes_there(sessions, item_id):
    run(sessions, item_id, "detect", CARRIER)
    run(sessions, item_id, "parse", CARRIER, outcome="retry")
    assert resumed(sessions, tasks.detect, item_id, CARRIER) == "parse"


def test_a_stale_copy_does_not_take_over_a_stage_another_message_runs(sessions, item_id):
    for stage in ("detect", "parse", "stylize"):
        run(sessions, item_id, stage, CARRIER)
    run(sessions, item_id, "finalize", OTHER, outcome=None)  # the published finalize, running
    assert resumed(sessions, tasks.detect, item_id, CARRIER) == "detect"
    assert resumed(sessions, tasks.stylize, item_id, "task-a-sweep-sent") == "stylize"


def test_a_stale_copy_does_not_run_a_stage_that_was_handed_on(sessions, item_id):
    """The copy of the message that carried stylize, arriving after stylize published
    finalize and before finalize began: begin its own stage (which begin_stage drops), not
    finalize (a second finalize beside the published one)."""
    for stage in ("detect", "parse", "stylize"):
        run(sessions, item_id, stage, CARRIER)
    assert resumed(sessions, tasks.detect, item_id, CARRIER) == "detect"
    with session_scope(sessions) as s:
        assert begin_stage(s, item_id, "detect", "w", task_id=CARRIER) is None


def test_a_task_at_its_own_stage_is_not_moved(sessions, item_id):
    run(sessions, item_id, "detect", CARRIER)
    assert resumed(sessions, tasks.parse, item_id, OTHER) == "parse"
