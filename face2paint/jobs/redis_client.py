"""redis-py clients for the broker's Redis, shared by the rate limiter, the workers' model
catalog and the job-change notices: one place that reads a kombu broker URL."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit


def redis_client_for(broker_url: str | None, *, asyncio: bool = False):
    """A redis-py client (redis.asyncio's with asyncio=True) for a Celery/kombu Redis broker
    URL, or None if it is not Redis.

    kombu spells a unix socket `redis+socket:///path/to/sock` (or `socket://`); redis-py
    wants `unix_socket_path`.
    """
    if not broker_url:
        return None
    try:
        if asyncio:
            from redis import asyncio as redis
            from redis.asyncio.retry import Retry
        else:
            import redis
            from redis.retry import Retry
    except ImportError:  # pragma: no cover - redis is a core dependency
        return None
    from redis.backoff import NoBackoff

    parts = urlsplit(broker_url)
    scheme = parts.scheme.lower()
    # Short timeouts and no retries: nobody waits long on Redis for these helpers; each of
    # them works on without it.
    common = dict(socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=30,
                  retry=Retry(NoBackoff(), 0))
    if scheme in ("redis", "rediss"):
        return redis.Redis.from_url(broker_url, **common)
    if scheme in ("redis+socket", "socket", "unix"):
        query = parse_qs(parts.query)
        db = int((query.get("virtual_host") or query.get("db") or ["0"])[0] or 0)
        return redis.Redis(
            unix_socket_path=unquote(parts.path), db=db,
            password=parts.password or None, **common,
        )
    return None
