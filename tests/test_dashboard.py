"""The Grafana dashboard (infra/grafana/dashboards/face2paint.json) shows throughput, latency
per stage, queue depth and failures, and queries only metrics the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from face2paint.worker import metrics as worker_metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "face2paint.json"
PROMQL_WORDS = {"sum", "max", "min", "by", "rate", "increase", "histogram_quantile", "le"}


def exported_metric_names() -> set[str]:
    """Every sample name the worker and the API export (counters' _total, histograms' parts)."""
    from prometheus_client import CollectorRegistry

    from face2paint.api import metrics as api_metrics

    names = {"face2paint_stage_items", "face2paint_stage_oldest_queued_seconds"}  # API, from the DB
    registry = CollectorRegistry()
    m = worker_metrics._Metrics()
    for metric in vars(m).values():
        registry.register(metric)
    for metric in (api_metrics.REQUESTS, api_metrics.LATENCY, api_metrics.UPLOADED):
        registry.register(metric)
    for family in registry.collect():
        names.add(family.name)
        base = family.name
        names |= {base + s for s in ("_total", "_bucket", "_sum", "_count")}
    return names


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_covers_throughput_latency_queue_depth_and_failures():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(e for _, e in expressions(dashboard))
    for needed in ("face2paint_photos_succeeded_total", "face2paint_stage_seconds_bucket",
                   "face2paint_stage_items", "face2paint_photos_failed_total"):
        assert needed in exprs, needed
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_dashboard_queries_only_exported_metrics():
    known = exported_metric_names()
    for title, expr in expressions(json.loads(DASHBOARD.read_text())):
        without_labels = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", expr)
        used = {w for w in re.findall(r"[a-z_][a-z0-9_]*", without_labels) if w.startswith("face2paint_")}
        assert used, title
        assert used <= known, f"{title}: unknown {used - known}"
