"""Privacy: deleting a job removes every object of it from storage and hides it for good;
finished jobs expire after the retention period (their objects removed, their results 410);
canceled and failed items keep no intermediate files and answer 410 with their reason.

Over real PostgreSQL and the S3 test server (and SQLite + a local directory); the API runs in
process and items move through their stages by the domain functions the workers call, with
objects stored where a worker stores them. The bucket is listed with a plain S3 client."""

from __future__ import annotations

import io
import json
import uuid
from datetime import timedelta

import pytest
from PIL import Image

from face2paint.api.sweeper import retention_once
from face2paint.jobs.db import Item, Job, make_engine, session_factory, session_scope, utcnow
from face2paint.jobs.keys import artifact_key, result_key
from face2paint.jobs.stages import begin_stage, fail_item, finish_stage
from face2paint.jobs.states import STAGES
from tests.service_stack import in_process_api


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(params=["s3", "local"])
def api(request, tmp_path, monkeypatch):
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    with in_process_api(request, tmp_path, monkeypatch, prefix) as (client, _, s3):
        def objects(job_id: str) -> list[str]:
            """What the bucket (or directory) really holds under the job's prefix."""
            if s3 is None:
                root = tmp_path / "storage" / "jobs" / job_id
                return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []
            resp = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix}/jobs/{job_id}/")
            return [o["Key"] for o in resp.get("Contents", [])]

        client.objects = objects
        yield client


def _submit(api, n=3):
    files = [("files", (f"p{i}.png", _png((40 * i, 0, 0)), "image/png")) for i in range(n)]
    r = api.post("/v1/jobs", files=files, data={"options": json.dumps({"face2paint": False})})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    items = sorted(api.get(f"/v1/jobs/{job_id}/items").json(), key=lambda i: i["index"])
    return job_id, [i["id"] for i in items]


def _succeed(api, job_id, item_id):
    """What a worker does for a whole chain: artifacts per stage, the result, artifacts gone."""
    with session_scope(api.sessions) as s:
        for stage in STAGES:
            api.storage.put_bytes(artifact_key(job_id, item_id, stage, "x.npy"), b"artifact")
            attempt = begin_stage(s, item_id, stage, "test")
            key = None
            if stage == STAGES[-1]:
                key = result_key(job_id, item_id)
                api.storage.put_bytes(key, _png("white"), "image/png")
            assert finish_stage(s, attempt, output_key=key,
                                models={"stylize": "classical-cartoon"} if stage == "stylize" else None)
    for stage in STAGES:
        api.storage.delete(artifact_key(job_id, item_id, stage, "x.npy"))


def _midway(api, job_id, item_id):
    """An item whose detect stage is running: its first artifact is stored."""
    api.storage.put_bytes(artifact_key(job_id, item_id, "detect", "image.npy"), b"pixels")
    with session_scope(api.sessions) as s:
        assert begin_stage(s, item_id, "detect", "test") is not None


def test_delete_removes_every_object_and_hides_the_job(api):
    job_id, (done, running, queued) = _submit(api)
    _succeed(api, job_id, done)
    _midway(api, job_id, running)
    assert len(api.objects(job_id)) == 5  # 3 inputs, 1 result, 1 artifact
    other = {"Authorization": f"Bearer {api.other_key}"}
    assert api.delete(f"/v1/jobs/{job_id}", headers=other).status_code == 404
    assert len(api.objects(job_id)) == 5

    r = api.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 204, r.text
    assert api.objects(job_id) == []
    # What was still running is canceled, with the reason.
    with session_scope(api.sessions) as s:
        job = s.get(Job, job_id)
        assert job.deleted_at is not None and job.purged_at is not None
        rows = {i.id: i for i in s.query(Item).filter(Item.job_id == job_id)}
        assert rows[running].status == rows[queued].status == "canceled"
        assert "deleted" in rows[running].error
        assert rows[done].status == "succeeded"
    # 404 on every route of the job, and it leaves the listing.
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/items",
                 f"/v1/jobs/{job_id}/items/{done}/result", f"/v1/jobs/{job_id}/items/{done}/input",
                 f"/v1/jobs/{job_id}/results.zip", f"/v1/jobs/{job_id}/events"):
        assert api.get(path).status_code == 404, path
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
    assert job_id not in [j["id"] for j in api.get("/v1/jobs").json()["jobs"]]
    # Idempotent.
    assert api.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert api.objects(job_id) == []
    # A stage that was running finds its item canceled and goes no further.
    with session_scope(api.sessions) as s:
        assert begin_stage(s, running, "parse", "test") is None


def test_delete_answers_404_for_unknown_jobs(api):
    assert api.delete(f"/v1/jobs/{uuid.uuid4().hex}").status_code == 404
    assert api.delete("/v1/jobs/not-an-id").status_code == 422


def test_retention_expires_finished_jobs_and_removes_their_objects(api):
    old, (a, b, c) = _submit(api)
    for item in (a, b):
        _succeed(api, old, item)
    with session_scope(api.sessions) as s:
        fail_item(s, c, "detect: not a face")
    recent, (d, e, f) = _submit(api)
    for item in (d, e, f):
        _succeed(api, recent, item)
    running, _ = _submit(api, 1)
    with session_scope(api.sessions) as s:
        s.get(Job, old).finished_at = utcnow() - timedelta(days=8)
        s.get(Job, recent).finished_at = utcnow() - timedelta(days=6)
        # Pending jobs never expire, however old.
        s.get(Job, running).created_at = utcnow() - timedelta(days=30)
    assert len(api.objects(old)) == 5

    assert retention_once(api.sessions, api.storage, api.settings) == 1
    assert api.objects(old) == []
    assert len(api.objects(recent)) == 6 and len(api.objects(running)) == 1
    job = api.get(f"/v1/jobs/{old}").json()
    assert job["expired_at"] is not None and job["status"] == "partially_succeeded"
    r = api.get(f"/v1/jobs/{old}/items/{a}/result")
    assert r.status_code == 410
    assert "expired after 7 days" in r.json()["detail"]
    assert api.get(f"/v1/jobs/{old}/results.zip").status_code == 410
    assert api.get(f"/v1/jobs/{old}/items/{a}/input").status_code == 410
    assert api.get(f"/v1/jobs/{recent}/items/{d}/result", params={"redirect": False}).status_code == 200
    # A second sweep has nothing more to do; an expired job can still be deleted.
    assert retention_once(api.sessions, api.storage, api.settings) == 0
    assert api.delete(f"/v1/jobs/{old}").status_code == 204
    assert api.get(f"/v1/jobs/{old}").status_code == 404

    # Retention 0: every finished job goes at the next sweep.
    zero = api.settings.model_copy(update={"retention_days": 0})
    assert retention_once(api.sessions, api.storage, zero) == 1
    assert api.objects(recent) == [] and len(api.objects(running)) == 1
    assert api.get(f"/v1/jobs/{recent}/results.zip").status_code == 410


def test_canceled_and_failed_items_keep_no_artifacts_and_answer_410(api):
    job_id, (done, running, queued) = _submit(api)
    _succeed(api, job_id, done)
    _midway(api, job_id, running)
    r = api.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200
    job = r.json()
    assert job["status"] == "canceled"
    assert job["progress"] == {"done": 1, "failed": 0, "canceled": 2, "pending": 0, "total": 3}
    assert job["models"] == {"stylize": ["classical-cartoon"]}
    # Inputs stay (the job is kept), the canceled item's artifact went, the result stays.
    assert not [k for k in api.objects(job_id) if "/detect/" in k]
    assert len(api.objects(job_id)) == 4
    items = {i["id"]: i for i in api.get(f"/v1/jobs/{job_id}/items").json()}
    assert items[queued]["error"] == "canceled by the owner"
    assert items[done]["models"] == {"stylize": "classical-cartoon"}
    r = api.get(f"/v1/jobs/{job_id}/items/{queued}/result")
    assert r.status_code == 410 and "canceled by the owner" in r.json()["detail"]

    failing, (x, y, _) = _submit(api)
    with session_scope(api.sessions) as s:
        fail_item(s, x, "detect: the photo could not be read")
    r = api.get(f"/v1/jobs/{failing}/items/{x}/result")
    assert r.status_code == 410 and "could not be read" in r.json()["detail"]
    r = api.get(f"/v1/jobs/{failing}/items/{y}/result")
    assert r.status_code == 409 and "no result yet" in r.json()["detail"]
    progress = api.get(f"/v1/jobs/{failing}").json()["progress"]
    assert progress == {"done": 0, "failed": 1, "canceled": 0, "pending": 2, "total": 3}


def test_a_stage_running_while_its_job_is_deleted_leaves_nothing(tmp_path):
    """A real worker in the embedded stack, held in its stylize stage (fault point, right after
    its first artifact) while the job is deleted: when it goes on, it finds its item canceled
    and removes what it wrote after the purge."""
    import time

    from face2paint.cli.client import Client
    from face2paint.cli.stack import EmbeddedStack
    from face2paint.jobs.storage import LocalStorage
    from face2paint.worker.faults import marker_path

    home = tmp_path / "home"
    faults, models = tmp_path / "faults", tmp_path / "no-weights"
    faults.mkdir()
    models.mkdir()
    stack = EmbeddedStack(home)
    stack.base_env.update(FACE2PAINT_MODEL_DIR=str(models), FACE2PAINT_FAULTS="pause:stylize:hold-",
                          FACE2PAINT_FAULTS_DIR=str(faults))
    photos = []
    for name in ("hold-me.png", "free.png"):
        Image.new("RGB", (32, 32), "red").save(tmp_path / name)
        photos.append(tmp_path / name)
    storage = LocalStorage(home / "storage")
    try:
        stack.start()
        client = Client(stack.api_url, stack.api_key)
        job = client.submit(photos, {"style": "classical-cartoon", "face2paint": False})
        held = next(i["id"] for i in client.items(job["id"]) if i["filename"] == "hold-me.png")
        paused = marker_path(faults, "paused", "stylize", held)
        deadline = time.monotonic() + 120
        while not paused.exists():
            assert time.monotonic() < deadline, "the stylize stage never paused"
            time.sleep(0.1)
        r = client.http.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 204
        assert storage.list(f"jobs/{job['id']}/") == []
        marker_path(faults, "release", "stylize", held).touch()
        # The stage goes on, writes its second artifact into the purged prefix, finds its item
        # canceled and removes what it wrote.
        from face2paint.jobs.db import StageAttempt, make_engine, session_factory

        engine = make_engine(f"sqlite:///{home / 'face2paint.db'}")
        db = session_factory(engine)
        deadline, attempt = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            with db() as s:
                attempt = s.query(StageAttempt).filter_by(item_id=held, stage="stylize").one_or_none()
                if attempt is not None and attempt.finished_at is not None:
                    break
            time.sleep(0.2)
        engine.dispose()
        assert attempt is not None and attempt.finished_at is not None, "the held stage never ended"
        time.sleep(1)  # its clean-up follows its last commit
        assert storage.list(f"jobs/{job['id']}/") == []
        assert client.http.get(f"/v1/jobs/{job['id']}").status_code == 404
        client.close()
    finally:
        stack.stop()
