"""The per-stage load the autoscalers scale on (jobs/stats.py, exported at the API's /metrics):
items count while they wait for a stage *and* while a stage runs, on PostgreSQL and SQLite."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from face2paint.api.app import create_app
from face2paint.jobs.create import create_job
from face2paint.jobs.db import make_engine, session_factory, unit_of_work, utcnow
from face2paint.jobs.stages import begin_stage, end_stage, fail_item, finish_stage
from face2paint.jobs.migrate import upgrade
from face2paint.jobs.stats import stage_loads
from face2paint.jobs.storage import LocalStorage
from face2paint.settings import Settings


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 100, 50)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'f2p.db'}"
    from tests.service_stack import fresh_database

    return fresh_database(request.getfixturevalue("pg_url"))


def _scenario(sessions, storage):
    """Six items, each left in a different place of the chain."""
    with sessions() as s:
        job, _ = create_job(s, storage, "owner", [(f"{n}.png", "image/png", _png()) for n in "abcdef"])
        ids = [it.id for it in job.items]
    a, b, c, d, e, f = ids
    with sessions() as s, unit_of_work(s):
        begin_stage(s, b, "detect", "w1")                     # b: running detect
        at = begin_stage(s, c, "detect", "w1")                # c: detect done, waits for parse
        finish_stage(s, at.id, {"detect": 0.1})
        at = begin_stage(s, d, "detect", "w1")                # d: detect failed once,
        end_stage(s, at.id, "retry", error="boom")            #    its retry waits
        for stage in ("detect", "parse"):                     # e: running stylize
            at = begin_stage(s, e, stage, "w1")
            finish_stage(s, at.id, {stage: 0.1})
        begin_stage(s, e, "stylize", "w2")
        fail_item(s, f, "bad")                                # f: terminal, not counted
    return ids


EXPECTED = {  # stage -> (queued, running)
    "detect": (2, 1),      # a (never started) and d (retry) wait; b runs
    "parse": (1, 0),       # c
    "stylize": (0, 1),     # e: a Redis queue length would read 0 here
    "finalize": (0, 0),
}


def test_stage_loads_count_running_items_not_only_waiting_ones(database_url, tmp_path):
    upgrade(database_url)
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    _scenario(sessions, LocalStorage(tmp_path / "storage"))
    later = utcnow() + timedelta(seconds=100)
    with sessions() as s:
        loads = stage_loads(s, now=later)
    engine.dispose()
    assert {st: (l.queued, l.running) for st, l in loads.items()} == EXPECTED
    # Waits are measured from the upload (a) or from the end of the attempt before (c, d).
    assert 100 <= loads["detect"].oldest_queued_s < 200
    assert 100 <= loads["parse"].oldest_queued_s < 200
    assert loads["stylize"].oldest_queued_s == 0  # nothing waits there: e runs


def test_api_exports_the_stage_load_for_prometheus(database_url, tmp_path):
    upgrade(database_url)
    engine = make_engine(database_url)
    _scenario(session_factory(engine), LocalStorage(tmp_path / "storage"))
    engine.dispose()
    settings = Settings(home=tmp_path, database_url=database_url,
                        storage_url=str(tmp_path / "storage"), rate_limit_per_minute=0)
    with TestClient(create_app(settings, sweeper=False)) as client:
        client.get("/healthz")
        text = client.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    for stage, (queued, running) in EXPECTED.items():
        assert samples[("face2paint_stage_items", (("stage", stage), ("state", "queued")))] == queued
        assert samples[("face2paint_stage_items", (("stage", stage), ("state", "running")))] == running
        assert ("face2paint_stage_oldest_queued_seconds", (("stage", stage),)) in samples
    # The request metrics are still there beside them.
    assert any(name == "face2paint_http_requests_total" for name, _ in samples)
