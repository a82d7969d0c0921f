"""A job's progress as server-sent events, for the web page and any client that would
otherwise poll.

The stream holds no database session while it waits: every POLL_S it reads the job and its
items in a short session of its own, on the threadpool (never on the event loop), and sends
what changed. It ends after the event that shows the job terminal. Authentication is the
usual header (the page reads the stream with fetch(), which can send one, rather than with
EventSource, which cannot: a key in the query string would end up in logs and history).
"""

from __future__ import annotations

import json
import time
from typing import AsyncIterator

import anyio
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ...jobs.db import unit_of_work
from ...jobs.errors import NotFound
from ...jobs.lookup import get_job, list_items
from ...jobs.states import TERMINAL_JOB_STATES
from .. import schemas
from ..deps import JobId, OwnerDep

router = APIRouter(prefix="/v1", tags=["jobs"])

POLL_S = 0.5
# A comment line this often keeps proxies and load balancers from closing an idle stream.
KEEPALIVE_S = 15.0
_DOC = {200: {"content": {"text/event-stream": {}}, "description": (
    "`job` (JobOut) and `item` (ItemOut) events as they change, first all of them; "
    "`end` (JobOut) once the job is terminal, then the stream closes; `gone` if the job is deleted")}}


def _snapshot(sessions, job_id: str, owner: str):
    with sessions() as session, unit_of_work(session):
        job = get_job(session, job_id, owner)
        items = [schemas.item_out(i) for i in list_items(session, job_id, owner)]
        job = schemas.job_out(job, schemas.job_models(items))
    return job, items


def _event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse, responses=_DOC)
async def job_events(job_id: JobId, request: Request, owner: OwnerDep):
    """Per-item progress of a job, live (text/event-stream)."""
    sessions = request.app.state.sessions
    # Before the stream starts, so an unknown job is a plain 404.
    first = await run_in_threadpool(_snapshot, sessions, job_id, owner)

    async def events() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        sent_job, sent_items = None, {}
        snapshot, last_sent = first, time.monotonic()
        while True:
            job, items = snapshot
            for item in items:
                data = item.model_dump_json()
                if sent_items.get(item.id) != data:
                    sent_items[item.id] = data
                    yield _event("item", data)
                    last_sent = time.monotonic()
            data = job.model_dump_json()
            if job.status in TERMINAL_JOB_STATES:
                yield _event("end", data)
                return
            if data != sent_job:
                sent_job = data
                yield _event("job", data)
                last_sent = time.monotonic()
            if time.monotonic() - last_sent >= KEEPALIVE_S:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
            await anyio.sleep(POLL_S)
            try:
                snapshot = await run_in_threadpool(_snapshot, sessions, job_id, owner)
            except NotFound:
                yield _event("gone", json.dumps({"id": job_id}))
                return

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
