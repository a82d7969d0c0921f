"""A small HTTP client of API v1, used by `face2paint run` (embedded or against a deployment)."""

from __future__ import annotations

import json
import mimetypes
import time
from pathlib import Path

import httpx

from ..jobs.states import TERMINAL_JOB_STATES


class ApiError(RuntimeError):
    pass


class Client:
    def __init__(self, base_url: str, api_key: str, timeout_s: float = 60.0):
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
        )

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, url: str, rewind=(), **kw) -> httpx.Response:
        """One request, waiting out rate limits (429 with Retry-After) a few times; `rewind`
        are the open files of a multipart body, read again from the start on each try."""
        for _ in range(6):
            for h in rewind:
                h.seek(0)
            r = self.http.request(method, url, **kw)
            if r.status_code != 429:
                return r
            time.sleep(min(30.0, float(r.headers.get("retry-after", "1") or 1)))
        return r

    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text[:300]
            raise ApiError(f"{r.request.method} {r.request.url.path}: HTTP {r.status_code}: {detail}")
        return r

    def submit(self, files: list[Path], options: dict, idempotency_key: str | None = None) -> dict:
        parts = []
        handles = []
        try:
            for f in files:
                h = open(f, "rb")
                handles.append(h)
                ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
                parts.append(("files", (f.name, h, ctype)))
            headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
            r = self._send("POST", "/v1/jobs", rewind=handles, files=parts, data={"options": json.dumps(options)},
                           headers=headers, timeout=600)
        finally:
            for h in handles:
                h.close()
        return self._check(r).json()

    def job(self, job_id: str) -> dict:
        return self._check(self._send("GET", f"/v1/jobs/{job_id}")).json()

    def items(self, job_id: str) -> list[dict]:
        return self._check(self._send("GET", f"/v1/jobs/{job_id}/items")).json()

    def wait(self, job_id: str, on_poll=None, interval_s: float = 0.5, timeout_s: float | None = None) -> dict:
        start = time.monotonic()
        while True:
            job = self.job(job_id)
            if on_poll:
                on_poll(job)
            if job["status"] in TERMINAL_JOB_STATES:
                return job
            if timeout_s and time.monotonic() - start > timeout_s:
                raise ApiError(f"job {job_id} still {job['status']} after {timeout_s:.0f}s")
            time.sleep(interval_s)

    def download(self, job_id: str, item_id: str) -> bytes:
        # The API answers with the file (local storage) or a redirect to a presigned URL (S3),
        # which must be fetched without our API key.
        r = self._send("GET", f"/v1/jobs/{job_id}/items/{item_id}/result", follow_redirects=False)
        if r.status_code in (302, 303, 307):
            r = httpx.get(r.headers["location"], timeout=120)
        return self._check(r).content
