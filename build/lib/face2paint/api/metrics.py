"""Prometheus metrics at /metrics: request counts and latencies by route template."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.responses import Response

REQUESTS = Counter("face2paint_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("face2paint_http_request_seconds", "HTTP request latency", ["method", "route"])
UPLOADED = Counter("face2paint_images_submitted_total", "Images accepted in jobs")


def install(app: FastAPI) -> None:
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
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
