"""Object storage for inputs, stage artifacts and results: a local directory or S3.

Both backends take the same slash-separated keys (see keys.py). Keys are validated the same way
on both, so a key that works in embedded mode works on S3 and cannot escape the local root.
"""

from __future__ import annotations

import mimetypes
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import urlparse


class StorageError(Exception):
    """Base class for storage failures."""


class ObjectNotFound(StorageError, KeyError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no object at key {self.key!r}"


class StorageUnavailable(StorageError):
    """The backend could not be reached or refused the request; retrying later may work."""


class InvalidKey(StorageError, ValueError):
    pass


_BAD_KEY_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def check_key(key: str) -> str:
    """Reject keys that could escape a directory or mean different things on the two backends."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key must be a non-empty string")
    if len(key) > 1024:
        raise InvalidKey(f"object key longer than 1024 characters: {key[:60]!r}...")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise InvalidKey(f"object key must be relative, not absolute: {key!r}")
    if _BAD_KEY_CHARS.search(key):
        raise InvalidKey(f"object key contains a backslash or control character: {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidKey(f"object key has an empty, '.' or '..' segment: {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    """Prefixes may be empty or end in '/', unlike keys."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


@runtime_checkable
class Storage(Protocol):
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None, *,
                  durable: bool = True) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def presigned_get_url(self, key: str, expires_s: int, content_disposition: str | None = None) -> str | None: ...

    def open_stream(self, key: str) -> BinaryIO: ...

    def local_path(self, key: str) -> Path | None: ...

    def check(self) -> None: ...


# --- local directory ------------------------------------------------------------------------

_TMP_PREFIX = ".tmp-"


class LocalStorage:
    """Objects as files under `root`. Writes are atomic (temp file + rename), so readers never
    see half an object, even across processes."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        check_key(key)
        path = self.root.joinpath(*key.split("/"))
        # Belt and braces against symlinks inside the root pointing elsewhere.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKey(f"object key resolves outside the storage root: {key!r}")
        return path

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None, *,
                  durable: bool = True) -> None:
        """durable=False skips the fsync (several ms per object): for scratch objects that
        only have to outlive a process, not the host (the stages' intermediate artifacts)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def open_stream(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError):
            return
        # Tidy now-empty directories up to the root; another writer may race us, so any
        # failure just means the directory is in use.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)
        # Walk only the directory the prefix names, then filter by the string prefix (S3
        # semantics: "jobs/ab" matches "jobs/abc/...").
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*base_dir.split("/")) if base_dir else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def presigned_get_url(self, key: str, expires_s: int, content_disposition: str | None = None) -> str | None:
        return None  # the API streams local objects itself

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + "check-", dir=self.root)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise StorageUnavailable(
                f"local storage directory {self.root} is not writable ({e}); "
                "fix its permissions or set FACE2PAINT_STORAGE_URL to another directory"
            ) from e


# --- S3 -------------------------------------------------------------------------------------


class S3Storage:
    """Objects in an S3 bucket (AWS, MinIO, SeaweedFS, ...) under an optional key prefix.

    Credentials come from the arguments or, when those are None, from boto3's standard chain
    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, instance roles).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        *,
        public_endpoint_url: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
    ):
        if not bucket:
            raise ValueError("S3 storage needs a bucket name, as in s3://bucket/prefix")
        self.bucket = bucket
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url or None
        self.public_endpoint_url = public_endpoint_url or None
        self.region = region or None
        self._credentials = (access_key_id, secret_access_key)
        self._config_args = dict(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            signature_version="s3v4",
            # Path-style addressing: self-hosted servers rarely have wildcard DNS per bucket.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
        )
        self._clients: dict[tuple[int, str], object] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3Storage(s3://{self.bucket}/{self.prefix}{where})"

    def _client(self, public: bool = False):
        # One client per process (a client inherited across fork shares sockets with the
        # parent) and per endpoint (presigned URLs may need the public one).
        endpoint = (self.public_endpoint_url if public else None) or self.endpoint_url
        cache_key = (os.getpid(), endpoint or "")
        client = self._clients.get(cache_key)
        if client is None:
            import boto3
            from botocore.config import Config

            with self._lock:
                client = self._clients.get(cache_key)
                if client is None:
                    session = boto3.session.Session()
                    client = session.client(
                        "s3",
                        endpoint_url=endpoint,
                        region_name=self.region,
                        aws_access_key_id=self._credentials[0],
                        aws_secret_access_key=self._credentials[1],
                        config=Config(**self._config_args),
                    )
                    self._clients[cache_key] = client
        return client

    def _full(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _unavailable(self, e: Exception, what: str) -> StorageUnavailable:
        where = self.endpoint_url or "AWS"
        return StorageUnavailable(
            f"S3 {what} failed for bucket {self.bucket!r} at {where}: {e}. Check that the S3 "
            "server is up, FACE2PAINT_S3_ENDPOINT_URL and the credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
        )

    def _call(self, what: str, fn, *args, key: str | None = None, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if key is not None and code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(key) from None
            raise self._unavailable(e, what) from e
        except BotoCoreError as e:  # connection refused, timeouts, bad endpoint
            raise self._unavailable(e, what) from e

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None, *,
                  durable: bool = True) -> None:  # a PUT is durable when it returns
        extra = {"ContentType": content_type} if content_type else {}
        self._call(
            "put", self._client().put_object,
            Bucket=self.bucket, Key=self._full(key), Body=data, **extra,
        )

    def get_bytes(self, key: str) -> bytes:
        def fetch() -> bytes:
            body = self._client().get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
            try:
                return body.read()  # a dropped connection mid-body is a BotoCoreError too
            finally:
                body.close()

        return self._call("get", fetch, key=key)

    def open_stream(self, key: str) -> BinaryIO:
        resp = self._call(
            "get", self._client().get_object, Bucket=self.bucket, Key=self._full(key), key=key
        )
        return resp["Body"]

    def local_path(self, key: str) -> Path | None:
        return None

    def exists(self, key: str) -> bool:
        try:
            self._call(
                "head", self._client().head_object, Bucket=self.bucket, Key=self._full(key), key=key
            )
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        # S3 deletes are idempotent: deleting a missing key succeeds.
        self._call("delete", self._client().delete_object, Bucket=self.bucket, Key=self._full(key))

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)
        paginator = self._client().get_paginator("list_objects_v2")
        keys = []

        def collect():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                keys.extend(o["Key"][len(self.prefix) :] for o in page.get("Contents", []))

        self._call("list", collect)
        return sorted(keys)

    def presigned_get_url(self, key: str, expires_s: int, content_disposition: str | None = None) -> str | None:
        """A GET URL that needs no credentials until it expires; `content_disposition` is the
        header S3 answers with (so a browser saves the object under its upload's name)."""
        params = {"Bucket": self.bucket, "Key": self._full(key)}
        if content_disposition:
            params["ResponseContentDisposition"] = content_disposition
        # Presigning is local computation; no request is made here.
        return self._client(public=True).generate_presigned_url(
            "get_object", Params=params, ExpiresIn=int(expires_s)
        )

    def check(self) -> None:
        self._call("bucket check", self._client().head_bucket, Bucket=self.bucket)

    def create_bucket_if_missing(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise self._unavailable(e, "bucket check") from e
        except BotoCoreError as e:
            raise self._unavailable(e, "bucket check") from e
        args: dict = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1" and not self.endpoint_url:
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            client.create_bucket(**args)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._unavailable(e, "create bucket") from e
        except BotoCoreError as e:
            raise self._unavailable(e, "create bucket") from e


# --- configuration --------------------------------------------------------------------------


def content_type_for(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def parse_s3_url(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an S3 URL: {url!r}; expected s3://bucket/optional/prefix")
    return parsed.netloc, parsed.path.strip("/")


def storage_from_settings(settings) -> LocalStorage | S3Storage:
    """The storage settings.resolved_storage_url names: s3://bucket/prefix, file://..., or a
    local directory."""
    url = settings.resolved_storage_url
    if url.startswith("s3://"):
        bucket, prefix = parse_s3_url(url)
        return S3Storage(
            bucket,
            prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            public_endpoint_url=settings.s3_public_endpoint_url,
        )
    if url.startswith("file://"):
        return LocalStorage(urlparse(url).path)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        raise ValueError(
            f"unsupported FACE2PAINT_STORAGE_URL {url!r}: use s3://bucket/prefix for "
            "S3-compatible storage or a local directory path"
        )
    return LocalStorage(url)
