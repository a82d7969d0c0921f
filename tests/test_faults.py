"""Fault injection over real PostgreSQL, Redis and S3 servers and real worker processes.

One stack (the API and two Celery workers, each one pool process) runs every fault. Faults are
injected deterministically: the workers run with FACE2PAINT_FAULTS (face2paint/worker/faults.py)
so that an item whose file name says so pauses in the middle of a stage, where the test kills
it, or kills its worker every time (a poison input); the API exits between the commit and the
publish for a file named crash-after-commit. Servers are stopped and started for real.

After each fault: every item reaches exactly one terminal state, every succeeded item has
exactly one result object in S3 (and nothing else is written under the job), the stage_attempts
rows show the attempt that died, and the figures (submitted, succeeded, failed, lost,
duplicated, stuck, recovery time) are printed in a summary at the end of the module.

The stages use the weight-free classical cartoon style on a 512 px photo, so each takes well
under a second; the stage timeout is short (which also shortens the broker's visibility
timeout and the sweeper's stall clock), and the sweeper runs every second.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from face2paint.client import ConnectionFailed
from face2paint.cli.client import Client
from face2paint.cli.stack import ProcessStack
from face2paint.jobs.db import Item, Job, StageAttempt, make_engine, session_factory
from face2paint.jobs.keys import item_prefix, job_prefix, result_key
from face2paint.jobs.states import STAGES, TERMINAL_ITEM_STATES
from face2paint.worker.app import UNACKED_MUTEX_EXPIRE_S
from face2paint.worker.faults import marker_path
from tests.helpers import astronaut_path
from tests.service_stack import fresh_database, redis_db, running, stack_sessions

pytestmark = [pytest.mark.faults, pytest.mark.integration]

STAGE_TIMEOUT_S = 10  # hard limit per stage; Redis visibility timeout = 3x; sweeper stall clock
MAX_ATTEMPTS = 3
STYLE = {"style": "classical-cartoon"}
# A file name containing MATCH triggers the rule (see face2paint/worker/faults.py).
FAULT_RULES = ",".join(
    [f"pause:{stage}:pause-{stage}" for stage in STAGES]
    + ["poison:stylize:poison", "exit:submit:crash-after-commit"]
)
JOB_TIMEOUT_S = 120
SUMMARY: list[Figures] = []
# GPU batching on (worker/batching.py): the stylize workers gather waiting photos. The wait is
# long, so the photos of a test meet in one batch. tests/test_faults_batched.py runs the key
# faults of this module on a stack with these settings.
BATCHING = {"FACE2PAINT_STYLIZE_BATCH_MAX": "4", "FACE2PAINT_STYLIZE_BATCH_WAIT_MS": "1000"}


# --- the stack ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(pg_server, redis_server, s3_server, tmp_path_factory):
    yield from fault_stack(pg_server, redis_server, s3_server, tmp_path_factory, {})


def fault_stack(pg_server, redis_server, s3_server, tmp_path_factory, extra_env: dict):
    for server in (pg_server, redis_server, s3_server):
        if not server.managed:
            pytest.skip(f"fault tests stop and start the {server.name} server; unset "
                        f"{server.env_var} so the tests run their own")
    home = tmp_path_factory.mktemp("faults")
    faults_dir = home / "faults"
    no_weights = home / "no-weights"  # the weight-free defaults, fast and the same everywhere
    faults_dir.mkdir()
    no_weights.mkdir()
    env = {
        "FACE2PAINT_DATABASE_URL": fresh_database(pg_server.url),
        "FACE2PAINT_BROKER_URL": redis_db(redis_server.url),
        **s3_server.env(prefix=f"faults-{uuid.uuid4().hex[:8]}"),
        "FACE2PAINT_MODEL_DIR": str(no_weights),
        "FACE2PAINT_STAGE_TIMEOUT_S": str(STAGE_TIMEOUT_S),
        "FACE2PAINT_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "FACE2PAINT_SWEEP_INTERVAL_S": "1",
        "FACE2PAINT_SWEEP_UNPUBLISHED_AFTER_S": "2",
        "FACE2PAINT_FAULTS": FAULT_RULES,
        "FACE2PAINT_FAULTS_DIR": str(faults_dir),
        **extra_env,
    }
    st = ProcessStack(env, home, workers=2)
    st.faults_dir = faults_dir
    with running(st):
        yield st


@pytest.fixture(scope="module")
def db(stack):
    yield from stack_sessions(stack)


@pytest.fixture(scope="module")
def storage(stack, s3_server):
    return s3_server.storage(stack.base_env["FACE2PAINT_STORAGE_URL"].split("/", 3)[3])


@pytest.fixture
def client(stack):
    c = Client(stack.api_url, stack.api_key)
    yield c
    c.close()


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    if not SUMMARY:
        return
    lines = ["", "fault-injection figures (lost, duplicated and stuck must be 0):",
             Figures.header()] + [f.row() for f in SUMMARY]
    # Past output capturing, so the figures show in every run, not only with -s.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n".join(lines), flush=True)


@pytest.fixture(autouse=True)
def after_each(stack, pg_server, redis_server, s3_server):
    yield
    # Whatever a failed test left behind must not hold up the next one: servers up, paused
    # stages released, every worker running. The logs show up only when the test failed.
    for server in (pg_server, redis_server, s3_server):
        if not server.running:
            server.start()
    tidy_up(stack)


def tidy_up(stack) -> None:
    """Paused stages released, every worker running, each process's log tail printed."""
    for paused in stack.faults_dir.glob("paused.*"):
        (stack.faults_dir / paused.name.replace("paused.", "release.", 1)).touch()
    for i in range(stack.n_workers):
        if stack.procs[f"worker{i}"].poll() is not None:
            stack.start_worker(i)
    for name in sorted(stack.procs):
        print(f"--- {name} log (tail) ---\n{stack.log(name)[-3000:]}")


# --- helpers --------------------------------------------------------------------------------


@dataclass
class Figures:
    fault: str
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    stuck: int = 0
    recovery_s: float | None = None
    note: str = ""

    @staticmethod
    def header() -> str:
        return (f"{'fault':44} {'subm':>4} {'succ':>4} {'fail':>4} {'lost':>4} {'dup':>4} "
                f"{'stuck':>5} {'recovery':>9}  note")

    def row(self) -> str:
        rec = "-" if self.recovery_s is None else f"{self.recovery_s:.1f}s"
        return (f"{self.fault:44} {self.submitted:4d} {self.succeeded:4d} {self.failed:4d} "
                f"{self.lost:4d} {self.duplicated:4d} {self.stuck:5d} {rec:>9}  {self.note}")


def utcnow() -> datetime:
    return datetime.now(UTC)


def photos(tmp_path: Path, names: list[str]) -> list[Path]:
    src = astronaut_path()
    paths = []
    for name in names:
        shutil.copy(src, tmp_path / name)
        paths.append(tmp_path / name)
    return paths


def submit(client, tmp_path, names) -> tuple[str, dict[str, str]]:
    job = client.submit(photos(tmp_path, names), STYLE)
    return job["id"], {i["filename"]: i["id"] for i in client.items(job["id"])}


def wait_job(db, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> Job | None:
    """The job once terminal (None at the deadline); database errors mean 'not yet' (the
    database may be the thing that is down)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with db() as s:
                job = s.get(Job, job_id)
                if job is not None and job.finished_at is not None:
                    return job
        except SQLAlchemyError:
            pass
        time.sleep(0.2)
    return None


def wait_paused(stack, stage: str, item_id: str, timeout_s: float = 60) -> int:
    """The pid of the pool process paused in `stage` for the item."""
    path = marker_path(stack.faults_dir, "paused", stage, item_id)
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"item {item_id} never paused in {stage}"
        time.sleep(0.05)
    return int(path.read_text())


def release(stack, stage: str, item_id: str) -> None:
    marker_path(stack.faults_dir, "release", stage, item_id).touch()


def worker_of(stack, pid: int) -> str:
    """The name of the worker whose pool process `pid` is (checked, so we never kill a stranger)."""
    parent = psutil.Process(pid).ppid()
    for name, proc in stack.procs.items():
        if name.startswith("worker") and proc.pid == parent:
            return name
    raise AssertionError(f"pid {pid} is not a pool process of any worker of this stack")


def kill_pool_child(stack, pid: int) -> tuple[str, datetime]:
    name = worker_of(stack, pid)
    os.kill(pid, signal.SIGKILL)
    return name, utcnow()


def kill_whole_worker(stack, name: str) -> datetime:
    proc = stack.procs[name]
    os.killpg(proc.pid, signal.SIGKILL)  # the worker's own process group: parent and pool
    proc.wait(30)
    return utcnow()


def restart_api(stack) -> None:
    api = stack.procs.get("api")
    if api is not None and api.poll() is None:
        api.terminate()
        api.wait(30)
    stack.start_api()


def attempts_of(db, item_id: str, stage: str | None = None) -> list[StageAttempt]:
    with db() as s:
        q = select(StageAttempt).where(StageAttempt.item_id == item_id)
        if stage:
            q = q.where(StageAttempt.stage == stage)
        return list(s.scalars(q.order_by(StageAttempt.id)))


def item_row(db, item_id: str) -> Item:
    with db() as s:
        return s.get(Item, item_id)


def audit(db, storage, job_id: str, fault: str) -> tuple[Figures, dict[str, Item]]:
    """Count what the fault did to the job; check results and the job's counts."""
    with db() as s:
        job = s.get(Job, job_id)
        items = {i.filename: i for i in s.scalars(select(Item).where(Item.job_id == job_id))}
        finals = list(s.scalars(
            select(StageAttempt).join(Item).where(
                Item.job_id == job_id, StageAttempt.stage == "finalize",
                StageAttempt.outcome == "succeeded")))
    keys = storage.list(job_prefix(job_id))
    fig = Figures(fault, submitted=len(items))
    for item in items.values():
        prefix = item_prefix(job_id, item.id)
        mine = [k[len(prefix):] for k in keys if k.startswith(prefix)]
        results = [k for k in mine if "/" not in k and k.startswith("result")]
        # Anything but the input, the stages' own artifacts and the one result is a stray
        # write (a result under another key, a duplicate).
        stray = [k for k in mine if not (k.startswith("input.") or k == "result.png"
                                         or k.split("/", 1)[0] in STAGES)]
        n_final = sum(1 for a in finals if a.item_id == item.id)
        if item.status == "succeeded":
            fig.succeeded += 1
            assert item.output_key == result_key(job_id, item.id), item.output_key
            if not results:
                fig.lost += 1  # succeeded, but its result is gone
        elif item.status == "failed":
            fig.failed += 1
            assert item.error, f"{item.filename} failed without a reason"
            assert not results, f"{item.filename} failed but has a result: {results}"
        elif item.status == "queued":
            fig.lost += 1  # never picked up again: its task was lost
        elif item.status not in TERMINAL_ITEM_STATES:
            fig.stuck += 1
        if len(results) > 1 or n_final > 1 or stray:
            fig.duplicated += 1
    if job is not None and job.finished_at is not None:
        assert (job.succeeded, job.failed, job.total) == (fig.succeeded, fig.failed, len(items))
    return fig, items


def report(fig: Figures) -> Figures:
    SUMMARY.append(fig)
    print(Figures.header())
    print(fig.row())
    return fig


def assert_clean(fig: Figures) -> None:
    assert (fig.lost, fig.duplicated, fig.stuck) == (0, 0, 0), fig.row()


def assert_recovered(job: Job | None, fig: Figures) -> None:
    """Report the figures; the job succeeded with nothing lost, duplicated or stuck."""
    report(fig)
    assert job is not None and job.status == "succeeded", (job and job.status)
    assert_clean(fig)


def assert_swept(stack, db, storage, job_id: str, fault: str, back_at: datetime) -> None:
    """A job whose items were committed but never published: it succeeds once the sweeper has
    published every item (it logs the ids it sends), timed from `back_at`."""
    job = wait_job(db, job_id)
    fig, items = audit(db, storage, job_id, fault)
    if job is not None:
        fig.recovery_s = (job.finished_at - back_at).total_seconds()
    swept = [i for i in items.values() if i.id in stack.log("api")]
    fig.note = f"sweeper published {len(swept)} of {len(items)} items"
    assert_recovered(job, fig)
    assert len(swept) == len(items)
    assert_workers_alive(stack)


def assert_workers_alive(stack) -> None:
    for i in range(stack.n_workers):
        proc = stack.procs[f"worker{i}"]
        assert proc.poll() is None, f"worker{i} exited ({proc.returncode}); see its log"


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_pool_process_killed_mid_stage(stack, client, db, storage, tmp_path, stage):
    """SIGKILL the pool process running `stage`: the worker sees it lost, rejects the message,
    Redis puts it back at once (acks_late + reject_on_worker_lost) and the stage runs again
    as attempt 2, writing the same keys (no second result after a kill mid-finalize)."""
    victim = f"pause-{stage}.png"
    job_id, ids = submit(client, tmp_path, [victim, "sibling-1.png", "sibling-2.png"])
    pid = wait_paused(stack, stage, ids[victim])
    worker, killed_at = kill_pool_child(stack, pid)
    job = wait_job(db, job_id)
    fig, items = audit(db, storage, job_id, f"pool process SIGKILL mid-{stage}")
    rows = attempts_of(db, ids[victim], stage)
    item = items[victim]
    if len(rows) > 1:
        fig.recovery_s = (item.finished_at - killed_at).total_seconds() if item.finished_at else None
        fig.note = (f"redelivered by the broker after "
                    f"{(rows[1].started_at - killed_at).total_seconds():.1f}s")
    assert_recovered(job, fig)
    # The killed attempt stays open (the worker died in it); the redelivery is attempt 2.
    assert [(r.attempt, r.outcome) for r in rows] == [(1, None), (2, "succeeded")], rows
    assert rows[0].finished_at is None and rows[0].worker.startswith(worker)
    for other in STAGES:
        if other != stage:
            assert [r.outcome for r in attempts_of(db, ids[victim], other)] == ["succeeded"]
    assert_workers_alive(stack)


def test_whole_worker_killed_mid_stage(stack, client, db, storage, tmp_path):
    """SIGKILL a worker's parent and pool process together while a stage runs, and restart it
    as a supervisor would. Nobody rejects the message, so it sits in Redis's unacked set until
    the visibility timeout (3 x stage timeout); the other worker then returns it to its queue.
    The sweeper must leave it alone meanwhile (the task is still in the broker)."""
    victim = "pause-stylize-whole-worker.png"
    job_id, ids = submit(client, tmp_path, [victim, "sibling-1.png", "sibling-2.png"])
    pid = wait_paused(stack, "stylize", ids[victim])
    worker = worker_of(stack, pid)
    killed_at = kill_whole_worker(stack, worker)
    stack.start_worker(int(worker.removeprefix("worker")))
    # Visibility timeout + kombu's restore interval, + the restore lock's expiry in case the
    # killed worker held it.
    bound_s = 3 * STAGE_TIMEOUT_S + 10 + UNACKED_MUTEX_EXPIRE_S
    job = wait_job(db, job_id, timeout_s=bound_s + JOB_TIMEOUT_S)
    fig, items = audit(db, storage, job_id, "whole worker SIGKILL mid-stylize")
    rows = attempts_of(db, ids[victim], "stylize")
    item = items[victim]
    swept = ids[victim] in stack.log("api")  # the sweeper logs the ids it sends again
    if len(rows) > 1:
        redelivered_s = (rows[1].started_at - killed_at).total_seconds()
        fig.recovery_s = (item.finished_at - killed_at).total_seconds() if item.finished_at else None
        fig.note = (f"{'sweeper re-enqueue' if swept else 'visibility-timeout redelivery'} "
                    f"after {redelivered_s:.1f}s (bound {bound_s}s)")
    assert_recovered(job, fig)
    assert [(r.attempt, r.outcome) for r in rows] == [(1, None), (2, "succeeded")], rows
    assert not swept, "the sweeper sent an item whose task was still in the broker"
    # Slack for a loaded machine on top of the bound.
    assert redelivered_s < bound_s + 30, f"redelivered after {redelivered_s:.0f}s"
    assert_workers_alive(stack)


def test_poison_input_stops_at_the_attempt_cap(stack, client, db, storage, tmp_path):
    """An input that kills its pool process every time it is stylized: redelivered until the
    attempt cap, then failed with a readable reason; its siblings succeed."""
    names = ["poison.png", "sibling-1.png", "sibling-2.png"]
    started = utcnow()
    job_id, ids = submit(client, tmp_path, names)
    job = wait_job(db, job_id)
    fig, items = audit(db, storage, job_id, "poison input (kills its worker at stylize)")
    poison = items["poison.png"]
    rows = attempts_of(db, ids["poison.png"], "stylize")
    if poison.finished_at:
        fig.recovery_s = (poison.finished_at - started).total_seconds()
    fig.note = f"failed after {len(rows)} attempts (time from submit to failure)"
    report(fig)
    assert job is not None and job.status == "partially_succeeded", (job and job.status)
    assert_clean(fig)
    assert (poison.status, poison.stage, poison.attempts) == ("failed", "stylize", MAX_ATTEMPTS)
    assert poison.error == (f"gave up after {MAX_ATTEMPTS} attempts at stage stylize "
                            "(the worker died each time)")
    assert [(r.attempt, r.finished_at) for r in rows] == [(n, None) for n in range(1, MAX_ATTEMPTS + 1)]
    assert {items[n].status for n in names[1:]} == {"succeeded"}
    assert client.job(job_id)["status"] == "partially_succeeded"
    assert_workers_alive(stack)


def _hold_both_workers(stack, client, tmp_path, names):
    """Submit, and wait until both workers are paused in detect on the first two items, so the
    rest are queued in Redis and two are running."""
    job_id, ids = submit(client, tmp_path, names)
    for name in names[:2]:
        wait_paused(stack, "detect", ids[name])
    return job_id, ids


HELD = ["pause-detect-a.png", "pause-detect-b.png"]
QUEUED = [f"queued-{i}.png" for i in range(4)]


def _release_held(stack, ids):
    for name in HELD:
        release(stack, "detect", ids[name])


def test_redis_restart_loses_queued_and_running_tasks(stack, client, db, storage, tmp_path,
                                                     redis_server):
    """Redis restarts without persistence while two items run and four wait in the queue: every
    message is lost, queued and unacked. The running stages finish and publish their next stage
    to the new Redis; the sweeper finds the queued items' tasks missing from the broker after
    the stall clock (the stage timeout) and sends them again."""
    job_id, ids = _hold_both_workers(stack, client, tmp_path, HELD + QUEUED)
    redis_server.restart()
    back_at = utcnow()
    _release_held(stack, ids)
    job = wait_job(db, job_id, timeout_s=STAGE_TIMEOUT_S + JOB_TIMEOUT_S)
    fig, _ = audit(db, storage, job_id, "Redis restart (2 running, 4 queued)")
    if job is not None:
        fig.recovery_s = (job.finished_at - back_at).total_seconds()
    resent = [n for n in QUEUED if ids[n] in stack.log("api")]
    fig.note = f"sweeper re-enqueued {len(resent)} of {len(QUEUED)} queued items"
    assert_recovered(job, fig)
    assert len(resent) == len(QUEUED)
    # Recovery is bounded by the stall clock plus a sweep, then the work itself.
    assert fig.recovery_s < STAGE_TIMEOUT_S + 60
    assert_workers_alive(stack)


def test_submit_while_redis_is_down(stack, client, db, storage, tmp_path, redis_server):
    """A job submitted while the broker is down is accepted (it is safely committed) instead of
    failing with 500 after the commit; the sweeper publishes it once Redis is back."""
    redis_server.stop()
    try:
        job = client.submit(photos(tmp_path, ["sibling-1.png", "sibling-2.png"]), STYLE)
    finally:
        redis_server.start()
    back_at = utcnow()
    assert job["status"] == "queued"
    assert_swept(stack, db, storage, job["id"], "submit while Redis is down", back_at)


def test_broker_connections_dropped_while_a_stage_runs(stack, client, db, storage, tmp_path,
                                                       redis_server):
    """Every Redis client connection is dropped (CLIENT KILL; Redis itself stays up) while a
    stage runs. The worker's consumer reconnects and puts its unacknowledged message back in
    the queue although its pool process is still running it, so the other worker runs the same
    stage at the same time. Exactly one of the two copies may go on: the newer one publishes the
    next stage, the older one ends as a "duplicate", and the item gets one result."""
    import redis

    victim = "pause-stylize-blip.png"
    job_id, ids = submit(client, tmp_path, [victim, "sibling-1.png"])
    wait_paused(stack, "stylize", ids[victim])
    dropped_at = utcnow()
    conn = redis.Redis.from_url(redis_server.url)
    try:
        for kind in ("pubsub", "normal"):  # a worker notices the pub/sub one at once
            conn.client_kill_filter(_type=kind, skipme=True)
    finally:
        conn.close()
    # Release the first copy as soon as the second has begun (before the first one's time
    # limit): either may finish first, the newer one goes on either way.
    deadline = time.monotonic() + STAGE_TIMEOUT_S - 3
    while time.monotonic() < deadline and len(attempts_of(db, ids[victim], "stylize")) < 2:
        time.sleep(0.1)
    release(stack, "stylize", ids[victim])
    job = wait_job(db, job_id)
    # Until the released copy has recorded its end.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
            r.finished_at is None for r in attempts_of(db, ids[victim], "stylize")):
        time.sleep(0.2)
    fig, items = audit(db, storage, job_id, "Redis connections dropped mid-stylize")
    rows = attempts_of(db, ids[victim], "stylize")
    if job is not None:
        fig.recovery_s = (items[victim].finished_at - dropped_at).total_seconds()
    fig.note = f"stylize ran {len(rows)}x: {', '.join(str(r.outcome) for r in rows)}"
    assert_recovered(job, fig)
    # Which consumer gets the restored message is up to Redis: the other worker (then both
    # copies run and one ends as a duplicate), or the same worker, which can only run it
    # after the first copy moved the item on (then begin_stage ignores it as stale).
    assert sorted(r.outcome for r in rows) in (["succeeded"], ["duplicate", "succeeded"]), rows
    assert [r.outcome for r in attempts_of(db, ids[victim], "finalize")] == ["succeeded"]
    assert_workers_alive(stack)


def test_a_stale_copy_of_an_earlier_stage_leaves_the_running_stage_alone(stack, client, db,
                                                                         storage, tmp_path):
    """The race behind the test above, made certain: while finalize runs, a copy of the item's
    stylize message arrives (what a restored message is, or a sweep that raced the hand-off).
    The worker that gets it must drop it as stale, not resume at finalize and start a second
    finalize attempt (that would end the running one as a duplicate: wasted work)."""
    from face2paint.settings import Settings
    from face2paint.worker.app import enqueue_items, make_celery

    victim = "pause-finalize-stale.png"
    job_id, ids = submit(client, tmp_path, [victim, "sibling-1.png"])
    item_id = ids[victim]
    wait_paused(stack, "finalize", item_id)
    app = make_celery(Settings(broker_url=stack.base_env["FACE2PAINT_BROKER_URL"]))
    enqueue_items([item_id], "stylize", app=app)
    dropped = f"stage stylize for item {item_id} ignored"
    deadline = time.monotonic() + 30
    while (time.monotonic() < deadline and len(attempts_of(db, item_id, "finalize")) < 2
           and not any(dropped in stack.log(f"worker{i}") for i in range(stack.n_workers))):
        time.sleep(0.1)
    release(stack, "finalize", item_id)
    job = wait_job(db, job_id)
    fig, items = audit(db, storage, job_id, "stale stylize copy mid-finalize")
    rows = attempts_of(db, item_id, "finalize")
    fig.note = f"finalize ran {len(rows)}x: {', '.join(str(r.outcome) for r in rows)}"
    assert_recovered(job, fig)
    assert [r.outcome for r in rows] == ["succeeded"], rows
    assert [r.outcome for r in attempts_of(db, item_id, "stylize")] == ["succeeded"]
    assert_workers_alive(stack)


def test_sweeper_resends_only_items_whose_task_is_gone(pg_server, redis_server, s3_server):
    """The sweeper against a broker nobody consumes from (its own database and Redis db, so
    the stack's API sweeper does not see these items): an item stalled behind a backlog, whose
    task is still queued, is left alone; a never-published one is sent; after the broker loses
    everything, all are sent again, each from the stage it still needs."""
    import functools

    import redis
    from sqlalchemy import update

    from face2paint.api.sweeper import sweep_once
    from face2paint.jobs.create import create_job
    from face2paint.jobs.db import session_scope
    from face2paint.jobs.enqueue import publish_then_mark
    from face2paint.jobs.migrate import upgrade
    from face2paint.jobs.stages import begin_stage, finish_stage
    from face2paint.settings import Settings
    from face2paint.worker.app import enqueue_items, items_in_broker, make_celery

    url = fresh_database(pg_server.url)
    upgrade(url)
    settings = Settings(database_url=url, broker_url=redis_db(redis_server.url),
                        stage_timeout_s=STAGE_TIMEOUT_S)
    app = make_celery(settings)
    engine = make_engine(url)
    sessions = session_factory(engine)
    storage = s3_server.storage(f"faults-sweep-{uuid.uuid4().hex[:8]}")

    def stall_all():
        with session_scope(sessions) as s:
            s.execute(update(Item).values(updated_at=utcnow() - timedelta(hours=1)))

    try:
        with sessions() as s:
            job, _ = create_job(
                s, storage, "sweeper", [(n, "image/png", b"x") for n in ("a", "b", "c")],
                settings=settings)
            a, b, c = (i.id for i in sorted(job.items, key=lambda i: i.index))
            publish_then_mark(s, functools.partial(enqueue_items, app=app), [a, b])
        with session_scope(sessions) as s:
            # b finished detect; its parse task is what got lost later.
            finish_stage(s, begin_stage(s, b, "detect", "w", settings=settings).id)
        assert items_in_broker(app) == {a, b}
        stall_all()
        assert sweep_once(sessions, settings, app=app) == 1  # c only: never published
        assert items_in_broker(app) == {a, b, c}
        client = redis.Redis.from_url(settings.broker_url)
        try:
            client.flushdb()  # what a restart without persistence does
            stall_all()
            assert sweep_once(sessions, settings, app=app) == 3
            assert items_in_broker(app) == {a, b, c}
            # b's detect had finished: it is sent from parse, not run (and counted) again.
            assert (client.llen("detect"), client.llen("parse")) == (2, 1)
        finally:
            client.close()
    finally:
        engine.dispose()


def test_only_the_newest_of_concurrent_duplicate_attempts_goes_on(stack, db, storage):
    """The rule behind the test above, without its race: two copies of a stage run at once;
    whichever finishes first, only the newer one goes on, the older is a given-back duplicate."""
    from face2paint.jobs.create import create_job
    from face2paint.jobs.db import session_scope
    from face2paint.jobs.stages import begin_stage, finish_stage
    from face2paint.settings import Settings

    settings = Settings(max_attempts=MAX_ATTEMPTS)
    owner = "faults-domain"

    def begin(item_id, stage, worker):
        with session_scope(db) as s:
            return begin_stage(s, item_id, stage, worker, settings=settings)

    def finish(attempt, **kw):
        with session_scope(db) as s:  # each worker ends its own unit of work
            return finish_stage(s, attempt.id, **kw)

    for older_finishes_first in (True, False):
        with db() as s:
            job, _ = create_job(s, storage, owner, [("a.png", "image/png", b"x")],
                                settings=settings)
        item_id = job.items[0].id
        for stage in ("detect", "parse"):
            assert finish(begin(item_id, stage, "w"))
        older = begin(item_id, "stylize", "w1")
        newer = begin(item_id, "stylize", "w2")
        assert (older.attempt, newer.attempt) == (1, 2)
        order = [(older, False), (newer, True)]
        for attempt, goes_on in order if older_finishes_first else order[::-1]:
            assert finish(attempt) is goes_on
        rows = {r.id: r.outcome for r in attempts_of(db, item_id, "stylize")}
        assert rows == {older.id: "duplicate", newer.id: "succeeded"}
        with db() as s:
            assert s.get(Item, item_id).attempts == 1  # the duplicate was given back
        # At finalize, only the newest attempt completes the item, in the same transaction.
        older = begin(item_id, "finalize", "w1")
        newer = begin(item_id, "finalize", "w2")
        assert not finish(older, output_key="result.png", face_count=0)
        with db() as s:
            assert s.get(Item, item_id).status == "finalizing"
        assert finish(newer, output_key="result.png", face_count=0)
        with db() as s:
            item = s.get(Item, item_id)
            assert (item.status, item.output_key, item.face_count) == ("succeeded", "result.png", 0)
            assert s.get(Job, job.id).status == "succeeded"


def _outage(stack, client, db, storage, tmp_path, server, seconds: float, label: str,
            *, stage_meets_it: bool) -> None:
    """Stop `server` while two stages run and four items wait, start it again after `seconds`;
    every stage must retry through the outage without spending attempts or needing the
    sweeper."""
    job_id, ids = _hold_both_workers(stack, client, tmp_path, HELD + QUEUED)
    server.stop()
    _release_held(stack, ids)
    time.sleep(seconds)
    server.start()
    back_at = utcnow()
    job = wait_job(db, job_id)
    fig, items = audit(db, storage, job_id, label)
    if job is not None:
        fig.recovery_s = (job.finished_at - back_at).total_seconds()
    outages = [a for i in items.values() for a in attempts_of(db, i.id) if a.outcome == "outage"]
    swept = [i for i in items.values() if i.id in stack.log("api")]
    fig.note = (f"{len(outages)} attempts closed as outage (not counted); "
                f"{len(swept)} items needed the sweeper")
    assert_recovered(job, fig)
    if stage_meets_it:
        assert outages, "no stage met the outage"
    assert not swept, "retries should carry every stage through the outage, not the sweeper"
    for item in items.values():
        done = [a for a in attempts_of(db, item.id) if a.outcome == "succeeded"]
        assert [a.stage for a in done] == list(STAGES), item.filename
        assert all(a.attempt == 1 for a in done), [(a.stage, a.attempt) for a in done]
    assert_workers_alive(stack)


def test_postgres_restart(stack, client, db, storage, tmp_path, pg_server):
    """PostgreSQL goes down while two stages run (they fail to record their end) and four
    items wait (they fail to begin), then comes back: the stages retry through the outage
    (Celery retry with countdown) without it counting against the attempt cap."""
    _outage(stack, client, db, storage, tmp_path, pg_server, 4, "PostgreSQL stop 4s + start",
            stage_meets_it=False)


def test_s3_unreachable_for_a_while(stack, client, db, storage, tmp_path, s3_server):
    """The S3 server is down for several seconds while two stages write to it and four items
    wait to read their input: StorageUnavailable retries with backoff, more times than the
    attempt cap, and no item fails for it."""
    _outage(stack, client, db, storage, tmp_path, s3_server, 8, "S3 server stop 8s + start",
            stage_meets_it=True)


def test_api_crash_between_commit_and_publish(stack, client, db, storage, tmp_path):
    """The API process dies after committing the job and before publishing its items. The
    client's retry with the same Idempotency-Key gets the stored job once the API is back, and
    the sweeper publishes the never-published items."""
    names = ["crash-after-commit.png", "sibling-1.png"]
    files = photos(tmp_path, names)
    with pytest.raises((httpx.HTTPError, OSError, ConnectionFailed)):
        client.submit(files, STYLE, idempotency_key="faults-crash-1")
    api = stack.procs["api"]
    assert api.wait(30) == 70, "the API should have exited at the injected crash"
    with db() as s:
        job = s.scalar(select(Job).where(Job.idempotency_key == "faults-crash-1"))
        assert job is not None, "the job was not committed before the crash"
        job_id = job.id
        items = list(s.scalars(select(Item).where(Item.job_id == job_id)))
        assert {(i.status, i.enqueued_at) for i in items} == {("queued", None)}
    restart_api(stack)
    back_at = utcnow()
    again = Client(stack.api_url, stack.api_key)
    try:
        assert again.submit(files, STYLE, idempotency_key="faults-crash-1")["id"] == job_id
    finally:
        again.close()
    assert_swept(stack, db, storage, job_id, "API crash after commit, before publish", back_at)
