"""The Python client of the face2paint HTTP API (v1), over httpx.

    from face2paint.client import Client

    with Client("http://127.0.0.1:8000", "f2p_...") as client:
        job = client.submit(["me.jpg", "IMG_0001.HEIC"], style="anime")
        job.wait(progress=lambda j: print(j.status, j.done, "/", j.total))
        paths = job.download("results")

Errors are typed: every answer of 400 or more raises a ClientError subclass (Unauthorized for
401, NotFound 404, Gone 410, PayloadTooLarge 413, InvalidRequest 422, RateLimited 429,
Unavailable 503, ...) carrying the server's one-line message in `.message`. Answers 429 and 503
are retried first, `retries` times at most, waiting what their Retry-After says (capped at
`max_retry_wait_s`), as are connections refused before a request was sent. A submit without an
Idempotency-Key gets a fresh one, so a retried submit never makes two jobs.

Imports nothing of the service: `pip install face2paint` without extras is enough.
"""

from __future__ import annotations

import email.utils
import io
import json
import mimetypes
import re
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Union
from urllib.parse import unquote

import httpx

__all__ = [
    "Client", "Job", "ClientError", "BadRequest", "Unauthorized", "NotFound", "Conflict", "Gone",
    "PayloadTooLarge", "UnsupportedMedia", "InvalidRequest", "RateLimited", "ServerError",
    "Unavailable", "ConnectionFailed", "WaitTimeout",
]

TERMINAL = frozenset({"succeeded", "partially_succeeded", "failed", "canceled"})

Photo = Union[str, Path, bytes, tuple]  # a path, the bytes, or (filename, bytes or a file)


# --- errors -----------------------------------------------------------------------------------


class ClientError(Exception):
    """An answer of 400 or more (`status`), or no answer at all (status None). `message` is
    the server's one-line reason."""

    status: int | None = None

    def __init__(self, message: str, status: int | None = None, *, method: str = "",
                 path: str = "", retry_after: float | None = None):
        self.message = message
        if status is not None:
            self.status = status
        self.method, self.path, self.retry_after = method, path, retry_after
        where = f"{method} {path}: " if method else ""
        code = f"HTTP {self.status}: " if self.status is not None else ""
        super().__init__(f"{where}{code}{message}")


class BadRequest(ClientError):
    status = 400


class Unauthorized(ClientError):
    status = 401


class NotFound(ClientError):
    status = 404


class Conflict(ClientError):
    status = 409


class Gone(ClientError):
    status = 410


class PayloadTooLarge(ClientError):
    status = 413


class UnsupportedMedia(ClientError):
    status = 415


class InvalidRequest(ClientError):
    status = 422


class RateLimited(ClientError):
    status = 429


class ServerError(ClientError):
    """A 5xx other than 503."""


class Unavailable(ServerError):
    status = 503


class ConnectionFailed(ClientError, ConnectionError):
    """The server could not be reached, or the connection broke (refused, timed out, reset);
    also a ConnectionError, for code that catches OSError."""


class WaitTimeout(ClientError, TimeoutError):
    """Job.wait ran past its timeout; the job goes on."""


_BY_STATUS = {cls.status: cls for cls in (BadRequest, Unauthorized, NotFound, Conflict, Gone,
                                          PayloadTooLarge, UnsupportedMedia, InvalidRequest,
                                          RateLimited, Unavailable)}
_RETRIED = (429, 503)


def _detail(r: httpx.Response) -> str:
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # a request that failed validation: the fields at fault
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg', '')}"
                           for d in detail if isinstance(d, dict))
    if not detail:
        detail = r.text.strip().splitlines()[0][:300] if r.text.strip() else r.reason_phrase
    return " ".join(str(detail).split())  # one line


def error_for(r: httpx.Response) -> ClientError:
    """The typed error of an answer of 400 or more."""
    cls = _BY_STATUS.get(r.status_code) or (ServerError if r.status_code >= 500 else ClientError)
    return cls(_detail(r), r.status_code, method=r.request.method, path=r.request.url.path,
               retry_after=retry_after_s(r.headers.get("retry-after")))


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


# --- the client -------------------------------------------------------------------------------


class Client:
    """The API at `url` with one API key. `timeout`: seconds per request (uploads get ten times
    as long); `retries`: how often an answer 429 or 503 (or a refused connection) is tried
    again, waiting its Retry-After (or 0.5, 1, 2 ... s without one), at most `max_retry_wait_s`
    each time."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 60.0, retries: int = 5,
                 max_retry_wait_s: float = 30.0, sleep: Callable[[float], None] = time.sleep):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.max_retry_wait_s = max_retry_wait_s
        self._sleep = sleep
        # No redirects followed with the key: a result's redirect goes to a presigned URL,
        # fetched by a separate client that sends no key (see _result).
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing

    def request(self, method: str, path: str, *, rewind: Iterable[IO] = (), **kw) -> httpx.Response:
        """One request, retried on 429 and 503 (and refused connections) as the class says;
        raises the typed error of any answer of 400 or more. `rewind`: the open files of a
        multipart body, read again from the start on each try."""
        attempt = 0
        while True:
            for f in rewind:
                f.seek(0)
            try:
                r = self.http.request(method, path, **kw)
            except httpx.ConnectError as e:  # nothing was sent: safe to send again
                if attempt >= self.retries:
                    raise ConnectionFailed(f"cannot reach {self.url}: {e}; is the server running?",
                                           method=method, path=path) from None
                self._sleep(min(self.max_retry_wait_s, 0.5 * 2 ** attempt))
                attempt += 1
                continue
            except httpx.TimeoutException:
                raise ConnectionFailed(f"no answer from {self.url} within {self.timeout:g} s; "
                                       "retry, or raise Client(timeout=...)",
                                       method=method, path=path) from None
            except httpx.TransportError as e:
                raise ConnectionFailed(f"the connection to {self.url} failed: {e}",
                                       method=method, path=path) from None
            if r.status_code in _RETRIED and attempt < self.retries:
                wait = retry_after_s(r.headers.get("retry-after"))
                self._sleep(min(self.max_retry_wait_s, 0.5 * 2 ** attempt if wait is None else wait))
                attempt += 1
                continue
            if r.status_code >= 400:
                raise error_for(r)
            return r

    def _json(self, method: str, path: str, **kw) -> Any:
        return self.request(method, path, **kw).json()

    # -- jobs

    def submit(self, photos: Union[Photo, Iterable[Photo]], style: str | None = None,
               options: dict | None = None, idempotency_key: str | None = None) -> "Job":
        """Submit photos as one job (202): paths, bytes, or (filename, bytes or file) pairs.
        `options` is the API's options object (face2paint, params, output_format, webhook_url,
        ...); `style` sets options.style. Returns the Job at once; it runs on the server."""
        opts = dict(options or {})
        if style is not None:
            opts["style"] = style
        parts, handles = [], []
        try:
            for i, photo in enumerate(_as_list(photos)):
                name, handle = _open_photo(photo, i)
                handles.append(handle)
                ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
                parts.append(("files", (name, handle, ctype)))
            headers = {"Idempotency-Key": idempotency_key or f"client-{uuid.uuid4().hex}"}
            data = self._json("POST", "/v1/jobs", rewind=handles, files=parts,
                              data={"options": json.dumps(opts)}, headers=headers,
                              timeout=self.timeout * 10)
        finally:
            for h in handles:
                h.close()
        return Job(self, data)

    def job(self, job_id: str) -> "Job":
        return Job(self, self._json("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, page_size: int = 20) -> Iterator["Job"]:
        """Every job of this key's owner, newest first, page after page (the API's cursor)."""
        cursor = None
        while True:
            params = {"limit": page_size, **({"cursor": cursor} if cursor else {})}
            page = self._json("GET", "/v1/jobs", params=params)
            for data in page["jobs"]:
                yield Job(self, data)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def items(self, job_id: str) -> list[dict]:
        return self._json("GET", f"/v1/jobs/{job_id}/items")

    def styles(self) -> list[dict]:
        return self._json("GET", "/v1/styles")

    def result(self, job_id: str, item_id: str) -> tuple[bytes, str | None]:
        """An item's result: (bytes, the file name the server gives it)."""
        r = self.request("GET", f"/v1/jobs/{job_id}/items/{item_id}/result")
        if r.is_redirect:
            # A presigned URL: it authorises itself; the API key must not go to that host.
            try:
                r = httpx.get(r.headers["location"], timeout=self.timeout * 2)
            except httpx.HTTPError as e:
                raise ConnectionFailed(f"cannot fetch the result from storage: {e}") from None
            if r.status_code >= 400:
                raise error_for(r)
        return r.content, filename_from(r.headers.get("content-disposition"))


class Job:
    """A job as the API last described it (`data`); refresh() asks again."""

    def __init__(self, client: Client, data: dict):
        self.client = client
        self.data = data

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status} {self.done}/{self.total}>"

    id = property(lambda self: self.data["id"])
    status = property(lambda self: self.data["status"])
    options = property(lambda self: self.data.get("options") or {})
    error = property(lambda self: self.data.get("error"))
    done = property(lambda self: self.data["progress"]["done"])
    total = property(lambda self: self.data["progress"]["total"])
    succeeded = property(lambda self: self.data.get("succeeded", 0))
    failed = property(lambda self: self.data.get("failed", 0))
    canceled = property(lambda self: self.data.get("canceled", 0))
    # Items not yet ended (done counts the succeeded ones only, failed and canceled apart).
    pending = property(lambda self: self.data["progress"].get("pending", 0))
    # role -> the model ids the job's items ran
    models = property(lambda self: self.data.get("models") or {})

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def items(self) -> list[dict]:
        """The job's items now (asked each time): id, index, filename, status, error, ..."""
        return self.client.items(self.id)

    def refresh(self) -> "Job":
        self.data = self.client._json("GET", f"/v1/jobs/{self.id}")
        return self

    def cancel(self) -> "Job":
        self.data = self.client._json("POST", f"/v1/jobs/{self.id}/cancel")
        return self

    def wait(self, progress: Callable[["Job"], Any] | None = None, poll: float = 0.5,
             timeout: float | None = None, *, follow: bool = True) -> "Job":
        """Wait until the job is finished; `progress(job)` after each change seen.
        WaitTimeout after `timeout` seconds (the job goes on on the server).

        Follows the job's event stream (GET /v1/jobs/{id}/events): the server sends each
        change as it is committed, so the wait ends as the job does, with one open request
        instead of a poll every `poll` seconds. If the stream cannot be read (a proxy that
        buffers it, a server without it), or with follow=False, it polls every `poll` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if follow:
            try:
                if self._follow(progress, deadline, timeout):
                    return self
            except WaitTimeout:
                raise
            except (ClientError, httpx.HTTPError, ValueError) as e:
                if isinstance(e, ClientError) and e.status in _FINAL_FOR_WAIT:
                    raise  # polling would be told the same
                # Otherwise polled from here on (a 429, 5xx or broken stream included).
        while True:
            self.refresh()
            if progress is not None:
                progress(self)
            if self.finished:
                return self
            if deadline is not None and time.monotonic() > deadline:
                raise self._timed_out(timeout)
            time.sleep(poll)

    def _timed_out(self, timeout: float | None) -> "WaitTimeout":
        if "progress" not in self.data:  # nothing heard yet
            self.refresh()
        return WaitTimeout(f"job {self.id} still {self.status} ({self.done}/{self.total}) "
                           f"after {timeout:g} s; wait again, or cancel it")

    def _follow(self, progress, deadline: float | None, timeout: float | None) -> bool:
        """Read the event stream until the job ends (True), or until it closes without an
        end (False: the caller polls). Reconnects after each quiet read timeout."""
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise self._timed_out(timeout)
            # The server sends a keep-alive every 15 s: a read waits at most a little longer.
            read = _STREAM_READ_S if left is None else min(_STREAM_READ_S, left)
            try:
                with self.client.http.stream(
                        "GET", f"/v1/jobs/{self.id}/events",
                        timeout=httpx.Timeout(self.client.timeout, read=read)) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise error_for(r)
                    for event, data in _sse_events(r.iter_lines()):
                        if event == "gone":
                            self.refresh()  # raises the server's NotFound or Gone
                            return False
                        if event in ("job", "end"):
                            self.data = json.loads(data)
                            if progress is not None:
                                progress(self)
                            if event == "end":
                                return True
                return False
            except httpx.ReadTimeout:
                continue  # quiet for longer than a keep-alive (or the deadline came): again

    def download(self, folder: Union[str, Path]) -> list[Path]:
        """Write each succeeded item's result into `folder`, named as the server names it
        (after its upload: IMG_1.HEIC gives IMG_1.png; a second one IMG_1 (2).png); returns
        the paths, in upload order. Items without a result are left out (see `items`)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        paths = []
        for item in sorted(self.items, key=lambda i: i["index"]):
            if item["status"] != "succeeded":
                continue
            data, name = self.client.result(self.id, item["id"])
            name = _unique(_safe_name(name or item.get("filename") or item["id"]), taken)
            path = folder / name
            path.write_bytes(data)
            paths.append(path)
        return paths


# --- helpers ----------------------------------------------------------------------------------

# A wait that meets these on the stream raises them, as its polling would.
_FINAL_FOR_WAIT = frozenset({401, 403, 404, 410})
_STREAM_READ_S = 30.0  # twice the server's keep-alive interval


def _sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event, data) of a text/event-stream, from its lines (comments and retry skipped)."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)


def _as_list(photos) -> list:
    if isinstance(photos, (str, Path, bytes, bytearray)) or _is_pair(photos):
        return [photos]
    return list(photos)


def _is_pair(photo) -> bool:
    """(filename, bytes or an open file): one photo, not a tuple of photos."""
    return (isinstance(photo, tuple) and len(photo) == 2 and isinstance(photo[0], str)
            and (isinstance(photo[1], (bytes, bytearray)) or hasattr(photo[1], "read")))


def _open_photo(photo, index: int) -> tuple[str, IO[bytes]]:
    if isinstance(photo, (str, Path)):
        path = Path(photo)
        return path.name, open(path, "rb")
    if isinstance(photo, (bytes, bytearray)):
        return f"photo-{index + 1}", io.BytesIO(bytes(photo))
    if _is_pair(photo):
        name, content = photo
        if isinstance(content, (bytes, bytearray)):
            return str(name), io.BytesIO(bytes(content))
        return str(name), content
    raise TypeError(f"photo {index + 1}: give a path, bytes or (filename, bytes), not {type(photo).__name__}")


_FILENAME_STAR = re.compile(r"filename\*\s*=\s*([^']*)'[^']*'([^;]+)", re.I)
_FILENAME = re.compile(r'filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]+))', re.I)


def filename_from(disposition: str | None) -> str | None:
    """The file name of a Content-Disposition header (RFC 6266; filename* preferred)."""
    if not disposition:
        return None
    m = _FILENAME_STAR.search(disposition)
    if m:
        try:
            return unquote(m.group(2).strip(), encoding=m.group(1) or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass
    m = _FILENAME.search(disposition)
    if m:
        return (m.group(1) if m.group(1) is not None else m.group(2)).strip()
    return None


def _safe_name(name: str) -> str:
    """A name from the server, as a plain file name in the folder (no path, nothing hidden)."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip().lstrip(".")
    name = "".join(c for c in name if c >= " " and c != "\x7f")
    return name or "result"


def _unique(name: str, taken: set[str]) -> str:
    base, dot, ext = name.rpartition(".")
    if not dot:
        base, ext = name, ""
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{base} ({n}).{ext}" if dot else f"{base} ({n})"
    taken.add(candidate.lower())
    return candidate
