"""A job's server-sent events over a real HTTP server (uvicorn in this process) and a real
PostgreSQL: the first snapshot, every change as the items move, the end once the job is
terminal; and while the stream waits it holds no database connection and leaves the event loop
free for other requests."""

from __future__ import annotations

import io
import json
import queue
import threading
import time

import httpx
import pytest
import uvicorn
from PIL import Image

from face2paint.api.app import create_app
from face2paint.api.routes import events
from face2paint.cli.stack import free_port
from face2paint.jobs.api_keys import create_api_key
from face2paint.jobs.db import make_engine, session_factory, session_scope
from face2paint.jobs.migrate import upgrade
from face2paint.jobs.notices import Publisher, publish_after_commit
from face2paint.jobs.stages import begin_stage, fail_item, finish_stage
from face2paint.jobs.states import STAGES
from face2paint.client import Client
from face2paint.settings import Settings
from tests.service_stack import fresh_database

ITEM_FLOW = ["queued", "detecting", "parsing", "stylizing", "finalizing", "succeeded"]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (90, 30, 200)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def server(pg_url, tmp_path):
    yield from _serve(Settings(home=tmp_path, database_url=fresh_database(pg_url),
                               broker_url="memory://", storage_url=str(tmp_path / "storage"),
                               rate_limit_per_minute=0))


@pytest.fixture
def notified_server(pg_url, redis_url, tmp_path, monkeypatch):
    """The API with Redis as its broker, and a poll so slow (60 s) that a stream can only
    hear of a change within the tests' 20 s through its notice; the test's sessions announce
    their commits as a worker's do."""
    monkeypatch.setattr(events, "POLL_S", 60.0)
    for app, http, sessions, other in _serve(Settings(
            home=tmp_path, database_url=fresh_database(pg_url), broker_url=redis_url,
            storage_url=str(tmp_path / "storage"), rate_limit_per_minute=0)):
        publish_after_commit(sessions, Publisher.for_broker(redis_url))
        yield app, http, sessions, other


def _serve(settings):
    upgrade(settings.resolved_database_url)
    app = create_app(settings, sweeper=False)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    engine = make_engine(settings.resolved_database_url)
    sessions = session_factory(engine)
    with session_scope(sessions) as s:
        key, other = create_api_key(s, "alice"), create_api_key(s, "mallory")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                        timeout=10)
    try:
        yield app, http, sessions, other
    finally:
        http.close()
        srv.should_exit = True
        thread.join(30)
        engine.dispose()


def _read_events(http: httpx.Client, path: str, out: queue.Queue) -> None:
    """Parse text/event-stream into (event, data) tuples; None once the server closes it."""
    try:
        with http.stream("GET", path, timeout=httpx.Timeout(10, read=60)) as r:
            out.put(("status", r.status_code, r.headers.get("content-type")))
            event, data = "message", []
            for line in r.iter_lines():
                if line == "":
                    if data:
                        out.put((event, json.loads("\n".join(data))))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
    finally:
        out.put(None)


def _next(q: queue.Queue, timeout: float = 20):
    return q.get(timeout=timeout)


def test_events_follow_a_job_to_its_end_without_holding_a_connection(server):
    app, http, sessions, other = server
    r = http.post("/v1/jobs", files=[("files", ("a.png", _png(), "image/png")),
                                     ("files", ("b.png", _png(), "image/png"))])
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    items = sorted(http.get(f"/v1/jobs/{job_id}/items").json(), key=lambda i: i["index"])

    events: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read_events, args=(http, f"/v1/jobs/{job_id}/events", events), daemon=True)
    reader.start()
    assert _next(events) == ("status", 200, "text/event-stream; charset=utf-8")
    first = [_next(events) for _ in range(3)]
    assert [(e, d["id"], d["status"]) for e, d in first] == [
        ("item", items[0]["id"], "queued"), ("item", items[1]["id"], "queued"), ("job", job_id, "queued")]

    # While the stream waits: no database connection is checked out (it polls in short
    # sessions of its own), and the event loop answers other requests.
    pool = app.state.engine.pool
    deadline = time.monotonic() + 10
    while pool.checkedout() != 0:
        assert time.monotonic() < deadline, f"{pool.checkedout()} connection(s) held while streaming"
        time.sleep(0.01)
    assert reader.is_alive()
    assert httpx.get(f"{http.base_url}/healthz", timeout=5).status_code == 200

    # Item a goes through every stage, one every few polls; item b fails.
    for stage in STAGES:
        with session_scope(sessions) as s:
            attempt = begin_stage(s, items[0]["id"], stage, "test").id
        time.sleep(0.7)
        with session_scope(sessions) as s:
            assert finish_stage(s, attempt, output_key="jobs/x/result.png" if stage == STAGES[-1] else None)
    with session_scope(sessions) as s:
        fail_item(s, items[1]["id"], "detect: not a face we could use")

    seen: dict[str, list[str]] = {items[0]["id"]: [], items[1]["id"]: []}
    jobs, end = [], None
    while (ev := _next(events)) is not None:
        name, data = ev
        if name == "item":
            seen[data["id"]].append(data["status"])
        elif name == "job":
            jobs.append(data["status"])
        elif name == "end":
            end = data
    reader.join(5)
    assert not reader.is_alive(), "the stream did not close after the end event"
    assert end is not None and end["status"] == "partially_succeeded"
    assert end["progress"] == {"done": 1, "failed": 1, "canceled": 0, "pending": 0, "total": 2} and end["succeeded"] == 1 and end["failed"] == 1
    # Forward only, every stage visible (one per poll), each change sent once.
    assert seen[items[0]["id"]] == ITEM_FLOW[1:], seen
    assert seen[items[1]["id"]] == ["failed"]
    assert jobs[0] == "running" and "partially_succeeded" not in jobs

    # A finished job's stream is its snapshot and the end at once.
    q2: queue.Queue = queue.Queue()
    _read_events(http, f"/v1/jobs/{job_id}/events", q2)
    got = list(iter(q2.get, None))
    assert [g[0] for g in got] == ["status", "item", "item", "end"]


def test_events_need_the_owners_key(server):
    app, http, sessions, other = server
    job_id = http.post("/v1/jobs", files=[("files", ("a.png", _png(), "image/png"))]).json()["id"]
    url = f"/v1/jobs/{job_id}/events"
    assert httpx.get(f"{http.base_url}{url}").status_code == 401
    assert http.get(url, headers={"Authorization": f"Bearer {other}"}).status_code == 404
    assert http.get(f"/v1/jobs/{'0' * 32}/events").status_code == 404


def _run_item(sessions, item_id: str) -> None:
    for stage in STAGES:
        with session_scope(sessions) as s:
            attempt = begin_stage(s, item_id, stage, "test").id
        with session_scope(sessions) as s:
            assert finish_stage(s, attempt, output_key="jobs/x/result.png" if stage == STAGES[-1] else None)


def test_a_stream_hears_each_change_when_it_is_committed(notified_server):
    app, http, sessions, other = notified_server
    job_id = http.post("/v1/jobs", files=[("files", ("a.png", _png(), "image/png"))]).json()["id"]
    item = http.get(f"/v1/jobs/{job_id}/items").json()[0]["id"]
    got: queue.Queue = queue.Queue()
    threading.Thread(target=_read_events, args=(http, f"/v1/jobs/{job_id}/events", got),
                     daemon=True).start()
    assert _next(got)[1] == 200
    assert [(e, d["status"]) for e, d in (_next(got), _next(got))] == [("item", "queued"), ("job", "queued")]
    # One change, then nothing: the stream sends it long before its 60 s poll.
    with session_scope(sessions) as s:
        begin_stage(s, item, "detect", "test")
    assert [(e, d["status"]) for e, d in (_next(got), _next(got))] == [("item", "detecting"), ("job", "running")]
    _run_item(sessions, item)  # begins detect again: a retry of the same stage
    rest = list(iter(lambda: _next(got), None))
    assert rest[-1][0] == "end" and rest[-1][1]["status"] == "succeeded", rest
    statuses = [d["status"] for e, d in rest if e == "item"]
    assert statuses and statuses[-1] == "succeeded"
    assert statuses == sorted(statuses, key=ITEM_FLOW.index), statuses  # forward only


def test_the_clients_wait_ends_with_the_job_not_at_its_next_poll(notified_server):
    app, http, sessions, other = notified_server
    job_id = http.post("/v1/jobs", files=[("files", ("a.png", _png(), "image/png"))]).json()["id"]
    item = http.get(f"/v1/jobs/{job_id}/items").json()[0]["id"]
    key = http.headers["authorization"].split()[1]
    seen, done = [], {}
    with Client(str(http.base_url), key) as client:
        job = client.job(job_id)
        # poll=60: were the wait polling, it could not end within the join below.
        waiter = threading.Thread(target=lambda: done.update(job=job.wait(
            progress=lambda j: seen.append(j.status), poll=60, timeout=120)), daemon=True)
        waiter.start()
        deadline = time.monotonic() + 10
        while not seen:  # the stream is open: its first event has arrived
            assert time.monotonic() < deadline, "the wait did not open the stream"
            time.sleep(0.02)
        _run_item(sessions, item)
        waiter.join(20)
        assert not waiter.is_alive(), "the wait did not end with the job"
    assert done["job"].status == "succeeded" and done["job"].succeeded == 1
    assert seen[0] == "queued" and seen[-1] == "succeeded"
