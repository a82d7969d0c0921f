"""The API's request handling in process (TestClient) over SQLite, a local storage directory
and Celery's in-memory broker: one database session per request, the job options model, and
the domain errors' HTTP answers."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import event, select

from face2paint.api.app import create_app
from face2paint.api.publishing import Enqueuer, FaultyEnqueuer
from face2paint.jobs.api_keys import create_api_key
from face2paint.jobs.db import Item, Job, make_engine, session_factory, session_scope
from face2paint.jobs.keys import result_key
from face2paint.jobs.migrate import upgrade
from face2paint.jobs.stages import begin_stage, finish_stage
from face2paint.jobs.states import STAGES
from face2paint.settings import Settings


class CountingSessions:
    """The app's session factory, counting the sessions it opens and the transactions each
    begins."""

    def __init__(self, factory):
        self.factory = factory
        self.opened = []
        self.transactions = {}

    def __call__(self):
        session = self.factory()
        self.opened.append(session)
        self.transactions[id(session)] = 0

        @event.listens_for(session, "after_begin")
        def _begun(sess, transaction, connection):
            self.transactions[id(sess)] += 1

        return session


def _png(size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 120, 90)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def api(tmp_path):
    settings = Settings(home=tmp_path, broker_url="memory://", database_url=None,
                        storage_url=None, rate_limit_per_minute=0)
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    sessions = session_factory(engine)
    with session_scope(sessions) as s:
        key = create_api_key(s, "alice")
        other = create_api_key(s, "mallory")
    app = create_app(settings, sweeper=False)
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
        client.app_sessions = sessions
        client.other_key = other
        yield client
    engine.dispose()


def _submit(client, options=None, **kw):
    data = {"options": json.dumps(options)} if options is not None else {}
    return client.post("/v1/jobs", files=[("files", ("a.png", _png(), "image/png"))], data=data, **kw)


def _succeed(sessions, storage, job_id, item_id):
    """Run the item's stages as a worker would, and store its result."""
    key = result_key(job_id, item_id)
    storage.put_bytes(key, _png(), "image/png")
    with session_scope(sessions) as s:
        for stage in STAGES:
            attempt = begin_stage(s, item_id, stage, "test")
            assert finish_stage(s, attempt, output_key=key if stage == STAGES[-1] else None)


def test_one_request_opens_one_database_session(api):
    counting = CountingSessions(api.app.state.sessions)
    api.app.state.sessions = counting

    def one_session(method, path, expect, **kw):
        before = len(counting.opened)
        r = api.request(method, path, **kw)
        assert r.status_code == expect, (path, r.status_code, r.text)
        opened = counting.opened[before:]
        assert len(opened) == 1, f"{method} {path} opened {len(opened)} sessions"
        # Used (the owner lookup at least), and closed before the response went out.
        assert counting.transactions[id(opened[0])] >= 1
        assert not opened[0].in_transaction()
        return r

    before = len(counting.opened)
    r = _submit(api)
    assert r.status_code == 202, r.text
    assert len(counting.opened) - before == 1
    job = r.json()
    job_id = job["id"]
    # The owner lookup, the insert and the publish's mark each ran in turn on that session
    # (without an Idempotency-Key there is nothing to look up first).
    assert counting.transactions[id(counting.opened[-1])] == 3
    with api.app_sessions() as s:
        (item,) = s.scalars(select(Item).where(Item.job_id == job_id))
        assert item.enqueued_at is not None  # published, then marked
    one_session("GET", f"/v1/jobs/{job_id}", 200)
    items = one_session("GET", f"/v1/jobs/{job_id}/items", 200).json()
    one_session("GET", "/v1/jobs", 200)
    one_session("GET", f"/v1/jobs/{job_id}/items/{item.id}/result", 409)
    _succeed(api.app_sessions, api.app.state.storage, job_id, items[0]["id"])
    r = one_session("GET", f"/v1/jobs/{job_id}/items/{item.id}/result", 200)
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    r = one_session("POST", f"/v1/jobs/{job_id}/cancel", 200)
    assert r.json()["status"] == "succeeded"  # nothing left to cancel
    one_session("GET", f"/v1/jobs/{'0' * 32}", 404)
    one_session("GET", "/readyz", 200)


def test_unknown_option_keys_are_refused(api):
    for options, fragment in [
        ({"colour": "blue"}, "unknown option(s) ['colour']; allowed: background_style, face2paint, "),
        ({"style": "classical-cartoon", "params": {"evil": 1}}, "unknown params key(s) ['evil']"),
        ({"params": {"face_min_size": 0}}, "params.face_min_size=0 is out of range"),
        ({"params": {"parsing_smooth": 1}}, "params.parsing_smooth must be a bool"),
        ({"params": {"face_size": 512.5}}, "params.face_size must be a int"),
        ({"style": "vaporwave"}, "unknown style 'vaporwave'"),
        ({"output_format": "gif"}, "unknown output_format 'gif'; choose one of ['jpeg', 'png', 'webp']"),
        ({"output_quality": 80}, "output_quality applies to jpeg and webp only"),
        ({"output_format": "webp", "output_quality": 0}, "output_quality=0 must be an integer from 1 to 100"),
        ({"output_format": "jpeg", "output_quality": 85.5}, "output_quality=85.5 must be an integer"),
    ]:
        r = _submit(api, options)
        assert r.status_code == 422, (options, r.text)
        assert fragment in r.json()["detail"], (options, r.json())
    with api.app_sessions() as s:
        assert s.scalars(select(Job)).all() == []  # nothing refused was stored

    r = _submit(api, {"style": "classical-cartoon", "params": {"eye_enhance_ratio": 1}},)
    assert r.status_code == 202, r.text
    # The job keeps what was asked; defaults stay those of models/types.Params.
    assert r.json()["options"] == {"style": "classical-cartoon", "face2paint": True,
                                   "params": {"eye_enhance_ratio": 1.0}, "output_format": "png"}
    # A lossy format keeps its quality, the default one when none is asked for ("jpg" is jpeg).
    r = _submit(api, {"output_format": "jpg"})
    assert r.status_code == 202, r.text
    assert (r.json()["options"]["output_format"], r.json()["options"]["output_quality"]) == ("jpeg", 90)
    r = _submit(api, {"output_format": "webp", "output_quality": 70})
    assert (r.json()["options"]["output_format"], r.json()["options"]["output_quality"]) == ("webp", 70)
    r = api.post("/v1/jobs", files=[("files", ("a.png", _png(), "image/png"))],
                 data={"options": json.dumps({"style": "classical-cartoon"}), "face2paint": "false"})
    assert r.status_code == 202 and r.json()["options"]["face2paint"] is False


def test_domain_errors_have_their_status(api):
    r = api.get(f"/v1/jobs/{'0' * 32}")
    assert (r.status_code, r.json()) == (404, {"detail": f"no job {'0' * 32} for this API key"})
    assert api.get("/v1/jobs", params={"cursor": "garbage"}).status_code == 400
    first = _submit(api, {}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 202
    assert _submit(api, {}, headers={"Idempotency-Key": "k1"}).json()["id"] == first.json()["id"]
    r = api.post("/v1/jobs", files=[("files", ("b.png", _png((30, 30)), "image/png"))],
                 headers={"Idempotency-Key": "k1"})
    assert r.status_code == 409 and "k1" in r.json()["detail"]
    job_id = first.json()["id"]
    (item,) = api.get(f"/v1/jobs/{job_id}/items").json()
    r = api.get(f"/v1/jobs/{job_id}/items/{'1' * 32}/result")
    assert (r.status_code, r.json()["detail"]) == (404, f"no item {'1' * 32} in job {job_id}")
    r = api.get(f"/v1/jobs/{job_id}/items/{item['id']}/result")
    assert r.status_code == 409 and "no result yet (status queued)" in r.json()["detail"]
    mallory = {"Authorization": f"Bearer {api.other_key}"}
    for method, path in [("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}/items"),
                         ("GET", f"/v1/jobs/{job_id}/items/{item['id']}/result"),
                         ("POST", f"/v1/jobs/{job_id}/cancel")]:
        assert api.request(method, path, headers=mallory).status_code == 404, path
    assert api.get("/v1/jobs", headers={"Authorization": "Bearer f2p_nope"}).status_code == 401


def test_the_submit_fault_point_is_installed_only_from_the_environment(monkeypatch):
    monkeypatch.delenv("FACE2PAINT_FAULTS", raising=False)
    assert type(Enqueuer.for_celery()) is Enqueuer
    monkeypatch.setenv("FACE2PAINT_FAULTS", "exit:submit:never-matches")
    assert type(Enqueuer.for_celery()) is FaultyEnqueuer
