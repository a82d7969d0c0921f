"""Shared fixtures: real PostgreSQL, Redis and S3 servers, one of each per test session.

URLs from the environment are used when given (FACE2PAINT_TEST_DATABASE_URL,
FACE2PAINT_TEST_REDIS_URL, FACE2PAINT_TEST_S3_ENDPOINT_URL + key/secret); otherwise the servers
come from pip dev dependencies (see tests/servers.py). Servers start only when a
test asks for them, and every such test is marked `integration`.
"""

from __future__ import annotations

import pytest

from tests import servers as services

SERVER_FIXTURES = {"pg_server", "pg_url", "redis_server", "redis_url", "s3_server", "s3"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _session_server(name: str, start, doc: str):
    """A session fixture `name` that yields the server `start()` gives (tests/servers.py)."""
    def fixture():
        with start() as server:
            yield server

    fixture.__doc__ = doc
    return pytest.fixture(scope="session", name=name)(fixture)


pg_server = _session_server("pg_server", services.postgres_server, """PostgreSQL server; .url
    points at its maintenance database. Managed servers (not from the environment) support
    stop()/kill()/start() for fault tests.""")
redis_server = _session_server("redis_server", services.redis_server, "Redis server; .url.")
s3_server = _session_server("s3_server", services.s3_server, "S3 server (see the s3 fixture).")


@pytest.fixture(scope="session")
def pg_url(pg_server) -> str:
    return pg_server.url


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def s3(s3_server):
    """The S3 server: .endpoint_url, .access_key, .secret_key, .bucket (created), .region,
    .client(), .storage(prefix)."""
    return s3_server
