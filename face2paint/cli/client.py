"""What `face2paint run` (embedded or `--api` against a deployment) and the integration tests
call: the API's answers as plain dicts, over the Python client (face2paint/client.py), which
does the HTTP, the typed errors and the retries on 429 and 503."""

from __future__ import annotations

from pathlib import Path

from .. import client as api_client
from ..client import ClientError as ApiError  # noqa: F401  (what callers catch)


class Client:
    def __init__(self, base_url: str, api_key: str, timeout_s: float = 60.0):
        self.api = api_client.Client(base_url, api_key, timeout=timeout_s)
        self.http = self.api.http  # for tests that send requests of their own

    def close(self) -> None:
        self.api.close()

    def submit(self, files: list[Path], options: dict, idempotency_key: str | None = None) -> dict:
        return self.api.submit(list(files), options=options, idempotency_key=idempotency_key).data

    def job(self, job_id: str) -> dict:
        return self.api.job(job_id).data

    def items(self, job_id: str) -> list[dict]:
        return self.api.items(job_id)

    def wait(self, job_id: str, on_poll=None, interval_s: float = 0.5,
             timeout_s: float | None = None, follow: bool = True) -> dict:
        job = api_client.Job(self.api, {"id": job_id})
        show = (lambda j: on_poll(j.data)) if on_poll else None
        return job.wait(progress=show, poll=interval_s, timeout=timeout_s, follow=follow).data

    def download(self, job_id: str, item_id: str) -> bytes:
        return self.api.result(job_id, item_id)[0]
