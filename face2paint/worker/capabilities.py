"""Which models the workers can run, published for the API to check a job's style at submit.

Each worker, at start and then on a timer, writes one Redis key (in the broker's Redis) with
the ids of the models it holds or can load without downloading (registry.where: the file is
there, verified, or a package ships it), and the queues it takes. The key expires after TTL_S,
so a worker that is gone stops counting within a minute. The API reads the union over the
workers that take the stylize queue (`stylize_models`): a style whose models none of them has
is refused with 422 and the styles that can run, instead of being accepted and failing at
every item. When no worker has published (none started yet, or a broker that is not Redis),
nothing is known and nothing is refused.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

log = logging.getLogger("face2paint.worker")

KEY_PREFIX = "face2paint:worker-models:"
TTL_S = 60
PUBLISH_EVERY_S = 20


def available_models(registry=None) -> list[str]:
    """The ids of the models this machine holds or can load without downloading."""
    from ..models.registry import MODELS, ModelUnavailable, Registry

    registry = registry or Registry()
    ids = []
    for spec in MODELS:
        try:
            if registry.where(spec) is not None:
                ids.append(spec.id)
        except ModelUnavailable:  # a file that fails its checksum cannot be used
            continue
    return sorted(ids)


def publish(client, name: str, queues: list[str], models: list[str], ttl_s: int = TTL_S) -> None:
    client.set(KEY_PREFIX + name, json.dumps({"queues": sorted(queues), "models": models,
                                              "at": time.time()}), ex=ttl_s)


def withdraw(client, name: str) -> None:
    client.delete(KEY_PREFIX + name)


def published(client) -> list[dict]:
    """What every live worker published: [{"queues": [...], "models": [...]}, ...]."""
    out = []
    keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=500))
    for raw in client.mget(keys) if keys else []:
        try:
            out.append(json.loads(raw))
        except (TypeError, ValueError):
            continue
    return out


def stylize_models(client) -> set[str] | None:
    """The union of the models of the workers that take the stylize queue; None when no such
    worker has published (unknown: refuse nothing)."""
    workers = [w for w in published(client) if "stylize" in (w.get("queues") or ())]
    if not workers:
        return None
    return {m for w in workers for m in w.get("models") or ()}


class Catalog:
    """The API's view, read from Redis at most every `max_age_s` seconds (a submit must not
    wait on Redis each time); a Redis that is down means unknown (refuse nothing)."""

    def __init__(self, client, max_age_s: float = 5.0):
        self.client = client
        self.max_age_s = max_age_s
        self._at = -1e9
        self._value: set[str] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "Catalog":
        from ..jobs.redis_client import redis_client_for

        return cls(redis_client_for(settings.broker_url))

    def stylize_models(self) -> set[str] | None:
        if self.client is None:
            return None
        with self._lock:
            now = time.monotonic()
            if now - self._at > self.max_age_s:
                try:
                    self._value = stylize_models(self.client)
                except Exception as e:  # noqa: BLE001 - unknown, not an error
                    log.debug("cannot read the workers' models: %r", e)
                    self._value = None
                self._at = now
            return self._value

    def forget(self) -> None:
        with self._lock:
            self._at = -1e9

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001
                pass


def install(app) -> None:
    """A bootstep that publishes this worker's models at start and every PUBLISH_EVERY_S,
    and withdraws them at shutdown."""
    from celery import bootsteps

    class PublishModels(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Timer"}

        def __init__(self, parent, **kwargs):
            super().__init__(parent, **kwargs)
            self.tref = None
            self.client = None
            self.name = f"{getattr(parent, 'hostname', None) or socket.gethostname()}-{os.getpid()}"
            self.queues: list[str] = []
            self.models: list[str] | None = None

        def start(self, worker):
            from ..jobs.redis_client import redis_client_for
            from ..settings import get_settings

            self.client = redis_client_for(get_settings().broker_url)
            if self.client is None:
                return
            try:
                self.queues = [q.name for q in worker.app.amqp.queues.consume_from.values()]
            except Exception:  # noqa: BLE001
                self.queues = []
            # On the worker's timer, never in a thread of its own: the prefork pool forks from
            # this process, and a child forked while a thread holds a lock (logging, imports)
            # deadlocks. The first beat (checksums of the model files) comes right after start.
            self.first = worker.timer.call_after(0.1, self.beat, priority=10)
            self.tref = worker.timer.call_repeatedly(PUBLISH_EVERY_S, self.beat, priority=10)

        def beat(self):
            try:
                if self.models is None:
                    self.models = available_models()
                    log.info("models available to this worker: %s", ", ".join(self.models))
                publish(self.client, self.name, self.queues, self.models)
            except Exception as e:  # noqa: BLE001 - the API then knows less; never stop the worker
                log.warning("could not publish this worker's models: %r", e)

        def stop(self, worker):
            for tref in (getattr(self, "first", None), self.tref):
                if tref is not None:
                    tref.cancel()
            self.tref = self.first = None
            if self.client is not None:
                try:
                    withdraw(self.client, self.name)
                except Exception:  # noqa: BLE001
                    pass

    app.steps["worker"].add(PublishModels)
