"""Workers publish the models they can run (in the broker's Redis, with a TTL); the API refuses
at submit, with 503 and the styles that can run, a style whose weights no stylize worker has.
Real Redis; the workers' side is the same publish() the worker's bootstep calls."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from face2paint.api.app import create_app
from face2paint.jobs.api_keys import create_api_key
from face2paint.jobs.db import make_engine, session_factory, session_scope
from face2paint.jobs.migrate import upgrade
from face2paint.settings import Settings
from face2paint.worker import capabilities
from tests.service_stack import redis_db


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def api(redis_url, tmp_path, monkeypatch):
    import redis

    broker = redis_db(redis_url)
    monkeypatch.setenv("FACE2PAINT_HOME", str(tmp_path))
    monkeypatch.setenv("FACE2PAINT_BROKER_URL", broker)
    monkeypatch.setenv("FACE2PAINT_RATE_LIMIT_PER_MINUTE", "0")
    for var in ("FACE2PAINT_DATABASE_URL", "FACE2PAINT_STORAGE_URL"):
        monkeypatch.delenv(var, raising=False)
    client = redis.Redis.from_url(broker)
    client.flushdb()
    settings = Settings()
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    with session_scope(session_factory(engine)) as s:
        key = create_api_key(s, "alice")
    app = create_app(settings, sweeper=False)
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as http:
        http.redis, http.app_ = client, app
        yield http
    client.flushdb()
    engine.dispose()


def _submit(api, style):
    return api.post("/v1/jobs", files=[("files", ("a.png", _png(), "image/png"))],
                    data={"options": json.dumps({"style": style})})


def test_a_style_no_worker_can_paint_is_refused_with_the_styles_that_can(api):
    # Nothing published yet (no worker started): nothing is known, nothing refused.
    assert _submit(api, "animeganv3-arcane").status_code == 202
    capabilities.publish(api.redis, "cpu-1", ["detect", "parse", "finalize"],
                         ["retinaface-mnet025", "animeganv3-arcane"])
    capabilities.publish(api.redis, "gpu-1", ["stylize"], ["classical-cartoon", "animeganv3-comic"])
    api.app_.state.catalog.forget()
    assert capabilities.stylize_models(api.redis) == {"classical-cartoon", "animeganv3-comic"}

    r = _submit(api, "animeganv3-arcane")  # only a worker that does not stylize has it
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert "'animeganv3-arcane' cannot run now" in detail and "animeganv3-arcane" in detail
    assert "styles that can: " in detail and "classical-cartoon" in detail and "animeganv3-comic" in detail
    assert "models pull animeganv3-arcane" in detail and r.headers["retry-after"] == "30"
    assert _submit(api, "animeganv3-comic").status_code == 202
    # Refused before anything was stored: only the two accepted jobs exist.
    assert len(api.get("/v1/jobs").json()["jobs"]) == 2

    # A worker that goes away stops counting when its key expires (withdrawn at shutdown).
    capabilities.withdraw(api.redis, "gpu-1")
    api.app_.state.catalog.forget()
    assert capabilities.stylize_models(api.redis) is None
    assert _submit(api, "animeganv3-arcane").status_code == 202


def test_published_models_expire(api):
    capabilities.publish(api.redis, "w", ["stylize"], ["classical-cartoon"], ttl_s=30)
    assert 0 < api.redis.ttl(capabilities.KEY_PREFIX + "w") <= 30


def test_available_models_are_the_ones_on_this_machine(tmp_path, monkeypatch):
    from face2paint.models.registry import Registry

    empty = tmp_path / "models"
    empty.mkdir()
    settings = Settings(home=tmp_path, model_dir=empty)
    models = capabilities.available_models(Registry(settings))
    # Only what needs no file (or comes in a package) is here without weights.
    assert "classical-cartoon" in models and "animeganv2-hayao-int8" not in models
