"""The API's edge: authentication before the body, the per-address limit on failed
authentication, body framing, defensive cursors, and log lines that client text cannot forge.

The upload tests run a real uvicorn server in this process (tests/live_api.py) over SQLite and
a local storage directory, with the app wrapped in a counter of the body bytes it receives, so
"refused before a byte of the body is read" is measured, not inferred.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from face2paint.api import logs
from face2paint.api.app import create_app
from face2paint.jobs.api_keys import create_api_key, revoke_api_key
from face2paint.jobs.db import make_engine, session_factory, session_scope
from face2paint.jobs.errors import InvalidCursor
from face2paint.jobs.listing import decode_cursor, encode_cursor
from face2paint.jobs.migrate import upgrade
from face2paint.settings import Settings
from tests.live_api import serve

MiB = 1024 * 1024
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # anything but a line break


class CountingBody:
    """ASGI wrapper: how many request body bytes the app took from the server."""

    def __init__(self, app):
        self.app = app
        self.received = 0

    async def __call__(self, scope, receive, send):
        async def counting():
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counting if scope["type"] == "http" else receive, send)


def _settings(home: Path, **kw) -> Settings:
    base = dict(home=home, database_url=None, storage_url=None, broker_url="memory://",
                rate_limit_per_minute=0, auth_failures_per_minute=0)
    return Settings(**{**base, **kw})


def _keys(settings: Settings, *owners: str) -> list[str]:
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(session_factory(engine)) as s:
            return [create_api_key(s, o) for o in owners]
    finally:
        engine.dispose()


def _revoke(settings: Settings, key: str) -> None:
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(session_factory(engine)) as s:
            assert revoke_api_key(s, key)
    finally:
        engine.dispose()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def _read_reply(sock: socket.socket, timeout_s: float) -> bytes:
    """What the server sends until it closes the connection (or the timeout)."""
    sock.settimeout(timeout_s)
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return reply


def _fds_under(directory: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


# --- authentication before the body -------------------------------------------------------------


def test_an_unauthenticated_200_mb_upload_is_refused_before_its_body_is_read(tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where the form parser would spool
    # Limits raised so that 200 MB is an acceptable request size: only the key can refuse it.
    settings = _settings(tmp_path, max_upload_bytes=64 * MiB, max_files_per_job=4)
    good, revoked = _keys(settings, "alice", "revoked")
    _revoke(settings, revoked)
    app = CountingBody(create_app(settings, sweeper=False))
    total = 200 * 1000 * 1000
    first_part = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
                  b"Content-Type: image/png\r\n\r\n" + _png() + b"\0" * (256 * 1024))
    with serve(app) as base_url:
        port = int(base_url.rsplit(":", 1)[1])

        def send_headers_and_some_body(auth_header: str) -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(
                (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n{auth_header}"
                 "Content-Type: multipart/form-data; boundary=b\r\n"
                 f"Content-Length: {total}\r\n\r\n").encode() + first_part)
            return sock

        for case, header, detail in [
            ("no key", "", "missing API key"),
            ("unknown key", "Authorization: Bearer f2p_not-a-key\r\n", "unknown or revoked API key"),
            ("revoked key", f"X-API-Key: {revoked}\r\n", "unknown or revoked API key"),
        ]:
            t0 = time.monotonic()
            with send_headers_and_some_body(header) as sock:
                # At once, with 199.7 MB still unsent, and the connection closed after it.
                reply = _read_reply(sock, timeout_s=20).decode(errors="replace")
            assert reply.startswith("HTTP/1.1 401"), (case, reply[:300])
            assert detail in reply and "connection: close" in reply.lower(), (case, reply[:400])
            assert time.monotonic() - t0 < 20, case
            assert app.received == 0, f"{case}: the app read {app.received} body bytes"
            assert not list(spool.iterdir()) and not _fds_under(spool), case

        # The control: with a valid key the same request is read as it arrives.
        with send_headers_and_some_body(f"Authorization: Bearer {good}\r\n") as sock:
            deadline = time.monotonic() + 20
            while app.received < len(first_part) and time.monotonic() < deadline:
                time.sleep(0.05)
        assert app.received >= len(first_part)


def test_failed_authentications_are_limited_per_client_address(tmp_path, redis_url):
    settings = _settings(tmp_path, broker_url=redis_url, auth_failures_per_minute=20)
    (good,) = _keys(settings, "alice")
    app = create_app(settings, sweeper=False)
    with TestClient(app, client=("203.0.113.7", 1000)) as attacker, \
            TestClient(app, client=("203.0.113.8", 1000)) as neighbour:
        assert app.state.limiter.backend == "redis"
        bad = {"Authorization": "Bearer f2p_guess"}
        codes = [attacker.get("/v1/jobs", headers=bad).status_code for _ in range(20)]
        assert codes == [401] * 20
        r = attacker.post("/v1/jobs", headers=bad)
        assert r.status_code == 429 and "too many failed authentications" in r.json()["detail"]
        assert 1 <= int(r.headers["Retry-After"]) <= 60 / 20 + 1
        # Refused before the lookup, valid key or not, until the bucket refills...
        assert attacker.get("/v1/jobs", headers={"Authorization": f"Bearer {good}"}).status_code == 429
        # ...and only for that address.
        assert neighbour.get("/v1/jobs", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        assert neighbour.get("/v1/jobs", headers=bad).status_code == 401
        # The buckets are in Redis (shared by API processes), named by address.
        import redis

        client = redis.Redis.from_url(redis_url)
        try:
            assert client.exists("face2paint:ratelimit:authfail:203.0.113.7")
        finally:
            client.close()
        time.sleep(60 / 20 + 0.5)  # one failure's worth refilled
        assert attacker.get("/v1/jobs", headers={"Authorization": f"Bearer {good}"}).status_code == 200


def test_the_middleware_authenticates_every_route_that_takes_a_key(tmp_path):
    """Every operation of the OpenAPI document that declares the API-key security is refused by
    the middleware (401 with its message) without a key, and the open ones are not."""
    settings = _settings(tmp_path)
    _keys(settings, "alice")
    app = create_app(settings, sweeper=False)
    with TestClient(app) as http:
        spec = http.get("/openapi.json").json()
        secured = 0
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                url = path.replace("{job_id}", "0" * 32).replace("{item_id}", "1" * 32)
                r = http.request(method.upper(), url)
                if op.get("security"):
                    secured += 1
                    assert r.status_code == 401 and "missing API key" in r.json()["detail"], (method, path)
                    assert "401" in op["responses"] and "429" in op["responses"], (method, path)
                else:
                    assert r.status_code != 401, (method, path)
        assert secured >= 6


# --- body framing -------------------------------------------------------------------------------


def test_content_length_with_transfer_encoding_is_refused(tmp_path):
    settings = _settings(tmp_path)
    (key,) = _keys(settings, "alice")
    with serve(create_app(settings, sweeper=False)) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                 "Content-Type: multipart/form-data; boundary=b\r\n"
                 "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").encode())
            reply = _read_reply(sock, timeout_s=20).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 400"), reply[:300]
    assert "Content-Length or Transfer-Encoding, not both" in reply


# --- cursors ------------------------------------------------------------------------------------


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,
    b'[["2024-01-01T00:00:00+00:00"], "' + b"0" * 32 + b'"]',
    json.dumps(["0001-01-01T00:00:00+05:00", "0" * 32]).encode(),
    json.dumps(["9999-12-31T23:59:59-05:00", "0" * 32]).encode(),
    json.dumps(["1900-01-01T00:00:00+00:00", "0" * 32]).encode(),
    json.dumps(["2024-01-01T00:00:00+00:00", "a\u0000b"]).encode(),
    json.dumps(["2024-01-01T00:00:00\u0000+00:00", "0" * 32]).encode(),
    b'["2024-01-01T00:00:00+00:00", "\\ud800' + b"0" * 27 + b'"]',
    json.dumps(["2024-01-01T00:00:00", "0" * 32]).encode(),
    json.dumps(["2024-01-01T00:00:00+00:00", "0" * 32, "extra"]).encode(),
    json.dumps({"created": "2024-01-01T00:00:00+00:00"}).encode(),
    json.dumps([1e308, 7]).encode(),
    b"\xff\xfe\xfd",
    b"",
], ids=lambda raw: repr(raw[:24]))
def test_bad_cursors_are_one_fixed_error(raw):
    with pytest.raises(InvalidCursor) as e:
        decode_cursor(_cursor(raw))
    assert str(e.value) == str(InvalidCursor())


def test_cursor_shapes_and_sizes_are_refused_before_decoding():
    for cursor in ["", "x" * 100_000, "abc$", "a\u0000b", "\ud800", "é"]:
        with pytest.raises(InvalidCursor):
            decode_cursor(cursor)


def test_cursors_round_trip():
    from datetime import datetime, timedelta, timezone

    class J:
        created_at = datetime(2026, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
        id = "ab" * 16

    ts, job_id = decode_cursor(encode_cursor(J))
    assert (ts, job_id) == (J.created_at, J.id) and ts.tzinfo == timezone.utc


# --- logs ---------------------------------------------------------------------------------------


def test_log_lines_escape_control_characters_and_surrogates():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.EscapeControls())
    log = logging.getLogger("face2paint.test-escape")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("unhandled error on %s %s", "GET", "/v1/jobs/a\x00b\r\nFORGED line\x1b[31m\ud800")
        try:
            raise ValueError("bad\r\nFORGED\x00")
        except ValueError:
            log.exception("failed: %r", {"path": "x\ny"})
        log.warning("plain %d%%", 5)
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert not CONTROL.search(text) and not re.search(r"[\ud800-\udfff]", text), text
    lines = text.splitlines()
    assert lines[0] == r"unhandled error on GET /v1/jobs/a\x00b\x0d\x0aFORGED line\x1b[31m\ud800"
    assert not any(line.startswith("FORGED") for line in lines), lines
    assert r"ValueError: bad\x0d\x0aFORGED\x00" in text and lines[-1] == "plain 5%"


def test_access_log_and_error_answers_carry_no_raw_control_bytes(tmp_path, capfd):
    settings = _settings(tmp_path)
    (key,) = _keys(settings, "alice")
    with serve(create_app(settings, sweeper=False), log_level="info") as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        replies = []
        for target in ["/v1/jobs/a%00b%0d%0aFORGED", "/v1/jobs?cursor=%00%0d%0aFORGED%1b",
                       "/v1/jobs/%ed%a0%80/items", "/v1/jobs?limit=%0a%0d"]:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                             "Connection: close\r\n\r\n".encode())
                replies.append(_read_reply(sock, timeout_s=20).decode("latin-1"))
    out = capfd.readouterr()
    log = out.out + out.err
    assert "GET /v1/jobs" in log, log[-2000:]
    assert not CONTROL.search(log), [line for line in log.splitlines() if CONTROL.search(line)]
    assert not any(line.startswith("FORGED") for line in log.splitlines())
    for reply in replies:
        status, body = reply.split("\r\n", 1)[0], reply.split("\r\n\r\n", 1)[-1]
        assert status.split()[1] in ("400", "422"), reply[:300]
        assert not CONTROL.search(body), body
