"""The job system's schema, migrations, state machine and domain operations, on SQLite and on a
real PostgreSQL server. Every domain call runs in a unit of work the test owns, as in
production (jobs/__init__.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from face2paint.jobs import db, migrate
from face2paint.jobs.api_keys import create_api_key, owner_for_key, revoke_api_key
from face2paint.jobs.cancel import cancel_job
from face2paint.jobs.create import create_job
from face2paint.jobs.db import FaceRow, Item, Job, StageAttempt, session_scope, unit_of_work
from face2paint.jobs.enqueue import mark_enqueued, publish_then_mark
from face2paint.jobs.errors import (
    IdempotencyConflict,
    InvalidCursor,
    ItemNotFound,
    JobNotFound,
    JobRejected,
    NoResultYet,
)
from face2paint.jobs.faces import record_faces
from face2paint.jobs.listing import list_jobs
from face2paint.jobs.lookup import get_item, get_job, get_result_key, list_items
from face2paint.jobs.progress import refresh_job
from face2paint.jobs.stages import begin_stage, end_stage, fail_item, finish_stage
from face2paint.jobs.states import (
    STAGE_STATE,
    STAGES,
    TERMINAL_ITEM_STATES,
    InvalidTransition,
    ItemState,
    JobState,
    Outcome,
    Stage,
    check_item_transition,
    check_job_transition,
    job_status_from_counts,
)
from face2paint.jobs.storage import LocalStorage
from face2paint.jobs.sweep import stuck_items
from face2paint.settings import Settings
from tests.servers import fresh_database

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.integration),
]


@pytest.fixture
def empty_db_url(request, tmp_path):
    """An empty database of the requested backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        with fresh_database(request.getfixturevalue("pg_url")) as url:
            yield url


@pytest.fixture(scope="module")
def db_url(request, tmp_path_factory):
    """A migrated database per backend, shared by the module; tests keep apart by owner."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'jobs.db'}"
        migrate.upgrade(url)
        yield url
    else:
        with fresh_database(request.getfixturevalue("pg_url")) as url:
            migrate.upgrade(url)
            yield url


@pytest.fixture(scope="module")
def engine(db_url):
    engine = db.make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine):
    return db.session_factory(engine)


@pytest.fixture
def scope(sessions):
    """`with scope() as s:` a new session with one unit of work."""
    return lambda: session_scope(sessions)


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "storage")


@pytest.fixture
def owner():
    return f"owner-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path, max_attempts=3, max_files_per_job=10)


def pytest_generate_tests(metafunc):
    if "db_url" in metafunc.fixturenames:
        # Module scope: one migrated database per backend, tests grouped by backend.
        metafunc.parametrize("db_url", BACKENDS, indirect=True, scope="module")
    if "empty_db_url" in metafunc.fixturenames:
        metafunc.parametrize("empty_db_url", BACKENDS, indirect=True)


def files(n=2, tag="x"):
    return [(f"photo{i}.jpg", "image/jpeg", f"{tag}-{i}".encode()) for i in range(n)]


def make_job(sessions, storage, owner, settings, n=2, key=None, tag=None):
    with sessions() as s:
        job, created = create_job(
            s, storage, owner, files(n, tag or uuid.uuid4().hex), {"style": "paprika"}, key,
            settings=settings,
        )
        assert created
        return job.id, [i.id for i in job.items]


def run_to_finalizing(sessions, item_id, settings) -> int:
    """Each stage begun and finished as a worker does, up to finalize begun; its attempt id."""
    with session_scope(sessions) as s:
        for stage in STAGES[:-1]:
            attempt = begin_stage(s, item_id, stage, "w1", settings=settings)
            assert attempt is not None and attempt.stage == stage
            assert finish_stage(s, attempt, timings={stage: 0.5})
        return begin_stage(s, item_id, Stage.FINALIZE, "w1", settings=settings).id


def complete(sessions, attempt_id, key="out.png", face_count=0) -> bool:
    """The finalize stage's end: the item succeeds with its result, in the same transaction."""
    with session_scope(sessions) as s:
        return finish_stage(s, attempt_id, output_key=key, face_count=face_count)


# --- migrations -----------------------------------------------------------------------------


def _diff(url, metadata):
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, metadata)
    finally:
        engine.dispose()


def test_migrations_build_exactly_the_models_schema(empty_db_url):
    assert migrate.current(empty_db_url) is None
    migrate.upgrade(empty_db_url)
    migrate.upgrade(empty_db_url)  # a second run is a no-op
    assert migrate.current(empty_db_url) == migrate.head_revision() == "0004_attempt_task"
    assert migrate.is_up_to_date(empty_db_url)
    assert _diff(empty_db_url, db.Base.metadata) == []

    # The comparison does see differences: a model column the migration lacks shows up.
    changed = sa.MetaData()
    for table in db.Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["items"].append_column(sa.Column("extra", sa.Integer()))
    assert any(d[0] == "add_column" for d in _diff(empty_db_url, changed))

    migrate.downgrade(empty_db_url, "base")
    assert migrate.current(empty_db_url) is None
    engine = db.make_engine(empty_db_url)
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_an_sqlite_upgrade_from_empty_commits_once(tmp_path):
    # On SQLite the write lock is what makes concurrent upgrades take turns (PostgreSQL's
    # advisory lock outlives commits). A commit between steps would hand the lock to a process
    # with a stale plan, which then applies a step again (a column added twice).
    commits = []
    count = commits.append  # one bound method: remove() must get the object listen() got
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    sa.event.listen(sa.engine.Engine, "commit", count)
    try:
        migrate.upgrade(url)
    finally:
        sa.event.remove(sa.engine.Engine, "commit", count)
    assert migrate.current(url) == migrate.head_revision()
    assert len(commits) == 1


def test_concurrent_upgrades_take_turns(empty_db_url):
    # Separate processes, as API replicas and workers are (Alembic itself is not thread-safe).
    code = "import sys; from face2paint.jobs.migrate import upgrade; upgrade(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, empty_db_url], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert migrate.current(empty_db_url) == migrate.head_revision()


def test_engine_recovers_after_a_postgres_restart(pg_server):
    if not pg_server.managed:
        pytest.skip("the PostgreSQL server comes from the environment; cannot restart it")
    with fresh_database(pg_server.url) as url:
        engine = db.make_engine(url)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        pg_server.kill()  # a crash: pooled connections die with it
        pg_server.start()
        with engine.connect() as conn:  # pre-ping replaces the dead pooled connection
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        engine.dispose()


def test_postgres_urls_use_psycopg3():
    assert db.normalise_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert db.normalise_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert db.normalise_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ValueError, match="unsupported database URL"):
        db.make_engine("mysql://u@h/d")


def test_default_database_url_is_sqlite_under_home(tmp_path):
    assert Settings(home=tmp_path).resolved_database_url == f"sqlite:///{tmp_path}/face2paint.db"
    assert Settings(home=tmp_path, database_url="postgresql://x/y").resolved_database_url == (
        "postgresql://x/y"
    )


def test_sqlite_engine_settings(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'sub' / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    engine.dispose()


# --- state machine --------------------------------------------------------------------------


def test_item_walks_the_stages_in_order():
    path = ["queued", *(STAGE_STATE[s] for s in STAGES), "succeeded"]
    for old, new in zip(path, path[1:]):
        check_item_transition(old, new)
    for state in STAGE_STATE.values():
        check_item_transition(state, state)  # a stage may run again


@pytest.mark.parametrize(
    "old,new",
    [("queued", "parsing"), ("detecting", "stylizing"), ("parsing", "detecting"),
     ("stylizing", "succeeded"), ("queued", "succeeded"), ("succeeded", "failed"),
     ("canceled", "queued"), ("failed", "detecting")],
)
def test_invalid_item_transitions(old, new):
    with pytest.raises(InvalidTransition, match=f"from '{old}' to '{new}'"):
        check_item_transition(old, new)


def test_pending_items_can_fail_or_be_canceled_terminal_never_change():
    for state in ItemState:
        for end in ("failed", "canceled"):
            if state in TERMINAL_ITEM_STATES:
                with pytest.raises(InvalidTransition):
                    check_item_transition(state, end)
            else:
                check_item_transition(state, end)
    with pytest.raises(ValueError, match="unknown item state"):
        check_item_transition("bogus", "failed")


def test_job_transitions():
    check_job_transition("queued", "running")
    check_job_transition("running", "partially_succeeded")
    check_job_transition("queued", "canceled")
    with pytest.raises(InvalidTransition):
        check_job_transition("succeeded", "running")
    with pytest.raises(InvalidTransition):
        check_job_transition("running", "queued")


@pytest.mark.parametrize(
    "counts,started,expected",
    [
        ((3, 0, 0, 0), False, "queued"),
        ((3, 0, 0, 0), True, "running"),
        ((3, 2, 0, 0), True, "running"),
        ((3, 3, 0, 0), True, "succeeded"),
        ((3, 0, 3, 0), True, "failed"),
        ((3, 2, 1, 0), True, "partially_succeeded"),
        ((3, 1, 1, 1), True, "canceled"),
        ((3, 0, 0, 3), False, "canceled"),
        ((3, 1, 0, 1), True, "running"),  # canceled items, but one still pending
    ],
)
def test_job_status_from_counts(counts, started, expected):
    assert job_status_from_counts(*counts, started=started) == expected


def test_job_status_rejects_inconsistent_counts():
    with pytest.raises(ValueError, match="inconsistent"):
        job_status_from_counts(2, 2, 1, 0)


def test_stages_and_their_states():
    assert STAGES == ("detect", "parse", "stylize", "finalize")
    assert [STAGE_STATE[s] for s in STAGES] == ["detecting", "parsing", "stylizing", "finalizing"]


# --- states in the database -----------------------------------------------------------------


def test_state_enums_round_trip_through_the_database(sessions, scope, storage, owner, settings):
    job_id, (item_id, other) = make_job(sessions, storage, owner, settings, n=2)
    with scope() as s:
        a = begin_stage(s, item_id, "detect", "w", settings=settings)
        end_stage(s, a, "outage")
        b = begin_stage(s, item_id, Stage.DETECT, "w", settings=settings)
        attempt_ids = (a.id, b.id)
    with sessions() as s:  # a new session: every value comes from the database
        job, item = s.get(Job, job_id), s.get(Item, item_id)
        attempts = [s.get(StageAttempt, i) for i in attempt_ids]
        assert type(job.status) is JobState and job.status is JobState.RUNNING
        assert type(item.status) is ItemState and item.status is ItemState.DETECTING
        assert type(item.stage) is Stage and item.stage is Stage.DETECT
        assert s.get(Item, other).status is ItemState.QUEUED and s.get(Item, other).stage is None
        assert [(type(r.stage), r.outcome) for r in attempts] == [
            (Stage, Outcome.OUTAGE), (Stage, None)]
        # Stored as the plain values, readable by anything that reads the database.
        raw = s.execute(sa.text("SELECT status, stage FROM items WHERE id = :i"), {"i": item_id}).one()
        assert tuple(raw) == ("detecting", "detect") and type(raw[0]) is str
        # Queries take members and strings alike.
        assert s.scalar(sa.select(sa.func.count()).where(
            Item.job_id == job_id, Item.status == "queued")) == 1
    # A value outside the enum is refused on the way in, and named on the way out.
    with pytest.raises(sa.exc.StatementError, match="exploded"):
        with scope() as s:
            s.get(Item, other).status = "exploded"
    with scope() as s:
        s.execute(sa.text("UPDATE items SET status = 'exploded' WHERE id = :i"), {"i": other})
    with sessions() as s:
        with pytest.raises(ValueError, match="exploded"):
            s.get(Item, other)
    with scope() as s:
        s.execute(sa.text("UPDATE items SET status = 'queued' WHERE id = :i"), {"i": other})


# --- creating jobs --------------------------------------------------------------------------


def test_create_job_stores_inputs_then_rows(sessions, storage, owner, settings):
    with sessions() as s:
        job, created = create_job(
            s, storage, owner,
            [("../../etc/passwd", "image/png", b"png-bytes"),
             ("C:\\Users\\me\\face.JPG", "image/jpeg", b"jpg-bytes"),
             ("junk.bin", "text/plain", b"junk", "not an image")],
            {"style": "paprika"}, None, settings=settings,
        )
    assert created and job.status == "queued" and (job.total, job.failed) == (3, 1)
    items = sorted(job.items, key=lambda i: i.index)
    assert [i.filename for i in items] == ["passwd", "face.JPG", "junk.bin"]
    assert [i.status for i in items] == ["queued", "queued", "failed"]
    assert items[2].error == "not an image" and items[2].finished_at is not None
    for item, data in zip(items, [b"png-bytes", b"jpg-bytes", b"junk"]):
        # Keys come from ids, never from the file names.
        assert item.input_key.startswith(f"jobs/{job.id}/items/{item.id}/input.")
        assert storage.get_bytes(item.input_key) == data
    assert items[0].input_key.endswith(".png") and items[1].input_key.endswith(".jpg")
    assert items[2].input_key.endswith(".bin")


def test_create_job_is_idempotent_per_owner_and_key(sessions, storage, owner, settings):
    args = (files(2, "same"), {"style": "paprika"}, "key-1")
    with sessions() as s:
        job1, created1 = create_job(s, storage, owner, *args, settings=settings)
    with sessions() as s:
        job2, created2 = create_job(s, storage, owner, *args, settings=settings)
        assert (created1, created2) == (True, False)
        assert job2.id == job1.id
        assert sorted(i.id for i in job2.items) == sorted(i.id for i in job1.items)
    assert len(storage.list(f"jobs/{job1.id}/")) == 2
    assert len(storage.list("jobs/")) == 2  # the repeat stored nothing

    with sessions() as s:  # the same key for another owner is another job
        other, created = create_job(s, storage, owner + "-b", *args, settings=settings)
        assert created and other.id != job1.id
    with sessions() as s:  # the same key with different content is an error
        with pytest.raises(IdempotencyConflict, match="different request"):
            create_job(s, storage, owner, files(2, "other"), {"style": "paprika"},
                       "key-1", settings=settings)
    with sessions() as s:  # no key: every request is a new job
        a, _ = create_job(s, storage, owner, files(1, "n"), {}, None, settings=settings)
        b, _ = create_job(s, storage, owner, files(1, "n"), {}, None, settings=settings)
        assert a.id != b.id


def test_concurrent_creates_with_one_key_make_one_job(sessions, storage, owner, settings):
    results, errors = [], []
    barrier = threading.Barrier(4)

    def create():
        try:
            barrier.wait()
            with sessions() as s:
                job, created = create_job(
                    s, storage, owner, files(2, "race"), {}, "race-key", settings=settings
                )
                results.append((job.id, created))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    # The losers' inputs were removed again.
    assert len(storage.list("jobs/")) == 2


def test_create_job_limits(sessions, storage, owner, settings):
    with sessions() as s:
        with pytest.raises(JobRejected, match="at least one"):
            create_job(s, storage, owner, [], {}, None, settings=settings)
        with pytest.raises(JobRejected, match="limit is 10"):
            create_job(s, storage, owner, files(11), {}, None, settings=settings)
        with pytest.raises(JobRejected, match="idempotency key"):
            create_job(s, storage, owner, files(1), {}, "k" * 256, settings=settings)
    assert storage.list("") == []


def test_workflows_refuse_an_open_transaction(sessions, storage, owner, settings):
    """create_job and publish_then_mark commit between their steps: called inside a caller's
    transaction they would commit the caller's work too (or publish uncommitted items)."""
    published = []
    with sessions() as s:
        s.execute(sa.select(1))  # a transaction is open now
        with pytest.raises(RuntimeError, match="already open"):
            create_job(s, storage, owner, files(1), {}, None, settings=settings)
        with pytest.raises(RuntimeError, match="commit the items first"):
            publish_then_mark(s, lambda ids, stage: published.append(ids), ["x"])
        with pytest.raises(RuntimeError, match="already open"):
            with unit_of_work(s):
                pass
    assert published == [] and storage.list("") == []


# --- publishing -----------------------------------------------------------------------------


def test_publish_then_mark(sessions, storage, owner, settings):
    _, (a, b) = make_job(sessions, storage, owner, settings, n=2)
    calls = []

    def broker_down(ids, stage):
        calls.append((list(ids), stage))
        raise ConnectionError("broker down")

    with sessions() as s:
        with pytest.raises(ConnectionError):
            publish_then_mark(s, broker_down, [a, b])
        assert calls == [([a, b], "detect")]
        with unit_of_work(s):
            assert [s.get(Item, i).enqueued_at for i in (a, b)] == [None, None]  # not marked
        assert publish_then_mark(s, lambda ids, stage: calls.append((ids, stage)), [b], "parse") == 1
        assert calls[-1] == ([b], "parse")
    with sessions() as s:
        assert s.get(Item, a).enqueued_at is None and s.get(Item, b).enqueued_at is not None


# --- running stages -------------------------------------------------------------------------


def test_lifecycle_to_success(sessions, scope, storage, owner, settings):
    job_id, (item_id,) = make_job(sessions, storage, owner, settings, n=1)
    with scope() as s:
        attempt = begin_stage(s, item_id, "detect", "worker-a", settings=settings)
        job = s.get(Job, job_id)
        assert job.status == "running" and job.started_at is not None
        faces = [{"box": [1, 2, 30, 40], "landmarks": [[5, 6]] * 5, "score": 0.99}]
        record_faces(s, item_id, faces, width=640, height=480)
        record_faces(s, item_id, faces * 2, width=640, height=480)  # detect ran again
        assert finish_stage(s, attempt.id, timings={"detect": 0.25})
    with scope() as s:
        for stage in STAGES[1:]:
            a = begin_stage(s, item_id, stage, "worker-a", settings=settings)
            last = stage == STAGES[-1]
            assert finish_stage(s, a, timings={stage: 1.5},
                                output_key=f"jobs/{job_id}/items/{item_id}/result.png" if last else None,
                                face_count=2 if last else None)
        finalize_id = a.id
        assert s.get(Item, item_id).status == "succeeded"
    with sessions() as s:
        item = s.get(Item, item_id)
        assert (item.width, item.height, item.face_count) == (640, 480, 2)
        assert item.timings == {"detect": 0.25, "parse": 1.5, "stylize": 1.5, "finalize": 1.5}
        assert item.stage == "finalize" and item.finished_at is not None
        assert s.scalar(sa.select(sa.func.count()).where(FaceRow.item_id == item_id)) == 2
        attempts = s.scalars(
            sa.select(StageAttempt).where(StageAttempt.item_id == item_id).order_by(StageAttempt.id)
        ).all()
        assert [(a.stage, a.attempt, a.outcome, a.worker) for a in attempts] == [
            (st, 1, "succeeded", "worker-a") for st in STAGES
        ]
        assert all(a.finished_at >= a.started_at for a in attempts)
        job = s.get(Job, job_id)
        assert (job.status, job.succeeded, job.failed, job.total) == ("succeeded", 1, 0, 1)
        assert job.finished_at is not None and job.error is None
        finished_at, updated_at = job.finished_at, job.updated_at

    # Everything again (a redelivered finalize, a late refresh, a stale task): no effect.
    assert not complete(sessions, finalize_id, "jobs/other.png", face_count=9)
    with scope() as s:
        refresh_job(s, job_id)
        assert begin_stage(s, item_id, "finalize", "w", settings=settings) is None
    with sessions() as s:
        item, job = s.get(Item, item_id), s.get(Job, job_id)
        assert item.output_key.endswith("result.png") and item.face_count == 2
        assert (job.finished_at, job.updated_at) == (finished_at, updated_at)


def test_attempt_cap_fails_the_item_with_a_reason(sessions, scope, storage, owner, settings):
    job_id, (dies, errs) = make_job(sessions, storage, owner, settings, n=2)
    with scope() as s:
        for item_id in (dies, errs):
            for stage in ("detect", "parse"):
                a = begin_stage(s, item_id, stage, "w", settings=settings)
                assert finish_stage(s, a)
        # The worker dies at stylize three times (never ends its attempts).
        for n in (1, 2, 3):
            a = begin_stage(s, dies, "stylize", f"w{n}", settings=settings)
            assert a.attempt == n and s.get(Item, dies).attempts == n
        assert begin_stage(s, dies, "stylize", "w4", settings=settings) is None
        # The other item's stage raises each time.
        for n in (1, 2, 3):
            a = begin_stage(s, errs, "stylize", "w", settings=settings)
            end_stage(s, a, "retry", error=f"CUDA out of memory ({n})")
        assert begin_stage(s, errs, "stylize", "w", settings=settings) is None
    with sessions() as s:
        item = s.get(Item, dies)
        assert item.status == "failed"
        assert item.error == "gave up after 3 attempts at stage stylize (the worker died each time)"
        item = s.get(Item, errs)
        assert item.status == "failed"
        assert item.error.startswith("gave up after 3 attempts at stage stylize; last error: CUDA")
        assert "(3)" in item.error
        job = s.get(Job, job_id)
        assert (job.status, job.failed) == ("failed", 2)
        assert "2 of 2 images failed" in job.error
        # Only the attempts that began were recorded.
        n = s.scalar(sa.select(sa.func.count()).where(
            StageAttempt.item_id == dies, StageAttempt.stage == "stylize"))
        assert n == 3


def test_attempts_count_per_stage(sessions, scope, storage, owner, settings):
    _, (item_id,) = make_job(sessions, storage, owner, settings, n=1)
    with scope() as s:
        assert begin_stage(s, item_id, "detect", "w", settings=settings).attempt == 1
        assert begin_stage(s, item_id, "detect", "w", settings=settings).attempt == 2
        assert begin_stage(s, item_id, "parse", "w", settings=settings).attempt == 1
        assert s.get(Item, item_id).attempts == 1


def test_stale_and_out_of_order_tasks_are_ignored(sessions, scope, storage, owner, settings):
    _, (item_id,) = make_job(sessions, storage, owner, settings, n=1)
    with scope() as s:
        assert begin_stage(s, item_id, "parse", "w", settings=settings) is None
        begin_stage(s, item_id, "detect", "w", settings=settings)
        begin_stage(s, item_id, "parse", "w", settings=settings)
        # A duplicate detect delivered late does not move the item back.
        assert begin_stage(s, item_id, "detect", "w", settings=settings) is None
        item = s.get(Item, item_id)
        assert (item.status, item.stage, item.attempts) == ("parsing", "parse", 1)
        assert begin_stage(s, "0" * 32, "detect", "w", settings=settings) is None
        with pytest.raises(ValueError, match="unknown stage"):
            begin_stage(s, item_id, "paint", "w", settings=settings)


def test_an_item_succeeds_only_from_finalizing(sessions, scope, storage, owner, settings):
    _, (item_id,) = make_job(sessions, storage, owner, settings, n=1)
    with scope() as s:
        detect_id = begin_stage(s, item_id, "detect", "w", settings=settings).id
    with pytest.raises(InvalidTransition, match="'detecting' to 'succeeded'"):
        complete(sessions, detect_id, "x.png")
    with sessions() as s:  # the failed unit of work left nothing behind
        assert s.get(Item, item_id).status == "detecting"
        assert s.get(StageAttempt, detect_id).finished_at is None


def test_end_stage_first_report_wins(sessions, scope, storage, owner, settings):
    _, (item_id,) = make_job(sessions, storage, owner, settings, n=1)
    with scope() as s:
        a = begin_stage(s, item_id, "detect", "w", settings=settings)
        end_stage(s, a.id, "failed", error="boom", timings={"detect": 1.0})
        end_stage(s, a.id, "succeeded", timings={"detect": 9.0})
        row = s.get(StageAttempt, a.id)
        assert (row.outcome, row.error) == ("failed", "boom")
        assert s.get(Item, item_id).timings == {"detect": 1.0}
        with pytest.raises(ValueError, match="unknown outcome"):
            end_stage(s, a.id, "exploded")


def test_fail_item_and_partial_success(sessions, scope, storage, owner, settings):
    job_id, (ok, bad) = make_job(sessions, storage, owner, settings, n=2)
    ok_finalize = run_to_finalizing(sessions, ok, settings)
    with scope() as s:
        begin_stage(s, bad, "detect", "w", settings=settings)
        fail_item(s, bad, "detect: not a decodable image")
        fail_item(s, bad, "a second reason is ignored")
        assert s.get(Job, job_id).status == "running"
    assert complete(sessions, ok_finalize, face_count=1)
    with sessions() as s:
        assert s.get(Item, bad).error == "detect: not a decodable image"
        job = s.get(Job, job_id)
        assert (job.status, job.succeeded, job.failed) == ("partially_succeeded", 1, 1)
        assert job.error == "1 of 2 images failed; see the job's items for the reasons"


def test_cancel_job(sessions, scope, storage, owner, settings):
    job_id, (done, running, queued) = make_job(sessions, storage, owner, settings, n=3)
    assert complete(sessions, run_to_finalizing(sessions, done, settings), face_count=1)
    with scope() as s:
        running_detect = begin_stage(s, running, "detect", "w", settings=settings).id
    with pytest.raises(JobNotFound):
        with scope() as s:
            cancel_job(s, job_id, owner + "-intruder")
    with scope() as s:
        assert s.get(Job, job_id).status == "running"
        job = cancel_job(s, job_id, owner)
        assert (job.status, job.succeeded, job.canceled, job.total) == ("canceled", 1, 2, 3)
        assert job.finished_at is not None
        first_finish = job.finished_at
        cancel_job(s, job_id, owner)  # again: nothing changes
    with scope() as s:
        assert [s.get(Item, i).status for i in (done, running, queued)] == [
            "succeeded", "canceled", "canceled"]
        # The worker still running detect finds the item canceled and stops.
        assert not finish_stage(s, running_detect)
        assert begin_stage(s, running, "parse", "w", settings=settings) is None
        assert fail_item(s, queued, "late failure").status == "canceled"
        job = s.get(Job, job_id)
        assert (job.status, job.canceled, job.finished_at) == ("canceled", 2, first_finish)


def test_cancel_before_anything_started(sessions, scope, storage, owner, settings):
    job_id, _ = make_job(sessions, storage, owner, settings, n=2)
    with scope() as s:
        job = cancel_job(s, job_id, owner)
        assert (job.status, job.canceled, job.started_at) == ("canceled", 2, None)


def test_concurrent_item_updates_keep_counts_exact(sessions, storage, owner, settings):
    job_id, item_ids = make_job(sessions, storage, owner, settings, n=8)
    finalize = {item_id: run_to_finalizing(sessions, item_id, settings) for item_id in item_ids}
    errors = []

    def finish(i, item_id):
        try:
            if i % 2:
                with session_scope(sessions) as s:
                    fail_item(s, item_id, "boom")
            else:
                assert complete(sessions, finalize[item_id])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=finish, args=a) for a in enumerate(item_ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sessions() as s:
        job = s.get(Job, job_id)
        assert (job.succeeded, job.failed, job.status) == (4, 4, "partially_succeeded")


# --- reading --------------------------------------------------------------------------------


def test_owner_isolation(sessions, scope, storage, owner, settings):
    job_id, (item_id,) = make_job(sessions, storage, owner, settings, n=1)
    other = owner + "-other"
    with scope() as s:
        assert get_job(s, job_id, owner).id == job_id
        assert [i.id for i in list_items(s, job_id, owner)] == [item_id]
        assert get_item(s, job_id, item_id, owner).id == item_id
        for lookup in (lambda: get_job(s, job_id, other), lambda: list_items(s, job_id, other),
                       lambda: get_item(s, job_id, item_id, other),
                       lambda: get_result_key(s, job_id, item_id, other)):
            with pytest.raises(JobNotFound, match=f"no job {job_id}"):
                lookup()
        with pytest.raises(ItemNotFound, match=f"no item {'0' * 32} in job {job_id}"):
            get_item(s, job_id, "0" * 32, owner)
        assert list_jobs(s, other) == ([], None)


def test_result_key_only_for_a_succeeded_item(sessions, scope, storage, owner, settings):
    job_id, (item_id,) = make_job(sessions, storage, owner, settings, n=1)
    attempt_id = run_to_finalizing(sessions, item_id, settings)
    with scope() as s:
        with pytest.raises(NoResultYet, match="status finalizing"):
            get_result_key(s, job_id, item_id, owner)
    assert complete(sessions, attempt_id, f"jobs/{job_id}/items/{item_id}/result.png")
    with scope() as s:
        assert get_result_key(s, job_id, item_id, owner).endswith("/result.png")


def test_cursor_pagination(sessions, scope, storage, owner, settings):
    ids = [make_job(sessions, storage, owner, settings, n=1)[0] for _ in range(7)]
    with scope() as s:
        # Three jobs share one timestamp: the id breaks the tie without skipping any.
        same = s.get(Job, ids[0]).created_at
        s.execute(sa.update(Job).where(Job.id.in_(ids[:3])).values(created_at=same))
    seen, cursor, pages = [], None, 0
    with scope() as s:
        while True:
            jobs, cursor = list_jobs(s, owner, cursor, limit=3)
            seen += jobs
            pages += 1
            if cursor is None:
                break
            assert isinstance(cursor, str)
    assert pages == 3 and [len(p) for p in (seen[:3], seen[3:6], seen[6:])] == [3, 3, 1]
    assert sorted(j.id for j in seen) == sorted(ids)
    keys = [(j.created_at, j.id) for j in seen]
    assert keys == sorted(keys, reverse=True)  # newest first
    with scope() as s:
        with pytest.raises(InvalidCursor, match="invalid cursor"):
            list_jobs(s, owner, "not-a-cursor", 3)
        with pytest.raises(ValueError):
            list_jobs(s, owner, "W10", 3)


def test_stuck_items_for_the_sweeper(sessions, scope, storage, owner, settings):
    job_id, (unpublished, published, stalled, fresh, done) = make_job(
        sessions, storage, owner, settings, n=5)
    with scope() as s:
        mark_enqueued(s, [published, stalled, fresh, done])
        begin_stage(s, stalled, "detect", "w", settings=settings)
        begin_stage(s, stalled, "parse", "w", settings=settings)
        begin_stage(s, stalled, "stylize", "w", settings=settings)
        fail_item(s, done, "x")
        long_ago = db.utcnow() - timedelta(hours=1)
        a_minute_ago = db.utcnow() - timedelta(seconds=60)
        s.execute(sa.update(Item).where(Item.id.in_([stalled, done])).values(updated_at=long_ago))
        s.execute(sa.update(Item).where(Item.id.in_([unpublished, published]))
                  .values(updated_at=a_minute_ago, created_at=a_minute_ago))
    with scope() as s:
        stuck = stuck_items(s, older_than_s=600, unpublished_after_s=30)
    mine = {i for i in stuck if i.item_id in {unpublished, published, stalled, fresh, done}}
    assert mine == {(unpublished, "detect"), (stalled, "stylize")}
    with scope() as s:
        assert mark_enqueued(s, [unpublished, stalled, done]) == 2
        stuck = stuck_items(s, older_than_s=600, unpublished_after_s=30)
    assert not {i.item_id for i in stuck} & {unpublished, stalled}
    with scope() as s:  # published but lost (broker restarted): found after the timeout
        stuck = stuck_items(s, older_than_s=30, unpublished_after_s=30)
    assert (published, "detect") in stuck


# --- API keys -------------------------------------------------------------------------------


def test_api_keys_are_stored_hashed(scope, owner, db_url):
    with scope() as s:
        key = create_api_key(s, owner)
        other = create_api_key(s, owner)
    assert key.startswith("f2p_") and len(key) > 40 and key != other
    with scope() as s:
        assert owner_for_key(s, key) == owner
        assert owner_for_key(s, key + "x") is None
        assert owner_for_key(s, "") is None
        assert owner_for_key(s, None) is None
        # The plaintext appears nowhere in the database, in any table.
        for table in db.Base.metadata.sorted_tables:
            for row in s.execute(sa.select(table)):
                assert key not in repr(tuple(row)) and key not in str(tuple(row))
        stored = s.scalar(sa.select(db.ApiKey.key_hash).where(db.ApiKey.owner == owner).limit(1))
        assert len(stored) == 64
        assert revoke_api_key(s, key)
        assert not revoke_api_key(s, key)
        assert owner_for_key(s, key) is None
        assert owner_for_key(s, other) == owner
    if db_url.startswith("sqlite"):
        path = db_url.removeprefix("sqlite:///")
        for suffix in ("", "-wal"):
            try:
                raw = open(path + suffix, "rb").read()
            except FileNotFoundError:
                continue
            assert key.encode() not in raw
