"""The job system end to end over real PostgreSQL, Redis and S3, with two worker processes."""

from __future__ import annotations

import io
import shutil
import time

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select

from face2paint.cli.client import Client
from face2paint.jobs.api_keys import create_api_key
from face2paint.jobs.db import FaceRow, Item, Job, StageAttempt, session_scope
from tests.helpers import astronaut_path, faces_dir
from tests.service_stack import service_stack, stack_sessions

pytestmark = pytest.mark.integration

# Photos of at most a face or two, so twenty of them finish in about a minute on 2 cores.
TWENTY = [
    "df_sundar_glasses.jpg", "df_katy_makeup.jpg", "df_elon_stage.jpg", "fr_obama_partial.jpg",
    "fr_miranda_mic.png", "agv3_anime_usa.jpg", "fp_celebahq_116.png", "dk_dog.jpg",
    "dk_scream.jpg", "dlib_john_150.jpg", "bg_makeup_756.png", "fmd_mask_woman.jpg",
    "of_clapton_side.jpg", "pil_hopper_gray.jpg", "pil_hopper_rot45.png", "sk_cameraman.png",
    "sk_coffee.png", "mpl_grace_hopper.jpg", "tk_whiteface_makeup.jpg",
]
ITEM_FLOW = ["queued", "detecting", "parsing", "stylizing", "finalizing", "succeeded"]


@pytest.fixture(scope="module")
def stack(pg_url, redis_url, s3, tmp_path_factory):
    with service_stack(pg_url, redis_url, s3, tmp_path_factory.mktemp("stack"), workers=2,
                       FACE2PAINT_PRESIGN_EXPIRES_S=120) as st:
        yield st


@pytest.fixture(scope="module")
def db(stack):
    yield from stack_sessions(stack)


@pytest.fixture
def client(stack):
    c = Client(stack.api_url, stack.api_key)
    yield c
    c.close()


def _photos(tmp_path, names):
    paths = []
    for name in names:
        dst = tmp_path / name
        shutil.copy(faces_dir() / name, dst)
        paths.append(dst)
    return paths


def test_twenty_photos_complete_with_every_transition_visible(stack, client, db, s3, tmp_path):
    files = [astronaut_path(), *_photos(tmp_path, TWENTY)]
    assert len(files) == 20
    job = client.submit(files, {})
    assert job["status"] == "queued" and job["progress"] == {"done": 0, "failed": 0, "canceled": 0, "pending": 20, "total": 20}
    job_states, item_states = [job["status"]], {}
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        j = client.job(job["id"])
        if j["status"] != job_states[-1]:
            job_states.append(j["status"])
        for it in client.items(job["id"]):
            seen = item_states.setdefault(it["id"], [])
            if not seen or seen[-1] != it["status"]:
                seen.append(it["status"])
        if j["status"] in ("succeeded", "failed", "partially_succeeded", "canceled"):
            break
        time.sleep(0.05)
    assert job_states[0] == "queued" and job_states[-1] == "succeeded", job_states
    assert "running" in job_states
    # Every item moved forward only, and together the items showed every state while polling.
    for states in item_states.values():
        assert [s for s in ITEM_FLOW if s in states] == states, states
    assert set().union(*map(set, item_states.values())) == set(ITEM_FLOW)

    items = client.items(job["id"])
    by_index = sorted(items, key=lambda i: i["index"])
    for item, path in zip(by_index, files):
        assert item["status"] == "succeeded" and item["attempts"] >= 1  # attempts of the current stage
        r = client.http.get(item["result_url"], follow_redirects=False)
        assert r.status_code == 307
        url = r.headers["location"]
        assert url.startswith(s3.endpoint_url) and "Signature" in url
        data = httpx.get(url, timeout=30).content  # no API key: the URL itself authorises
        with Image.open(path) as src, Image.open(io.BytesIO(data)) as out:
            from PIL import ImageOps

            assert out.size == ImageOps.exif_transpose(src).size, path.name

    with db() as s:
        row = s.get(Job, job["id"])
        assert (row.status, row.total, row.succeeded, row.failed) == ("succeeded", 20, 20, 0)
        assert row.finished_at is not None
        attempts = s.scalars(select(StageAttempt).join(Item).where(Item.job_id == job["id"])).all()
        assert len(attempts) == 80 and {a.outcome for a in attempts} == {"succeeded"}
        assert len({a.worker for a in attempts}) == 2  # both workers took work
        for it in s.scalars(select(Item).where(Item.job_id == job["id"])):
            faces = s.scalar(select(func.count()).select_from(FaceRow).where(FaceRow.item_id == it.id))
            # Every detection is cached; face_count is how many went through the recipe.
            assert faces >= it.face_count
            assert set(it.timings) >= {"detect", "parse", "stylize", "finalize"}
    astro = next(i for i in by_index if i["index"] == 0)
    assert astro["face_count"] == 1
    # Exactly one result object per item, under the item's own key.
    keys = s3.storage(stack.base_env["FACE2PAINT_STORAGE_URL"].split("/", 3)[3]).list(f"jobs/{job['id']}/")
    assert len([k for k in keys if k.endswith("/result.png")]) == 20
    # Stage artifacts are removed once an item has its result: inputs and results remain.
    assert len(keys) == 40 and all(k.rsplit("/", 1)[1].startswith(("input.", "result.")) for k in keys)


def test_broken_photo_fails_alone_with_a_reason(client, tmp_path):
    good = astronaut_path()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((faces_dir() / "mpl_grace_hopper.jpg").read_bytes()[:3000])
    text = tmp_path / "notes.jpg"
    text.write_text("<html>not a photo</html>")
    job = client.submit([good, truncated, text], {"style": "classical-cartoon"})
    job = client.wait(job["id"], timeout_s=300)
    assert job["status"] == "partially_succeeded"
    items = {i["filename"]: i for i in client.items(job["id"])}
    assert items["astronaut.png"]["status"] == "succeeded"
    assert items["truncated.jpg"]["status"] == "failed" and "truncated" in items["truncated.jpg"]["error"]
    assert items["notes.jpg"]["status"] == "failed" and "not an image" in items["notes.jpg"]["error"]


def test_idempotent_resubmit_returns_the_same_job(client, tmp_path):
    files = [astronaut_path()]
    first = client.submit(files, {"style": "classical-cartoon"}, idempotency_key="batch-42")
    again = client.submit(files, {"style": "classical-cartoon"}, idempotency_key="batch-42")
    assert again["id"] == first["id"]
    assert len(client.items(first["id"])) == 1
    other = _photos(tmp_path, ["pil_hopper_gray.jpg"])
    r = client.http.post("/v1/jobs", files=[("files", ("x.jpg", other[0].read_bytes(), "image/jpeg"))],
                         headers={"Idempotency-Key": "batch-42"})
    assert r.status_code == 409 and "batch-42" in r.json()["detail"]
    client.wait(first["id"], timeout_s=300)


def test_one_key_cannot_see_another_owners_job(stack, client, db):
    job = client.submit([astronaut_path()], {"style": "classical-cartoon"})
    job = client.wait(job["id"], timeout_s=300)
    item = client.items(job["id"])[0]
    with session_scope(db) as s:
        other_key = create_api_key(s, "mallory")
    mallory = httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {other_key}"})
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("GET", f"/v1/jobs/{job['id']}/items"),
        ("GET", f"/v1/jobs/{job['id']}/items/{item['id']}/result"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
    ]:
        assert mallory.request(method, path).status_code == 404, path
    assert mallory.get("/v1/jobs").json()["jobs"] == []
    assert httpx.get(f"{stack.api_url}/v1/jobs").status_code == 401
    assert httpx.get(f"{stack.api_url}/v1/jobs", headers={"X-API-Key": "f2p_nope"}).status_code == 401
    mallory.close()


def test_cancel_stops_pending_items(client, tmp_path):
    files = _photos(tmp_path, TWENTY[:10])
    job = client.submit(files, {})  # AnimeGAN: slow enough that most items are still pending
    r = client.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    job = client.wait(job["id"], timeout_s=300)
    assert job["status"] == "canceled"
    items = client.items(job["id"])
    assert {i["status"] for i in items} <= {"succeeded", "canceled"}
    canceled = [i for i in items if i["status"] == "canceled"]
    assert len(canceled) >= 6
    for i in canceled:
        assert i["result_url"] is None
        r = client.http.get(f"/v1/jobs/{job['id']}/items/{i['id']}/result")
        assert r.status_code == 410 and "canceled" in r.json()["detail"], r.text


def test_list_jobs_paginates_with_a_cursor(client):
    seen, cursor = [], None
    while True:
        page = client.http.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) >= 4
    assert client.http.get("/v1/jobs", params={"cursor": "garbage"}).status_code == 400


def test_health_readiness_metrics_and_openapi(stack, client):
    assert httpx.get(f"{stack.api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.api_url}/readyz").json()
    assert ready["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    metrics = httpx.get(f"{stack.api_url}/metrics").text
    assert 'face2paint_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in metrics
    spec = httpx.get(f"{stack.api_url}/openapi.json").json()
    assert "/v1/jobs/{job_id}/items/{item_id}/result" in spec["paths"]
