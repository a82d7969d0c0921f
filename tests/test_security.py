"""Security properties of the service, checked over HTTP against a real stack (PostgreSQL,
Redis, S3, two worker processes, and two API processes sharing one rate limiter):

- API keys are stored only as hashes (the api_keys table and a dump of the whole database);
- every route checks ownership (another owner's ids, mixed ids and random ids: 404);
- presigned result URLs expire;
- limits on upload size, files per job, image pixels and request bodies;
- per-key rate limiting (429 with Retry-After), shared across API processes;
- object keys are never built from user-supplied names or types;
- neither API keys nor presigned URLs reach the logs (the API logs at INFO, access log on).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid

import httpx
import psycopg
import pytest
from PIL import Image
from sqlalchemy.engine import make_url

from face2paint.api.ratelimit import RateLimiter, redis_client_for
from face2paint.cli.stack import ProcessStack, free_port
from face2paint.jobs.api_keys import create_api_key, revoke_api_key
from face2paint.jobs.db import session_scope
from tests.helpers import astronaut_path
from tests.service_stack import fresh_database, redis_db, running, stack_sessions

CARTOON = json.dumps({"style": "classical-cartoon"})
TERMINAL = {"succeeded", "failed", "partially_succeeded", "canceled"}
RATE_PER_MINUTE = 30
MAX_UPLOAD_BYTES = 1_000_000
MAX_FILES = 5
MAX_PIXELS = 1_000_000
PRESIGN_S = 2
SAFE_KEY = re.compile(
    r"^jobs/[0-9a-f]{32}/items/[0-9a-f]{32}/"
    r"(input\.(jpg|png|webp|gif|bmp|tiff|bin)|result\.png|(detect|parse|stylize|finalize)/[A-Za-z0-9_.-]+)$"
)

# Every plaintext key this module creates, to look for in the database and the logs.
PLAINTEXT_KEYS: list[str] = []


class InfoLogStack(ProcessStack):
    """The stack with the API at INFO (uvicorn's access log on) and a second API process on
    another port, so the rate limiter is shown to hold across API processes."""

    def _spawn(self, name, cmd):
        cmd = ["info" if c == "warning" else c for c in cmd]
        return super()._spawn(name, cmd)

    def start(self):
        super().start()
        self.port2 = free_port()
        self.procs["api2"] = self._spawn(
            "api2",
            [sys.executable, "-m", "uvicorn", "--factory", "face2paint.api.main:create_app",
             "--host", "127.0.0.1", "--port", str(self.port2), "--log-level", "info"],
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port2}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the second API process did not start")

    @property
    def api_url2(self) -> str:
        return f"http://127.0.0.1:{self.port2}"


@pytest.fixture(scope="module")
def stack(pg_url, redis_url, s3, tmp_path_factory):
    env = {
        "FACE2PAINT_DATABASE_URL": fresh_database(pg_url),
        "FACE2PAINT_BROKER_URL": redis_db(redis_url),
        **s3.env(prefix=f"t-{uuid.uuid4().hex[:8]}"),
        "FACE2PAINT_PRESIGN_EXPIRES_S": str(PRESIGN_S),
        "FACE2PAINT_RATE_LIMIT_PER_MINUTE": str(RATE_PER_MINUTE),
        "FACE2PAINT_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "FACE2PAINT_MAX_FILES_PER_JOB": str(MAX_FILES),
        "FACE2PAINT_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
    }
    with running(InfoLogStack(env, tmp_path_factory.mktemp("security"), workers=2, owner="alice")) as st:
        PLAINTEXT_KEYS.append(st.api_key)
        yield st


@pytest.fixture(scope="module")
def db(stack):
    yield from stack_sessions(stack)


@pytest.fixture(scope="module")
def new_key(db):
    def make(owner: str) -> str:
        with session_scope(db) as s:
            key = create_api_key(s, owner)
        PLAINTEXT_KEYS.append(key)
        return key

    return make


def _client(stack, key: str, second: bool = False) -> httpx.Client:
    return httpx.Client(base_url=stack.api_url2 if second else stack.api_url,
                        headers={"Authorization": f"Bearer {key}"}, timeout=120)


def _png(size=(96, 96)) -> bytes:
    im = Image.open(astronaut_path()).convert("RGB").resize(size)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _submit(http: httpx.Client, files: list[tuple[str, bytes, str]], options: str = CARTOON) -> httpx.Response:
    return http.post("/v1/jobs", files=[("files", f) for f in files], data={"options": options})


def _wait(http: httpx.Client, job_id: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s")


@pytest.fixture(scope="module")
def finished_job(stack):
    """alice's finished job of one photo: (job, item)."""
    with _client(stack, stack.api_key) as http:
        r = _submit(http, [("astronaut.png", _png(), "image/png")])
        assert r.status_code == 202, r.text
        job = _wait(http, r.json()["id"])
        assert job["status"] == "succeeded"
        return job, http.get(f"/v1/jobs/{job['id']}/items").json()[0]


# --- keys -----------------------------------------------------------------------------------


def test_api_keys_are_stored_only_as_hashes(stack, db, new_key, finished_job):
    bob = new_key("bob")
    # The command line's way of creating a key, in its own process.
    out = subprocess.run(
        [sys.executable, "-m", "face2paint.cli.main", "keys", "create", "--owner", "carol"],
        env={**os.environ, **stack.base_env}, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    carol = out.stdout.strip().splitlines()[-1]
    PLAINTEXT_KEYS.append(carol)
    assert carol.startswith("f2p_") and len(carol) > 40
    with _client(stack, carol) as http:
        assert http.get("/v1/jobs").status_code == 200

    url = make_url(stack.base_env["FACE2PAINT_DATABASE_URL"]).set(drivername="postgresql")
    libpq = url.render_as_string(hide_password=False)
    with psycopg.connect(libpq) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'api_keys'")]
        assert "key_hash" in cols and not {"key", "api_key", "plaintext", "secret", "token"} & set(cols)
        rows = {r[0]: r[1] for r in conn.execute("SELECT owner, key_hash FROM api_keys")}
        for owner, key in (("alice", stack.api_key), ("bob", bob), ("carol", carol)):
            assert rows[owner] == hashlib.sha256(key.encode()).hexdigest()
        # Every row of every table, as text: no key, nor a recognisable piece of one.
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        assert {"api_keys", "jobs", "items", "stage_attempts"} <= set(tables)
        dump = "\n".join(
            str(row[0]) for t in tables for row in conn.execute(f'SELECT t::text FROM "{t}" t')
        )
    _assert_no_keys(dump, "the database rows")
    # And pg_dump's view of the whole database, when the client tools are at hand.
    try:
        from tests.servers import postgres_bin_dir

        pg_dump = postgres_bin_dir() / "pg_dump"
    except Exception:  # noqa: BLE001 - external servers may come without local tools
        pg_dump = None
    if pg_dump and pg_dump.exists():
        proc = subprocess.run([str(pg_dump), "--no-owner", libpq], capture_output=True, text=True, timeout=120)
        if "version mismatch" not in proc.stderr:  # an external server newer than our tools
            assert proc.returncode == 0, proc.stderr
            assert "COPY public.api_keys" in proc.stdout
            _assert_no_keys(proc.stdout, "pg_dump")

    # A revoked key stops working at once; an unknown key says nothing about why.
    with session_scope(db) as s:
        assert revoke_api_key(s, bob)
    with _client(stack, bob) as http:
        r = http.get("/v1/jobs")
        assert r.status_code == 401 and r.json()["detail"] == "unknown or revoked API key"


def _assert_no_keys(text: str, where: str) -> None:
    for key in PLAINTEXT_KEYS:
        secret = key.removeprefix("f2p_")
        assert secret[:16] not in text and secret[-16:] not in text, f"an API key appears in {where}"


def test_keys_are_not_accepted_in_query_strings(stack):
    # Query strings end up in access logs and proxies' logs; only headers carry keys.
    r = httpx.get(f"{stack.api_url}/v1/jobs", params={"api_key": "f2p_not_a_real_key"})
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]


# --- ownership ------------------------------------------------------------------------------


def test_every_route_checks_ownership(stack, new_key, finished_job):
    job, item = finished_job
    mallory_key = new_key("mallory")
    mallory = _client(stack, mallory_key)
    alice = _client(stack, stack.api_key)
    r = _submit(mallory, [("m.png", _png((64, 64)), "image/png")])
    assert r.status_code == 202
    m_job = _wait(mallory, r.json()["id"])
    m_item = mallory.get(f"/v1/jobs/{m_job['id']}/items").json()[0]

    rnd = uuid.uuid4().hex
    routes = {
        ("GET", "/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/{job_id}/items"),
        ("GET", "/v1/jobs/{job_id}/items/{item_id}/result"),
        ("GET", "/v1/jobs/{job_id}/items/{item_id}/input"),
        ("GET", "/v1/jobs/{job_id}/events"),
        ("GET", "/v1/jobs/{job_id}/results.zip"),
        ("GET", "/v1/jobs/{job_id}/webhooks"),
        ("POST", "/v1/jobs/{job_id}/cancel"),
        ("DELETE", "/v1/jobs/{job_id}"),
    }
    # Every route of the API with an id in its path is covered here.
    spec = httpx.get(f"{stack.api_url}/openapi.json").json()
    with_ids = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if "{" in p}
    assert with_ids == routes, f"routes not covered by this test: {with_ids - routes}"

    def call(http, method, template, job_id, item_id):
        return http.request(method, template.format(job_id=job_id, item_id=item_id), follow_redirects=False)

    job_cases = [
        ("another owner's job", mallory, job["id"]),
        ("random job id", alice, rnd),
        ("path-like job id", alice, "..%2F..%2Fetc"),
        ("very long job id", alice, "a" * 5000),
    ]
    item_cases = [
        ("another owner's job and item", mallory, job["id"], item["id"]),
        ("another owner's job, own item", mallory, job["id"], m_item["id"]),
        ("own job, another owner's item", mallory, m_job["id"], item["id"]),
        ("own job, another owner's item", alice, job["id"], m_item["id"]),
        ("random item id", alice, job["id"], rnd),
        ("random job and item ids", alice, rnd, uuid.uuid4().hex),
        ("very long item id", alice, job["id"], "b" * 5000),
    ]
    checked = 0
    for method, template in sorted(routes):
        # The owner reaches the job (cancel of a finished job changes nothing); the owner's
        # delete comes last, below.
        if method != "DELETE":
            assert call(alice, method, template, job["id"], item["id"]).status_code in (200, 307), template
        cases = item_cases if "{item_id}" in template else [(w, h, j, item["id"]) for w, h, j in job_cases]
        for who, http, job_id, item_id in cases:
            r = call(http, method, template, job_id, item_id)
            # A well-formed id that is not the caller's is 404; an id of another shape never
            # reaches the database and is refused at the edge (422).
            expected = 422 if who.startswith("very long") else 404
            assert r.status_code == expected, (who, method, template, r.status_code, r.text[:200])
            checked += 1
    n_item_routes = sum(1 for _, t in routes if "{item_id}" in t)
    assert checked == (len(routes) - n_item_routes) * len(job_cases) + n_item_routes * len(item_cases)
    # Mallory's list holds only her own job; the job she could not see is still alice's, intact.
    assert [j["id"] for j in mallory.get("/v1/jobs").json()["jobs"]] == [m_job["id"]]
    assert alice.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    assert httpx.get(f"{stack.api_url}/v1/jobs/{job['id']}").status_code == 401
    assert httpx.delete(f"{stack.api_url}/v1/jobs/{job['id']}").status_code == 401
    mallory.close()
    alice.close()


# --- presigned URLs -------------------------------------------------------------------------


def test_presigned_urls_expire(stack, finished_job):
    job, item = finished_job
    with _client(stack, stack.api_key) as http:
        for attempt in range(3):
            t0 = time.monotonic()
            r = http.get(item["result_url"], follow_redirects=False)
            assert r.status_code == 307
            url = r.headers["location"]
            assert f"X-Amz-Expires={PRESIGN_S}" in url and "X-Amz-Signature=" in url
            first = httpx.get(url, timeout=10)
            if time.monotonic() - t0 < PRESIGN_S - 0.5:
                break  # fetched well within the lifetime (else the machine was too slow: again)
        assert first.status_code == 200 and first.content[:8] == b"\x89PNG\r\n\x1a\n"
        time.sleep(PRESIGN_S + 1.5)
        late = httpx.get(url, timeout=10)
        assert late.status_code == 403, (late.status_code, late.text[:300])
        # A tampered URL does not work either.
        assert httpx.get(url.replace(item["id"], uuid.uuid4().hex), timeout=10).status_code == 403


# --- limits ---------------------------------------------------------------------------------


def test_upload_size_files_per_job_and_pixel_limits(stack):
    small = ("ok.png", _png((64, 64)), "image/png")
    with _client(stack, stack.api_key) as http:
        big = ("big.bmp", b"BM" + os.urandom(MAX_UPLOAD_BYTES), "image/bmp")
        r = _submit(http, [small, big])
        assert r.status_code == 413 and f"limit of {MAX_UPLOAD_BYTES} bytes" in r.json()["detail"]

        r = _submit(http, [small] * (MAX_FILES + 1))
        assert r.status_code == 413 and f"the limit is {MAX_FILES}" in r.json()["detail"]
        r = _submit(http, [small] * MAX_FILES)
        assert r.status_code == 202

        buf = io.BytesIO()
        Image.new("RGB", (1001, 1000), (90, 140, 200)).save(buf, "PNG")
        huge = ("wide.png", buf.getvalue(), "image/png")  # 1 001 000 pixels, a few KB
        r = _submit(http, [huge])
        assert r.status_code == 413 and "above the limit of 1000000" in r.json()["detail"]
        r = _submit(http, [huge, small])
        assert r.status_code == 202
        job = _wait(http, r.json()["id"])
        assert job["status"] == "partially_succeeded"
        items = sorted(http.get(f"/v1/jobs/{job['id']}/items").json(), key=lambda i: i["index"])
        assert items[0]["status"] == "failed" and "above the limit of 1000000" in items[0]["error"]
        assert items[1]["status"] == "succeeded"


def test_request_bodies_above_the_limit_are_refused_before_reading(stack):
    # Content-Length far above what any acceptable upload needs: 413 before a byte is read.
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {stack.api_key}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000000000\r\n\r\n".encode()
        )
        reply = b""
        while chunk := sock.recv(65536):  # the server closes after answering
            reply += chunk
        reply = reply.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply[:300]
    assert "request body larger than" in reply


def test_chunked_bodies_are_counted(stack):
    # No Content-Length (chunked): the body is counted as it streams in.
    limit = MAX_FILES * (MAX_UPLOAD_BYTES + 16 * 1024) + 1024 * 1024
    chunk = b"x" * 65536

    def body():
        yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(limit // len(chunk) + 32):
            yield chunk

    try:
        r = httpx.post(f"{stack.api_url}/v1/jobs", content=body(), timeout=60,
                       headers={"Authorization": f"Bearer {stack.api_key}",
                                "Content-Type": "multipart/form-data; boundary=b"})
    except httpx.TransportError:
        pytest.fail("the server dropped the connection instead of answering 413")
    assert r.status_code == 413, r.text[:300]


# --- rate limiting --------------------------------------------------------------------------


def test_rate_limit_per_key_holds_across_api_processes(stack, new_key):
    a, b = new_key("rate-a"), new_key("rate-b")
    a1, a2, b1 = _client(stack, a), _client(stack, a, second=True), _client(stack, b)
    # Cheap write requests (no files: 400 after the key's token is taken), alternating
    # between the two API processes: there is one bucket, in Redis. The bucket refills at
    # RATE/60 tokens a second meanwhile, so a few more than RATE may pass, never 2 x RATE.
    t0 = time.monotonic()
    codes = []
    while len(codes) < 2 * RATE_PER_MINUTE:
        codes.append((a1 if len(codes) % 2 else a2).post("/v1/jobs").status_code)
        if codes[-1] == 429:
            break
    elapsed = time.monotonic() - t0
    allowed = codes.index(429) if 429 in codes else len(codes)
    assert set(codes[:allowed]) == {400}, codes
    assert RATE_PER_MINUTE <= allowed <= RATE_PER_MINUTE + elapsed * RATE_PER_MINUTE / 60 + 1, (allowed, elapsed)
    refused_at = time.monotonic()
    refused = a1.post("/v1/jobs")
    assert refused.status_code == 429 or time.monotonic() - refused_at > 60 / RATE_PER_MINUTE
    if refused.status_code == 429:
        detail = refused.json()["detail"]
        assert "rate limit" in detail and f"at most {RATE_PER_MINUTE} write requests per minute" in detail
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 60 / RATE_PER_MINUTE + 1
    # Another key is unaffected, and reads have their own, larger budget.
    assert b1.post("/v1/jobs").status_code == 400
    r = b1.get("/v1/jobs")
    assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == f"{RATE_PER_MINUTE * 20};w=60"
    assert a1.get("/v1/jobs").status_code == 200
    # Tokens come back at the advertised pace (one every 60/RATE s), in both processes.
    time.sleep(60 / RATE_PER_MINUTE + 0.3)
    again = [a2.post("/v1/jobs").status_code]
    while again[-1] != 429 and len(again) < 6:
        again.append((a1 if len(again) % 2 else a2).post("/v1/jobs").status_code)
    assert again[0] == 400 and again[-1] == 429 and len(again) <= 4, again
    # The buckets in Redis are named by the key's hash, never the key.
    import redis

    r = redis.Redis.from_url(stack.base_env["FACE2PAINT_BROKER_URL"])
    names = [k.decode() for k in r.scan_iter("face2paint:ratelimit:*")]
    assert f"face2paint:ratelimit:write:{hashlib.sha256(a.encode()).hexdigest()}" in names
    assert not any(a[4:] in n or b[4:] in n for n in names)
    r.close()
    for c in (a1, a2, b1):
        c.close()


def test_rate_limiter_without_redis_limits_per_process():
    class S:
        rate_limit_per_minute = 3
        broker_url = "memory://"

    limiter = RateLimiter.from_settings(S())
    assert limiter.backend == "memory"
    assert [limiter.check("h1", "write").allowed for _ in range(4)] == [True, True, True, False]
    d = limiter.check("h1", "write")
    assert not d.allowed and 1 <= int(d.retry_after_header) <= 20
    assert limiter.check("h2", "write").allowed and limiter.check("h1", "read").allowed
    S.rate_limit_per_minute = 0
    off = RateLimiter.from_settings(S())
    assert all(off.check("h1", "write").allowed for _ in range(100))


def test_broker_urls_map_to_redis_clients():
    assert redis_client_for("memory://") is None and redis_client_for(None) is None
    assert redis_client_for("amqp://guest@localhost//") is None
    c = redis_client_for("redis+socket:///tmp/x/redis.socket?virtual_host=3")
    kw = c.connection_pool.connection_kwargs
    assert kw["path"] == "/tmp/x/redis.socket" and kw["db"] == 3
    c = redis_client_for("redis://:pw@127.0.0.1:6390/4")
    kw = c.connection_pool.connection_kwargs
    assert (kw["host"], kw["port"], kw["db"], kw["password"]) == ("127.0.0.1", 6390, 4, "pw")


def test_redis_outage_falls_back_to_per_process_limits():
    limiter = RateLimiter(2, redis_client_for(f"redis://127.0.0.1:{free_port()}/0"))
    t0 = time.monotonic()
    assert [limiter.check("h", "write").allowed for _ in range(3)] == [True, True, False]
    assert limiter.backend == "redis"
    # One connect timeout, not one per request: after the error the process keeps the count.
    assert time.monotonic() - t0 < 1.0


# --- object keys ----------------------------------------------------------------------------


def test_object_keys_and_types_never_come_from_the_client(stack, s3):
    evil_names = ["../../evil;rm -rf ~.png", "C:\\evil\\x.png", "%2e%2e%2fevil.png", "evil\u2215slash.png"]
    with _client(stack, stack.api_key) as http:
        files = [(n, _png((64, 64)), "text/html; charset=../../evil") for n in evil_names]
        r = _submit(http, files[:MAX_FILES])
        assert r.status_code == 202, r.text
        job = _wait(http, r.json()["id"])
        assert job["status"] == "succeeded"
        items = http.get(f"/v1/jobs/{job['id']}/items").json()
    assert all("/" not in i["filename"] and "\\" not in i["filename"] for i in items)
    prefix = stack.base_env["FACE2PAINT_STORAGE_URL"].split("/", 3)[3]
    keys = s3.storage(prefix).list(f"jobs/{job['id']}/")
    assert len([k for k in keys if k.endswith("/result.png")]) == len(evil_names)
    for key in keys:
        assert SAFE_KEY.match(key), key
        assert "evil" not in key
    # The stored inputs carry the sniffed type, not the declared one.
    client = s3.client()
    for key in keys:
        if "/input." in key:
            head = client.head_object(Bucket=s3.bucket, Key=f"{prefix}/{key}")
            assert head["ContentType"] == "image/png", head["ContentType"]


# --- logs (last: it reads what every test above logged) --------------------------------------


def test_no_keys_or_presigned_urls_in_logs(stack, finished_job):
    job, item = finished_job
    with _client(stack, stack.api_key) as http:
        r = http.get(item["result_url"], follow_redirects=False)
        assert "X-Amz-Signature=" in r.headers["location"]
    time.sleep(0.5)  # let the access log line reach the file
    logs = {name: stack.log(name) for name in stack.procs}
    api = logs["api"] + logs["api2"]
    # The check means something: the access log is on and shows the request just made.
    assert f'"GET /v1/jobs/{job["id"]}/items/{item["id"]}/result HTTP/1.1" 307' in api
    assert PLAINTEXT_KEYS
    secret = stack.base_env["AWS_SECRET_ACCESS_KEY"]
    for name, text in logs.items():
        assert text, f"{name} logged nothing"
        _assert_no_keys(text, f"the {name} log")
        for marker in ("X-Amz-Signature", "X-Amz-Credential", "Signature=", secret, "Bearer "):
            assert marker not in text, f"{marker!r} in the {name} log"
    # Query strings are logged, so none may carry a secret: the only query parameters of the
    # API are the listing's cursor and limit.
    for line in api.splitlines():
        m = re.search(r'"[A-Z]+ (\S+) HTTP', line)
        if m and "?" in m.group(1):
            params = dict(p.split("=", 1) for p in m.group(1).split("?", 1)[1].split("&") if "=" in p)
            assert set(params) <= {"cursor", "limit", "api_key"}, line
            assert params.get("api_key", "f2p_not_a_real_key") == "f2p_not_a_real_key"
