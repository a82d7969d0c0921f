"""Webhooks: the signature scheme (Standard Webhooks, its published test vector), the URL rules
at submit, the outbox rows and their retry schedule, and delivery end to end over real
PostgreSQL, Redis and a worker process to a real receiver on loopback that checks every
signature and answers 500 twice before 200."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from standardwebhooks import Webhook, WebhookVerificationError

from face2paint.api.app import create_app
from face2paint.client import Client
from face2paint.jobs import webhooks
from face2paint.jobs.api_keys import create_api_key, webhook_secret
from face2paint.jobs.create import create_job
from face2paint.jobs.db import ApiKey, WebhookDelivery, make_engine, session_factory, session_scope
from face2paint.jobs.migrate import upgrade
from face2paint.jobs.storage import LocalStorage
from face2paint.settings import Settings
from face2paint.worker.webhooks import body_of, signed_headers
from tests.helpers import astronaut_path
from tests.service_stack import service_stack, stack_sessions

STYLE = "classical-cartoon"


def _png(size=(64, 48), color=(200, 120, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


# --- the signature ----------------------------------------------------------------------------


def test_signature_matches_the_standard_webhooks_test_vector():
    # The vector of the Standard Webhooks specification's reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    when = datetime.fromtimestamp(1614265330, timezone.utc)
    headers = signed_headers(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", '{"test": 2432232314}', when)
    assert headers["webhook-id"] == "msg_p5jXN8AQM9LWM0D4loKWxJek"
    assert headers["webhook-timestamp"] == "1614265330"
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    # The same by hand: HMAC-SHA256 over "{id}.{timestamp}.{body}" with the decoded secret.
    mac = hmac.new(base64.b64decode(secret[6:]), b'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}',
                   hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_new_secrets_and_the_verifier():
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 24
    assert secret != webhooks.new_secret()
    body = body_of({"type": "job.finished", "data": {"job_id": "x"}})
    headers = signed_headers(secret, "d1", body, datetime.now(timezone.utc))
    assert Webhook(secret).verify(body, headers)["type"] == "job.finished"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("x", "y"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(body, headers)


# --- at submit (in process, SQLite) -----------------------------------------------------------


def _api(tmp_path, **settings):
    settings = Settings(home=tmp_path, broker_url="memory://", database_url=None, storage_url=None,
                        rate_limit_per_minute=0, **settings)
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    sessions = session_factory(engine)
    with session_scope(sessions) as s:
        key, other = create_api_key(s, "alice"), create_api_key(s, "mallory")
    return settings, engine, sessions, key, other


def _submit(http, options, files=None):
    files = files or [("files", ("a.png", _png(), "image/png"))]
    return http.post("/v1/jobs", files=files, data={"options": json.dumps(options)})


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:9/hook", "private, loopback"),
    ("http://localhost/hook", "private, loopback"),
    ("http://10.1.2.3/hook", "private, loopback"),
    ("http://[::1]:8080/", "private, loopback"),
    ("http://169.254.169.254/latest/meta-data", "private, loopback"),  # cloud metadata
    ("http://0.0.0.0/", "private, loopback"),
    ("http://224.0.0.1/", "private, loopback"),
    ("http://[::ffff:127.0.0.1]/", "private, loopback"),
    ("ftp://example.com/hook", "http:// or https://"),
    ("file:///etc/passwd", "http:// or https://"),
    ("javascript:alert(1)", "http:// or https://"),
    ("https://", "http:// or https://"),
])
def test_private_and_non_http_urls_are_refused(tmp_path, url, reason):
    settings, engine, _, key, _ = _api(tmp_path)
    with TestClient(create_app(settings, sweeper=False), headers={"Authorization": f"Bearer {key}"}) as http:
        r = _submit(http, {"webhook_url": url})
        assert r.status_code == 422, r.text
        assert reason in r.json()["detail"] and "\n" not in r.json()["detail"]
        assert http.get("/v1/jobs").json()["jobs"] == []  # nothing stored
    engine.dispose()


def test_webhook_options_at_submit_and_the_deliveries_route(tmp_path):
    settings, engine, sessions, key, other = _api(tmp_path, webhook_allow_private=True)
    with TestClient(create_app(settings, sweeper=False), headers={"Authorization": f"Bearer {key}"}) as http:
        r = _submit(http, {"webhook_url": "http://127.0.0.1:9/h", "webhook_events": ["item.done"]})
        assert r.status_code == 422 and "webhook_events must be a non-empty list" in r.json()["detail"]
        r = _submit(http, {"webhook_events": ["job.finished"]})
        assert r.status_code == 422 and "needs a webhook_url" in r.json()["detail"]

        # A good photo and a file that is no image: that item fails at upload, and its event is
        # written with the job, in the same transaction.
        files = [("files", ("a.png", _png(), "image/png")),
                 ("files", ("notes.jpg", b"not an image at all", "image/jpeg"))]
        r = _submit(http, {"webhook_url": "http://127.0.0.1:9/h"}, files)
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["options"]["webhook_events"] == list(webhooks.EVENTS)
        (d,) = http.get(f"/v1/jobs/{job['id']}/webhooks").json()
        assert d["event"] == "item.failed" and d["attempts"] == 0 and d["delivered_at"] is None
        with session_scope(sessions) as s:
            row = s.get(WebhookDelivery, d["id"])
            data = row.payload["data"]
            assert (data["filename"], data["job_id"], data["status"]) == ("notes.jpg", job["id"], "failed")
            assert data["error"]
            assert row.api_key_id == s.query(ApiKey).filter_by(owner="alice").one().id
        # Owner only: another key sees no such job.
        assert http.get(f"/v1/jobs/{job['id']}/webhooks",
                        headers={"Authorization": f"Bearer {other}"}).status_code == 404
        # Only the events asked for.
        r = _submit(http, {"webhook_url": "http://127.0.0.1:9/h", "webhook_events": ["job.finished"]}, files)
        assert r.status_code == 202 and http.get(f"/v1/jobs/{r.json()['id']}/webhooks").json() == []

        # A key made before webhooks has no secret: asked for a new one.
        with session_scope(sessions) as s:
            s.query(ApiKey).filter_by(owner="mallory").update({"webhook_secret": None})
        r = http.post("/v1/jobs", files=[("files", ("a.png", _png(), "image/png"))],
                      data={"options": json.dumps({"webhook_url": "http://127.0.0.1:9/h"})},
                      headers={"Authorization": f"Bearer {other}"})
        assert r.status_code == 422 and "keys create" in r.json()["detail"]
    engine.dispose()


def test_public_addresses_pass_the_check():
    webhooks.check_url("https://93.184.215.14/hook", allow_private=False)
    webhooks.check_url("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:8443/x", allow_private=False)
    with pytest.raises(webhooks.WebhookRefused, match="user name or password"):
        webhooks.check_url("https://u:p@93.184.215.14/", allow_private=False)


# --- the outbox and its schedule (domain, SQLite) ---------------------------------------------


@pytest.fixture
def domain(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    yield sessions, LocalStorage(tmp_path / "storage")
    engine.dispose()


def _job_with_a_rejected_upload(sessions, storage, **options):
    from face2paint.jobs.inputs import NewFile

    options = {"webhook_url": "http://h.example/x", "webhook_key": None, **options}
    with sessions() as s:
        job, _ = create_job(s, storage, "o", [NewFile("bad.jpg", "image/jpeg", b"x", error="not an image")],
                            options)
        return job, webhooks.take_outbox(s)


def test_outbox_rows_and_their_ids_to_publish(domain):
    sessions, storage = domain
    job, outbox = _job_with_a_rejected_upload(sessions, storage)
    with session_scope(sessions) as s:
        rows = webhooks.job_deliveries(s, job.id, "o")
    # Its only upload was refused: the item failed and the job finished, in one transaction.
    assert [r.event for r in rows] == ["item.failed", "job.finished"] and outbox == [r.id for r in rows]
    assert rows[1].payload["data"]["status"] == "failed"
    # A rolled-back transaction leaves nothing to publish (the hook the API and workers install).
    from face2paint.worker.app import make_celery, publish_outbox_after_commit

    publish_outbox_after_commit(sessions, make_celery(Settings(broker_url="memory://")))
    s = sessions()
    try:
        with pytest.raises(RuntimeError), webhooks_unit(s):
            assert webhooks.job_finished(s, s.get(type(job), job.id)) is not None
            assert s.info[webhooks.OUTBOX]
            raise RuntimeError("rolled back")
        assert webhooks.take_outbox(s) == []
        with webhooks_unit(s):
            assert webhooks.job_finished(s, s.get(type(job), job.id)) is not None
        assert webhooks.take_outbox(s) == []  # published once committed
        with webhooks_unit(s):
            assert len(webhooks.job_deliveries(s, job.id, "o")) == 3
    finally:
        s.close()


def webhooks_unit(session):
    from face2paint.jobs.db import unit_of_work

    return unit_of_work(session)


def test_retry_schedule_and_giving_up(domain):
    sessions, storage = domain
    settings = Settings(webhook_backoff_base_s=10, webhook_backoff_cap_s=60, webhook_give_up_after_s=3600)
    job, (first, _) = _job_with_a_rejected_upload(sessions, storage)
    with session_scope(sessions) as s:
        assert webhooks.claim(s, first).attempts == 1
    with session_scope(sessions) as s:
        assert webhooks.claim(s, first) is None  # claimed: a second copy of the message waits
    with session_scope(sessions) as s:
        delay = webhooks.record_attempt(s, first, 500, None, settings)
    assert 0 <= delay <= 10  # full jitter below base * 2^0
    with session_scope(sessions) as s:
        row = s.get(WebhookDelivery, first)
        assert (row.last_status, row.last_error, row.delivered_at) == (500, "HTTP 500", None)
        # Due again later: a message arriving now is a duplicate and does nothing.
        row.next_attempt_at = datetime.now(timezone.utc) + timedelta(seconds=30)
    with session_scope(sessions) as s:
        assert webhooks.claim(s, first) is None
        s.get(WebhookDelivery, first).next_attempt_at = datetime.now(timezone.utc)
    with session_scope(sessions) as s:
        assert webhooks.claim(s, first).attempts == 2
    for n in range(3, 12):  # the ceiling doubles up to the cap
        assert 0 <= webhooks.backoff_s(n, settings) <= 60
    with session_scope(sessions) as s:  # the first attempt was more than the give-up time ago
        s.get(WebhookDelivery, first).first_attempt_at -= timedelta(hours=2)
    with session_scope(sessions) as s:
        assert webhooks.record_attempt(s, first, None, "no answer within 10 s", settings) is None
    with session_scope(sessions) as s:
        row = s.get(WebhookDelivery, first)
        assert row.failed_at is not None and row.next_attempt_at is None and row.attempts == 2
        assert webhooks.claim(s, first) is None


def test_lost_deliveries_are_published_again(domain):
    sessions, storage = domain
    _, (a, b) = _job_with_a_rejected_upload(sessions, storage)
    with session_scope(sessions) as s:
        assert webhooks.lost_deliveries(s, older_than_s=60) == []  # just made: still on its way
        s.get(WebhookDelivery, a).created_at -= timedelta(minutes=5)
        s.get(WebhookDelivery, b).delivered_at = datetime.now(timezone.utc)
        s.get(WebhookDelivery, b).created_at -= timedelta(minutes=5)
    s = sessions()
    try:
        with webhooks_unit(s):
            assert webhooks.lost_deliveries(s, older_than_s=60) == [a]
        assert webhooks.take_outbox(s) == [a]  # to publish after the commit
        with webhooks_unit(s):
            assert webhooks.lost_deliveries(s, older_than_s=60) == []  # its clock restarted
    finally:
        s.close()


def test_the_sweeper_publishes_lost_deliveries(domain):
    from face2paint.api.sweeper import sweep_webhooks_once
    from face2paint.worker.app import make_celery, publish_outbox_after_commit

    sessions, storage = domain
    app = make_celery(Settings(broker_url="memory://"))
    sent = []
    app.send_task = lambda name, args, **kw: sent.append((name, args, kw["queue"]))
    publish_outbox_after_commit(sessions, app)
    job, _ = _job_with_a_rejected_upload(sessions, storage)
    with session_scope(sessions) as s:
        a, b = (d.id for d in webhooks.job_deliveries(s, job.id, "o"))
    assert sorted(sent) == sorted(("face2paint.webhook", (d,), "webhooks") for d in (a, b))  # on commit
    sent.clear()
    with session_scope(sessions) as s:
        for d in (a, b):
            s.get(WebhookDelivery, d).created_at -= timedelta(minutes=10)
    settings = Settings(webhook_lost_after_s=60)
    assert sweep_webhooks_once(sessions, settings) == 2
    assert sorted(sent) == sorted(("face2paint.webhook", (d,), "webhooks") for d in (a, b))
    assert sweep_webhooks_once(sessions, settings) == 0  # their clocks restarted


class _Answers(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/slow":
            time.sleep(2)
        status = {"/ok": 204, "/moved": 302, "/slow": 200}.get(self.path, 500)
        self.send_response(status)
        if status == 302:
            self.send_header("location", "http://127.0.0.1:1/elsewhere")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_one_attempt_never_follows_redirects_and_times_out():
    from face2paint.worker.webhooks import attempt

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert attempt(f"{base}/ok", "{}", {}, 5) == (204, None)
        status, error = attempt(f"{base}/moved", "{}", {}, 5)
        assert status == 302 and "redirects are not followed" in error
        assert attempt(f"{base}/fail", "{}", {}, 5) == (500, "HTTP 500")
        assert attempt(f"{base}/slow", "{}", {}, 0.5) == (None, "no answer within 0.5 s")
    finally:
        srv.shutdown()
        srv.server_close()
    status, error = attempt(base + "/ok", "{}", {}, 5)  # nobody listening any more
    assert status is None and "ConnectError" in error


def test_a_url_that_now_resolves_privately_is_refused_at_delivery(tmp_path, monkeypatch):
    """The check runs again before each attempt (a host may change its address after submit)."""
    from face2paint.settings import get_settings
    from face2paint.worker import context
    from face2paint.worker.webhooks import deliver

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    with session_scope(sessions) as s:
        key = create_api_key(s, "o")
    with session_scope(sessions) as s:
        key_id = s.query(ApiKey).one().id
    job, _ = _job_with_a_rejected_upload(sessions, LocalStorage(tmp_path / "st"),
                                         webhook_url="http://127.0.0.1:9/x", webhook_key=key_id)
    monkeypatch.setenv("FACE2PAINT_DATABASE_URL", url)
    monkeypatch.delenv("FACE2PAINT_WEBHOOK_ALLOW_PRIVATE", raising=False)
    get_settings.cache_clear()
    monkeypatch.setattr(context, "_current", None)
    try:
        with session_scope(sessions) as s:
            first = webhooks.job_deliveries(s, job.id, "o")[0].id
        deliver(first)
        with session_scope(sessions) as s:
            row = s.get(WebhookDelivery, first)
            assert row.failed_at is not None and row.attempts == 1 and row.last_status is None
            assert "private, loopback" in row.last_error and key
    finally:
        get_settings.cache_clear()
        context._current = None
        engine.dispose()


# --- end to end over PostgreSQL, Redis and a worker --------------------------------------------


class Receiver(ThreadingHTTPServer):
    """Checks each delivery's signature; answers 500 to the first two attempts of each
    webhook-id, then 200."""

    daemon_threads = True

    def __init__(self):
        self.secret = None
        self.attempts: dict[str, int] = {}
        self.received: list[dict] = []
        self.bad: list[str] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)


class _ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        srv = self.server
        body = self.rfile.read(int(self.headers["content-length"]))
        try:
            payload = Webhook(srv.secret).verify(body, dict(self.headers))
        except WebhookVerificationError as e:
            srv.bad.append(str(e))
            self.send_response(400)
            self.end_headers()
            return
        wid = self.headers["webhook-id"]
        with srv.lock:
            n = srv.attempts[wid] = srv.attempts.get(wid, 0) + 1
            srv.received.append({"id": wid, "attempt": n, "payload": payload})
        self.send_response(500 if n <= 2 else 200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    srv = Receiver()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.integration
def test_deliveries_retry_until_the_receiver_accepts_them(pg_url, redis_url, s3, tmp_path, receiver):
    with service_stack(pg_url, redis_url, s3, tmp_path / "stack", workers=1,
                       FACE2PAINT_WEBHOOK_ALLOW_PRIVATE="true", FACE2PAINT_WEBHOOK_BACKOFF_BASE_S="0.2") as stack:
        for sessions in stack_sessions(stack):
            with session_scope(sessions) as s:
                receiver.secret = webhook_secret(s, stack.api_key)
        assert receiver.secret and receiver.secret.startswith("whsec_")
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks/face2paint"
        with Client(stack.api_url, stack.api_key) as client:
            job = client.submit([astronaut_path(), ("small.png", _png()), ("broken.jpg", b"\xff\xd8 no")],
                                style=STYLE, options={"webhook_url": url})
            job.wait(poll=0.3, timeout=300)
            assert (job.status, job.succeeded, job.failed) == ("partially_succeeded", 2, 1)
            items = {i["filename"]: i for i in job.items}

            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                deliveries = client.request("GET", f"/v1/jobs/{job.id}/webhooks").json()
                if len(deliveries) == 4 and all(d["delivered_at"] or d["failed_at"] for d in deliveries):
                    break
                time.sleep(0.3)

    assert receiver.bad == []  # every attempt was signed with the key's secret
    by_event = sorted(d["event"] for d in deliveries)
    assert by_event == ["item.failed", "item.succeeded", "item.succeeded", "job.finished"], deliveries
    for d in deliveries:
        assert d["attempts"] == 3 and d["last_status"] == 200 and d["delivered_at"], d
        assert d["failed_at"] is None and d["next_attempt_at"] is None and d["last_error"] is None
        # 500, 500, 200 under one webhook-id.
        assert [r["attempt"] for r in receiver.received if r["id"] == d["id"]] == [1, 2, 3]
    accepted = {r["id"]: r["payload"] for r in receiver.received if r["attempt"] == 3}
    assert len(accepted) == 4
    succeeded = sorted(p["data"]["filename"] for p in accepted.values() if p["type"] == "item.succeeded")
    assert succeeded == ["astronaut.png", "small.png"]
    for p in accepted.values():
        assert p["data"]["job_id"] == job.id and datetime.fromisoformat(p["timestamp"])
        if p["type"] == "item.succeeded":
            item = items[p["data"]["filename"]]
            assert p["data"]["item_id"] == item["id"] and p["data"]["result_url"] == item["result_url"]
        elif p["type"] == "item.failed":
            assert p["data"]["filename"] == "broken.jpg" and p["data"]["error"] == items["broken.jpg"]["error"]
        else:
            assert p["data"] | {"error": None} == {
                "job_id": job.id, "status": "partially_succeeded", "total": 3, "succeeded": 2,
                "failed": 1, "canceled": 0, "error": None, "items_url": f"/v1/jobs/{job.id}/items"}
