"""Object storage: a local directory and a real S3 server (SeaweedFS, or the one in
FACE2PAINT_TEST_S3_ENDPOINT_URL), through the same interface."""

from __future__ import annotations

import os
import time
import uuid

import httpx
import pytest

from face2paint.jobs import keys
from face2paint.jobs.storage import (
    InvalidKey,
    LocalStorage,
    ObjectNotFound,
    S3Storage,
    Storage,
    StorageUnavailable,
    storage_from_settings,
)
from face2paint.settings import Settings
from face2paint.cli.stack import free_port


@pytest.fixture(
    params=["local", pytest.param("s3", marks=pytest.mark.integration)],
)
def store(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    s3 = request.getfixturevalue("s3")
    return s3.storage(prefix=f"t-{uuid.uuid4().hex[:8]}")  # a fresh prefix per test


def test_put_get_exists_list_delete(store):
    assert isinstance(store, Storage)
    store.check()
    k1 = "jobs/abc/items/i1/input.png"
    k2 = "jobs/abc/items/i2/input.jpg"
    k3 = "jobs/abd/items/i3/result.png"
    for k, data in ((k1, b"one"), (k2, b"two"), (k3, b"three")):
        store.put_bytes(k, data, "image/png")
    assert store.get_bytes(k1) == b"one"
    assert store.exists(k1) and not store.exists("jobs/abc/items/i1/missing.png")
    store.put_bytes(k1, b"one again", "image/png")  # overwrite
    assert store.get_bytes(k1) == b"one again"
    with store.open_stream(k2) as f:
        assert f.read() == b"two"

    assert store.list("jobs/abc/") == [k1, k2]
    assert store.list("jobs/ab") == [k1, k2, k3]  # a string prefix, as S3 has it
    assert store.list("") == [k1, k2, k3]
    assert store.list("nothing/") == []

    store.delete(k1)
    store.delete(k1)  # deleting a missing key is fine
    assert not store.exists(k1)
    assert store.list("jobs/") == [k2, k3]
    with pytest.raises(ObjectNotFound) as e:
        store.get_bytes(k1)
    assert isinstance(e.value, KeyError) and k1 in str(e.value)
    with pytest.raises(ObjectNotFound):
        store.open_stream(k1)


BAD_KEYS = ["../etc/passwd", "jobs/../../x", "/etc/passwd", "jobs//x", "jobs/./x", "a\\b",
            "", "jobs/x/", "C:/Windows", "bad\x00key", "x/..", ".."]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_path_traversal_and_odd_keys_are_rejected(store, key):
    for op in (lambda: store.put_bytes(key, b"x"), lambda: store.get_bytes(key),
               lambda: store.exists(key), lambda: store.delete(key)):
        with pytest.raises(InvalidKey):
            op()
    with pytest.raises(InvalidKey):
        store.list("../")


def test_local_writes_are_atomic_and_stay_inside_root(tmp_path):
    store = LocalStorage(tmp_path / "root")
    store.put_bytes("a/b.bin", b"x" * 100_000)
    assert sorted(p.name for p in (tmp_path / "root" / "a").iterdir()) == ["b.bin"]  # no temp
    assert store.local_path("a/b.bin") == tmp_path / "root" / "a" / "b.bin"
    assert store.presigned_get_url("a/b.bin", 60) is None
    with pytest.raises(ObjectNotFound):
        store.local_path("a/missing.bin")
    # A symlink inside the root cannot lead outside it.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    os.symlink(outside, tmp_path / "root" / "link")
    with pytest.raises(InvalidKey, match="outside the storage root"):
        store.get_bytes("link/secret")
    # Deleting the last object tidies its empty directories.
    store.delete("a/b.bin")
    assert not (tmp_path / "root" / "a").exists()


def test_local_list_skips_partial_writes(tmp_path):
    store = LocalStorage(tmp_path)
    store.put_bytes("jobs/x/a.png", b"a")
    (tmp_path / "jobs" / "x" / ".tmp-abc123").write_bytes(b"half")
    assert store.list("jobs/") == ["jobs/x/a.png"]


# --- S3 only --------------------------------------------------------------------------------


def test_presigned_url_downloads_then_expires(s3):
    store = s3.storage(prefix=f"t-{uuid.uuid4().hex[:8]}")
    store.put_bytes("jobs/j/items/i/result.png", b"\x89PNG result", "image/png")
    url = store.presigned_get_url("jobs/j/items/i/result.png", 2)
    assert url and url.startswith(s3.endpoint_url)
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200
    assert r.content == b"\x89PNG result"
    assert r.headers["content-type"] == "image/png"
    time.sleep(3.5)
    r = httpx.get(url, timeout=10)
    assert r.status_code == 403 and b"expired" in r.content.lower()


def test_s3_prefix_keeps_storages_apart(s3):
    a = s3.storage(prefix=f"a-{uuid.uuid4().hex[:8]}")
    b = s3.storage(prefix=f"b-{uuid.uuid4().hex[:8]}/nested")
    a.put_bytes("k/x.txt", b"a")
    b.put_bytes("k/x.txt", b"b")
    assert a.get_bytes("k/x.txt") == b"a" and b.get_bytes("k/x.txt") == b"b"
    assert a.list("") == ["k/x.txt"] == b.list("")
    raw = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=b.prefix)["Contents"]
    assert [o["Key"] for o in raw] == [b.prefix + "k/x.txt"]


def test_s3_bucket_creation_and_readiness(s3):
    bucket = f"f2p-new-{uuid.uuid4().hex[:8]}"
    store = s3.storage(bucket=bucket)
    with pytest.raises(StorageUnavailable, match=bucket):
        store.check()
    store.create_bucket_if_missing()
    store.create_bucket_if_missing()  # idempotent
    store.check()
    store.put_bytes("x", b"1")
    assert store.list("") == ["x"]


def test_s3_restart_keeps_objects(s3_server):
    if not s3_server.managed:
        pytest.skip("the S3 server comes from the environment; cannot restart it")
    store = s3_server.storage(prefix=f"t-{uuid.uuid4().hex[:8]}", connect_timeout=1,
                              max_attempts=1)
    store.put_bytes("kept.txt", b"still here")
    s3_server.stop()
    with pytest.raises(StorageUnavailable):
        store.get_bytes("kept.txt")
    s3_server.start()  # same port, same data
    assert store.get_bytes("kept.txt") == b"still here"


def test_s3_unreachable_is_reported_clearly():
    store = S3Storage(
        "bucket", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1",
        access_key_id="k", secret_access_key="s", connect_timeout=1, max_attempts=1,
    )
    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match="FACE2PAINT_S3_ENDPOINT_URL"):
        store.check()
    with pytest.raises(StorageUnavailable):
        store.get_bytes("jobs/x")
    assert time.monotonic() - start < 10


def test_s3_wrong_credentials_are_unavailable_not_missing(s3):
    store = S3Storage(s3.bucket, endpoint_url=s3.endpoint_url, region=s3.region,
                      access_key_id=s3.access_key, secret_access_key="wrong", max_attempts=1)
    with pytest.raises(StorageUnavailable):
        store.get_bytes("whatever")


# --- configuration and keys -----------------------------------------------------------------


def test_storage_from_settings(tmp_path):
    assert Settings(home=tmp_path).resolved_storage_url == str(tmp_path / "storage")
    assert Settings(home=tmp_path, storage_url="  s3://b/p ").resolved_storage_url == "s3://b/p"
    st = storage_from_settings(Settings(home=tmp_path))
    assert isinstance(st, LocalStorage) and st.root == (tmp_path / "storage").resolve()
    st = storage_from_settings(Settings(home=tmp_path, storage_url=str(tmp_path / "elsewhere")))
    assert isinstance(st, LocalStorage) and st.root == (tmp_path / "elsewhere").resolve()
    st = storage_from_settings(Settings(home=tmp_path, storage_url=f"file://{tmp_path}/f"))
    assert isinstance(st, LocalStorage) and st.root == (tmp_path / "f").resolve()

    st = storage_from_settings(Settings(
        home=tmp_path, storage_url="s3://my-bucket/some/prefix/",
        s3_endpoint_url="http://minio:9000", s3_region="eu-west-1"))
    assert isinstance(st, S3Storage)
    assert (st.bucket, st.prefix, st.endpoint_url, st.region) == (
        "my-bucket", "some/prefix/", "http://minio:9000", "eu-west-1")
    st = storage_from_settings(Settings(home=tmp_path, storage_url="s3://only-bucket"))
    assert (st.bucket, st.prefix, st.endpoint_url) == ("only-bucket", "", None)

    for bad in ("s3://", "gs://bucket/x", "http://example.com/x"):
        with pytest.raises(ValueError):
            storage_from_settings(Settings(home=tmp_path, storage_url=bad))


def test_keys_are_deterministic_and_never_from_user_input():
    job, item = "a" * 32, "b" * 32
    assert keys.input_key(job, item, "jpg") == f"jobs/{job}/items/{item}/input.jpg"
    assert keys.artifact_key(job, item, "detect", "faces.json") == (
        f"jobs/{job}/items/{item}/detect/faces.json")
    assert keys.result_key(job, item) == f"jobs/{job}/items/{item}/result.png"
    for bad in (lambda: keys.input_key("../x", item, "jpg"),
                lambda: keys.input_key(job, item, "j/pg"),
                lambda: keys.artifact_key(job, item, "paint", "x"),
                lambda: keys.artifact_key(job, item, "detect", "../x"),
                lambda: keys.artifact_key(job, item, "detect", ".hidden"),
                lambda: keys.result_key(job, "a/b")):
        with pytest.raises(ValueError):
            bad()
