"""A deployed-like stack for tests: the API and real worker processes over real PostgreSQL,
Redis and S3 (from tests/conftest.py fixtures), each stack with its own database, Redis
database number and S3 prefix so stacks never see each other's work."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from sqlalchemy.engine import make_url

from face2paint.cli.stack import ProcessStack
from face2paint.jobs.db import make_engine, session_factory
from tests.helpers import model_dir

_redis_db = iter(range(1, 16))


def fresh_database(pg_url: str) -> str:
    name = f"f2p_{uuid.uuid4().hex[:12]}"
    url = make_url(pg_url)
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


@contextlib.contextmanager
def in_process_api(request, tmp_path, monkeypatch, prefix: str):
    """The API in process (TestClient, as owner alice; `client.other_key` is mallory's) over
    SQLite and a local directory under tmp_path, or, when request.param is "s3", over a fresh
    PostgreSQL database and the S3 server under `prefix`. Yields (client, app, s3 or None)."""
    from fastapi.testclient import TestClient

    from face2paint.api.app import create_app
    from face2paint.jobs.api_keys import create_api_key
    from face2paint.jobs.db import session_scope
    from face2paint.jobs.migrate import upgrade
    from face2paint.settings import Settings

    monkeypatch.setenv("FACE2PAINT_HOME", str(tmp_path))
    monkeypatch.setenv("FACE2PAINT_BROKER_URL", "memory://")
    monkeypatch.setenv("FACE2PAINT_RATE_LIMIT_PER_MINUTE", "0")
    for var in ("FACE2PAINT_DATABASE_URL", "FACE2PAINT_STORAGE_URL", "FACE2PAINT_S3_ENDPOINT_URL",
                "FACE2PAINT_RETENTION_DAYS"):
        monkeypatch.delenv(var, raising=False)
    s3 = None
    if request.param == "s3":
        pg_url, s3 = request.getfixturevalue("pg_url"), request.getfixturevalue("s3")
        monkeypatch.setenv("FACE2PAINT_DATABASE_URL", fresh_database(pg_url))
        for k, v in s3.env(prefix=prefix).items():
            monkeypatch.setenv(k, v)
    settings = Settings()
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    sessions = session_factory(engine)
    with session_scope(sessions) as s:
        key, other = create_api_key(s, "alice"), create_api_key(s, "mallory")
    app = create_app(settings, sweeper=False)
    try:
        with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
            client.kind, client.sessions, client.other_key = request.param, sessions, other
            client.settings, client.storage = settings, app.state.storage
            yield client, app, s3
    finally:
        engine.dispose()


def redis_db(redis_url: str) -> str:
    return urlsplit(redis_url)._replace(path=f"/{next(_redis_db)}").geturl()


def stack_env(pg_url: str, redis_url: str, s3, **extra) -> dict[str, str]:
    env = {
        "FACE2PAINT_DATABASE_URL": fresh_database(pg_url),
        "FACE2PAINT_BROKER_URL": redis_db(redis_url),
        "FACE2PAINT_MODEL_DIR": str(model_dir()),
        **s3.env(prefix=f"t-{uuid.uuid4().hex[:8]}"),
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


@contextlib.contextmanager
def running(stack: ProcessStack):
    """Start a stack (services or embedded), and stop it afterwards; on failure print the tail
    of each process's log."""
    try:
        stack.start()
        yield stack
    except BaseException:
        for name in list(stack.procs):
            print(f"--- {name} log ---\n{stack.log(name)[-4000:]}")
        raise
    finally:
        stack.stop()


@contextlib.contextmanager
def service_stack(pg_url, redis_url, s3, home: Path, workers: int = 2, **extra):
    with running(ProcessStack(stack_env(pg_url, redis_url, s3, **extra), home, workers=workers)) as stack:
        yield stack


def stack_sessions(stack: ProcessStack):
    """Sessions on a stack's database, for a fixture: `yield from stack_sessions(stack)`."""
    engine = make_engine(stack.base_env["FACE2PAINT_DATABASE_URL"])
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()
