"""Prometheus metrics at /metrics: request counts and latencies by route template, and the
per-stage load from the database (what the Kubernetes autoscalers scale the workers on).

    face2paint_stage_items{stage,state}          state: queued | running (see jobs/stats.py)
    face2paint_stage_oldest_queued_seconds{stage}

Every API replica exports the same database figures: aggregate them with max, not sum. When
the database cannot be read the two are left out (an autoscaler then sees no value, not 0).
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.responses import Response

from ..jobs.stats import stage_loads

log = logging.getLogger("face2paint.api")

REQUESTS = Counter("face2paint_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("face2paint_http_request_seconds", "HTTP request latency", ["method", "route"])
UPLOADED = Counter("face2paint_images_submitted_total", "Images accepted in jobs")


class StageLoadCollector:
    """Reads jobs.stats.stage_loads at each scrape, from the app's database."""

    def __init__(self, app: FastAPI):
        self.app = app

    def describe(self):
        return []  # nothing at registration time: the database may not be up yet

    def collect(self):
        sessions = getattr(self.app.state, "sessions", None)
        if sessions is None:
            return
        try:
            with sessions() as s:
                loads = stage_loads(s)
        except Exception as e:  # noqa: BLE001 - a scrape must not fail over the database
            log.warning("stage load metrics unavailable: %r", e)
            return
        items = GaugeMetricFamily("face2paint_stage_items",
                                  "Items queued for or running in each stage (from the database)",
                                  labels=["stage", "state"])
        oldest = GaugeMetricFamily("face2paint_stage_oldest_queued_seconds",
                                   "Wait so far of the longest-waiting item queued for each stage",
                                   labels=["stage"])
        for stage, load in loads.items():
            items.add_metric([stage, "queued"], load.queued)
            items.add_metric([stage, "running"], load.running)
            oldest.add_metric([stage], load.oldest_queued_s)
        yield items
        yield oldest


def install(app: FastAPI) -> None:
    stage_registry = CollectorRegistry(auto_describe=False)
    stage_registry.register(StageLoadCollector(app))

    @app.middleware("http")
    async def measure(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        # The route template, not the path: ids must not explode the label set.
        route = getattr(request.scope.get("route"), "path", "unmatched")
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        LATENCY.labels(request.method, route).observe(time.perf_counter() - t0)
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics():
        return Response(generate_latest() + generate_latest(stage_registry), media_type=CONTENT_TYPE_LATEST)
