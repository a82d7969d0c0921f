"""The Python client (face2paint/client.py): against a real embedded stack (SQLite, local
storage, embedded Redis, a real worker process), and its retries against a real loopback HTTP
server that answers 429 and 503 before 200."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from face2paint.cli.stack import EmbeddedStack
from face2paint.client import (
    Client,
    ClientError,
    ConnectionFailed,
    InvalidRequest,
    Job,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    filename_from,
)
from tests.helpers import astronaut_path, model_dir
from tests.service_stack import running

STYLE = "classical-cartoon"  # no weights: fast on two cores


def _png(size=(96, 80), color=(200, 120, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    model_dir()  # skips without weights, like the other end-to-end tests
    with running(EmbeddedStack(tmp_path_factory.mktemp("client-stack"))) as st:
        yield st


@pytest.fixture
def client(stack):
    with Client(stack.api_url, stack.api_key, timeout=30) as c:
        yield c


def test_submit_wait_download_and_page_through_jobs(client, tmp_path):
    job = client.submit([astronaut_path(), ("portrait.png", _png())], style=STYLE)
    assert job.status == "queued" and job.total == 2
    seen = []
    job.wait(progress=lambda j: seen.append((j.status, j.done)), poll=0.2, timeout=300)
    assert seen and seen[-1] == ("succeeded", 2), seen
    assert all(done <= 2 for _, done in seen)
    assert job.finished and job.succeeded == 2
    assert [i["filename"] for i in sorted(job.items, key=lambda i: i["index"])] == ["astronaut.png", "portrait.png"]

    paths = job.download(tmp_path / "out")
    assert [p.name for p in paths] == ["astronaut.png", "portrait.png"]  # the server's names
    with Image.open(paths[0]) as a, Image.open(paths[1]) as b:
        assert a.size == (512, 512) and b.size == (96, 80)

    other = client.submit(_png(color=(10, 200, 10)), options={"style": STYLE, "output_format": "jpeg"})
    other.wait(poll=0.2, timeout=300)
    (result,) = other.download(tmp_path / "other")
    assert result.name == "photo-1.jpg" and result.read_bytes()[:2] == b"\xff\xd8"

    pages = []
    real = client.request

    def counting(method, path, **kw):
        if path == "/v1/jobs" and method == "GET":
            pages.append(kw.get("params"))
        return real(method, path, **kw)

    client.request = counting
    listed = [j.id for j in client.jobs(page_size=1)]
    assert listed == [other.id, job.id]  # newest first
    assert len(pages) == 2 and "cursor" in pages[1]  # one job per page, the second by cursor
    assert client.job(job.id).status == "succeeded"


def test_typed_errors_carry_the_servers_message(stack, client):
    with Client(stack.api_url, "f2p_not_a_key", retries=0) as stranger:
        with pytest.raises(Unauthorized) as e:
            stranger.job("0" * 32)
    assert e.value.status == 401 and "unknown or revoked API key" in e.value.message
    with pytest.raises(NotFound) as e:
        client.job("0" * 32)
    assert e.value.status == 404 and "\n" not in str(e.value)
    with pytest.raises(InvalidRequest) as e:
        client.submit(("a.png", _png()), options={"style": "no-such-style"})
    assert e.value.status == 422 and "unknown style" in e.value.message
    assert isinstance(e.value, ClientError)


def test_an_unreachable_server_is_one_readable_error():
    from face2paint.cli.stack import free_port

    with Client(f"http://127.0.0.1:{free_port()}", "k", retries=1, sleep=lambda s: None) as c:
        with pytest.raises(ConnectionFailed, match="cannot reach .* is the server running") as e:
            c.job("0" * 32)
    assert isinstance(e.value, ConnectionError) and e.value.status is None


# --- retries against a loopback server --------------------------------------------------------


class Scripted(ThreadingHTTPServer):
    """Answers each request with the next (status, headers) of its script, then 200."""

    daemon_threads = True

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        self.job_status = "queued"
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    def _answer(self):
        srv = self.server
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        srv.requests.append((self.command, self.path, self.headers.get("idempotency-key"), len(body)))
        status, headers = srv.script.pop(0) if srv.script else (200, {})
        payload = {"detail": f"scripted {status}"} if status >= 400 else {
            "id": "a" * 32, "status": srv.job_status, "progress": {"done": 0, "total": 1}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    servers = []

    def make(*script):
        srv = Scripted(script)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv, f"http://127.0.0.1:{srv.server_address[1]}"

    yield make
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_429_is_retried_after_its_retry_after(scripted):
    srv, url = scripted((429, {"Retry-After": "1"}))
    slept = []
    with Client(url, "k", sleep=slept.append) as c:
        assert c.job("a" * 32).status == "queued"
    assert slept == [1.0] and len(srv.requests) == 2


def test_503_is_retried_and_a_submit_keeps_its_idempotency_key(scripted):
    srv, url = scripted((503, {"Retry-After": "1"}))
    slept = []
    with Client(url, "k", sleep=slept.append) as c:
        job = c.submit(("a.png", _png()))
    assert job.id == "a" * 32 and slept == [1.0]
    (m1, _, key1, size1), (m2, _, key2, size2) = srv.requests
    # The same body again (the file read from its start) under the same key: one job at most.
    assert m1 == m2 == "POST" and key1 == key2 and key1.startswith("client-") and size1 == size2 > 100


def test_retries_are_bounded_and_their_waits_capped(scripted):
    srv, url = scripted(*[(429, {"Retry-After": "3600"})] * 10)
    slept = []
    with Client(url, "k", retries=2, max_retry_wait_s=5, sleep=slept.append) as c:
        with pytest.raises(RateLimited) as e:
            c.job("a" * 32)
    assert slept == [5, 5] and len(srv.requests) == 3
    assert e.value.retry_after == 3600 and e.value.message == "scripted 429"
    srv, url = scripted((503, {}), (503, {}))
    with Client(url, "k", retries=1, sleep=slept.append) as c:
        with pytest.raises(Unavailable):
            c.job("a" * 32)


def test_a_wait_whose_event_stream_fails_polls_instead(scripted):
    srv, url = scripted((503, {}))
    srv.job_status = "succeeded"
    with Client(url, "k", retries=0) as c:
        job = Job(c, {"id": "a" * 32}).wait(poll=0.01, timeout=30)
    assert job.status == "succeeded"
    assert [p for _, p, _, _ in srv.requests] == [f"/v1/jobs/{'a' * 32}/events", f"/v1/jobs/{'a' * 32}"]


def test_photos_may_be_given_several_ways(scripted, tmp_path):
    srv, url = scripted()
    (tmp_path / "a.png").write_bytes(_png())
    with Client(url, "k") as c:
        c.submit((str(tmp_path / "a.png"), tmp_path / "a.png"))  # a tuple of paths: two photos
        c.submit(("b.png", io.BytesIO(_png())))  # one (name, file) pair
        with pytest.raises(TypeError, match="give a path, bytes or"):
            c.submit([42])
    assert len(srv.requests) == 2 and srv.requests[0][3] > srv.requests[1][3]


def test_content_disposition_names():
    assert filename_from('attachment; filename="a b.png"') == "a b.png"
    assert filename_from("attachment; filename=\"_.png\"; filename*=UTF-8''%C3%A9t%C3%A9.png") == "été.png"
    assert filename_from(None) is None
