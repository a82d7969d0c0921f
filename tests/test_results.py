"""Downloading results: a job's zip (streamed, named after the uploads, de-duplicated, only
succeeded items, a manifest of the rest), one result named after its upload, and an item's
input as a viewable preview. Over real PostgreSQL and S3, and over SQLite and a local
directory; the API runs in process and the items are moved through their stages by the same
domain functions the workers call, with result objects stored as a worker stores them."""

from __future__ import annotations

import io
import json
import tracemalloc
import uuid
import zipfile

import httpx
import pytest
from PIL import Image

from face2paint.api.zipstream import Member, stream_zip
from face2paint.jobs.db import Item, session_scope
from face2paint.jobs.keys import result_key
from face2paint.jobs.stages import begin_stage, finish_stage
from face2paint.jobs.states import STAGES
from face2paint.jobs.storage import LocalStorage
from face2paint.models import image_io  # noqa: F401 - registers the HEIF opener
from tests.helpers import astronaut_path
from tests.service_stack import in_process_api


def _image(color, size=(40, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(params=["local", "s3"])
def api(request, tmp_path, monkeypatch):
    with in_process_api(request, tmp_path, monkeypatch, f"t-{uuid.uuid4().hex[:8]}") as (client, _, _s3):
        yield client


def _submit(api, files):
    r = api.post("/v1/jobs", files=[("files", f) for f in files],
                 data={"options": json.dumps({"style": "classical-cartoon"})})
    assert r.status_code == 202, r.text
    return r.json()["id"], sorted(api.get(f"/v1/jobs/{r.json()['id']}/items").json(), key=lambda i: i["index"])


def _succeed(api, job_id, item_id, data: bytes, ext: str, mime: str) -> None:
    """What a worker does: store the result under the item's key, then close every stage."""
    key = result_key(job_id, item_id, ext)
    api.storage.put_bytes(key, data, mime)
    with session_scope(api.sessions) as s:
        for stage in STAGES:
            attempt = begin_stage(s, item_id, stage, "test")
            assert finish_stage(s, attempt, output_key=key if stage == STAGES[-1] else None)


def _heic() -> bytes:
    with Image.open(astronaut_path()) as im:
        buf = io.BytesIO()
        im.convert("RGB").resize((64, 48)).save(buf, "HEIF")
    return buf.getvalue()


def test_zip_holds_the_succeeded_results_named_after_their_uploads(api):
    uploads = [("a.jpg", _image("red", fmt="JPEG"), "image/jpeg"),
               ("a.jpg", _image("green", fmt="JPEG"), "image/jpeg"),
               ("A.JPG", _image("blue", fmt="JPEG"), "image/jpeg"),
               ("IMG_0001.HEIC", _heic(), "image/heic"),
               ("été à Paris.png", _image("white"), "image/png"),
               ("broken.jpg", b"just some notes, not a photo", "image/jpeg"),
               ("later.png", _image("black"), "image/png")]
    job_id, items = _submit(api, uploads)
    assert [i["filename"] for i in items] == [u[0] for u in uploads]
    assert items[5]["status"] == "failed"  # refused at upload: not an image
    results = {}
    for it, ext, mime in zip(items[:5], ["png", "png", "png", "webp", "jpg"],
                             ["image/png", "image/png", "image/png", "image/webp", "image/jpeg"]):
        results[it["id"]] = _image((it["index"] * 40, 10, 10), fmt={"jpg": "JPEG"}.get(ext, ext.upper()))
        _succeed(api, job_id, it["id"], results[it["id"]], ext, mime)
    # items[6] stays queued.

    r = api.get(f"/v1/jobs/{job_id}/results.zip")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"] == f'attachment; filename="face2paint-{job_id}.zip"'
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert z.testzip() is None
        names = z.namelist()
        assert names == ["a.png", "a (2).png", "A (3).png", "IMG_0001.webp", "été à Paris.jpg",
                         "manifest.json"]
        for name, it in zip(names[:-1], items):
            assert z.read(name) == results[it["id"]], name
            assert z.getinfo(name).compress_type == zipfile.ZIP_STORED
        manifest = json.loads(z.read("manifest.json"))
    assert manifest["job"] == job_id and manifest["status"] == "running"
    assert [(f["name"], f["upload"], f["item"]) for f in manifest["files"]] == [
        (n, it["filename"], it["id"]) for n, it in zip(names[:-1], items)]
    missing = {m["upload"]: m for m in manifest["not_included"]}
    assert set(missing) == {"broken.jpg", "later.png"}
    assert missing["broken.jpg"]["status"] == "failed" and "not an image" in missing["broken.jpg"]["error"]
    assert missing["later.png"]["status"] == "queued" and missing["later.png"]["error"] is None

    # A result that vanished from storage since (retention, a delete) is listed, not fatal.
    api.storage.delete(result_key(job_id, items[1]["id"], "png"))
    with zipfile.ZipFile(io.BytesIO(api.get(f"/v1/jobs/{job_id}/results.zip").content)) as z:
        assert "a (2).png" not in z.namelist() and "a.png" in z.namelist()
        assert json.loads(z.read("manifest.json"))["missing"] == ["a (2).png"]

    # Another owner sees no such job.
    r = api.get(f"/v1/jobs/{job_id}/results.zip", headers={"Authorization": f"Bearer {api.other_key}"})
    assert r.status_code == 404


def test_zip_of_a_job_without_results_is_a_conflict(api):
    job_id, _ = _submit(api, [("x.png", _image("red"), "image/png")])
    r = api.get(f"/v1/jobs/{job_id}/results.zip")
    assert r.status_code == 409
    assert "no results yet" in r.json()["detail"] and "queued" in r.json()["detail"]


def test_one_result_is_named_after_its_upload(api):
    job_id, items = _submit(api, [("IMG_0001.HEIC", _heic(), "image/heic"),
                                  ("été.png", _image("white"), "image/png")])
    webp = _image("red", fmt="WEBP")
    _succeed(api, job_id, items[0]["id"], webp, "webp", "image/webp")
    _succeed(api, job_id, items[1]["id"], _image("blue"), "png", "image/png")
    url = f"/v1/jobs/{job_id}/items/{items[0]['id']}/result"

    # The bytes from the API itself, whatever the storage (what the web page asks for).
    r = api.get(url, params={"redirect": "false"})
    assert r.status_code == 200 and r.content == webp
    assert r.headers["content-type"] == "image/webp"
    assert r.headers["content-disposition"] == 'attachment; filename="IMG_0001.webp"'
    r = api.get(f"/v1/jobs/{job_id}/items/{items[1]['id']}/result", params={"redirect": "false"})
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"_t_.png\"; filename*=UTF-8''%C3%A9t%C3%A9.png")

    r = api.get(url, follow_redirects=False)
    if api.kind == "local":
        assert r.status_code == 200 and r.content == webp
        assert r.headers["content-disposition"] == 'attachment; filename="IMG_0001.webp"'
    else:
        # A presigned URL whose answer names the file the same way.
        assert r.status_code == 307
        s3_answer = httpx.get(r.headers["location"], timeout=30)
        assert s3_answer.status_code == 200 and s3_answer.content == webp
        assert s3_answer.headers["content-disposition"] == 'attachment; filename="IMG_0001.webp"'


def test_the_input_preview_is_a_plain_jpeg_of_what_the_pipeline_sees(api):
    job_id, items = _submit(api, [("IMG_0001.HEIC", _heic(), "image/heic"),
                                  ("broken.jpg", b"just some notes, not a photo", "image/jpeg")])
    r = api.get(f"/v1/jobs/{job_id}/items/{items[0]['id']}/input")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(r.content)) as im:
        assert (im.format, im.size) == ("JPEG", (64, 48))
        assert not im.getexif() and "icc_profile" not in im.info
    r = api.get(f"/v1/jobs/{job_id}/items/{items[1]['id']}/input")
    assert r.status_code == 422 and "cannot be shown" in r.json()["detail"]


def test_the_zip_streams_in_chunks_without_holding_the_archive(tmp_path):
    """Three 4 MiB results go out as a 12 MiB zip while the generator never holds more than a
    chunk or two: the archive is never built in memory."""
    storage = LocalStorage(tmp_path)
    rng = __import__("numpy").random.default_rng(0)
    members = []
    for i in range(3):
        storage.put_bytes(f"r/{i}.png", rng.bytes(4 << 20))
        members.append(Member(f"{i}.png", f"r/{i}.png", None))
    tracemalloc.start()
    try:
        sizes, largest_held = [], 0
        for chunk in stream_zip(storage, members, {"files": []}):
            sizes.append(len(chunk))
            largest_held = max(largest_held, tracemalloc.get_traced_memory()[0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(sizes) > 12 << 20 and len([s for s in sizes if s >= 1 << 20]) >= 12
    assert max(sizes) <= (1 << 20) + 4096
    assert peak < 6 << 20, peak  # a 12 MiB archive, a few MiB of buffers
