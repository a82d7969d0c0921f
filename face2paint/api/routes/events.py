"""A job's progress as server-sent events, for the web page and any client that would
otherwise poll.

The stream holds no database session while it waits: it reads the job and its items in a
short session of its own, on the threadpool (never on the event loop), and sends what changed,
each time a job-change notice arrives on Redis (jobs/notices.py: a worker or the API committed
a change to this job) and at the latest every POLL_S, which is all it has when notices are
lost or the broker is not Redis. It ends after the event that shows the job terminal.
Authentication is the usual header (the page reads the stream with fetch(), which can send one, rather than with
EventSource, which cannot: a key in the query string would end up in logs and history).
"""

from __future__ import annotations

import json
import logging
import time
from typing import AsyncIterator

import anyio
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ...jobs.db import unit_of_work
from ...jobs.errors import NotFound
from ...jobs.lookup import get_job, list_items
from ...jobs.notices import channel
from ...jobs.states import TERMINAL_JOB_STATES
from .. import schemas
from ..deps import JobId, OwnerDep

log = logging.getLogger("face2paint.api.events")
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
        async with _Notices(request.app.state, job_id) as notices:
            async for chunk in _stream(notices):
                yield chunk

    async def _stream(notices: "_Notices") -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        sent_job, sent_items = None, {}
        last_sent = time.monotonic()
        # Subscribed after the first read: a change committed in between sent a notice this
        # stream did not hear, so read once more before the first wait.
        snapshot = first if notices.pubsub is None else None
        while True:
            if snapshot is None:
                try:
                    snapshot = await run_in_threadpool(_snapshot, sessions, job_id, owner)
                except NotFound:
                    yield _event("gone", json.dumps({"id": job_id}))
                    return
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
            await notices.wait(POLL_S)
            snapshot = None

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


class _Notices:
    """This job's change notices (jobs/notices.py) for one stream: `wait(s)` returns when one
    arrives or after s seconds. Without Redis, or once it fails, it only sleeps (polling)."""

    def __init__(self, state, job_id: str):
        self.client = getattr(state, "redis_async", None)
        self.channel = channel(job_id)
        self.pubsub = None

    async def __aenter__(self) -> "_Notices":
        if self.client is not None:
            try:
                self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                await self.pubsub.subscribe(self.channel)
            except Exception as e:  # noqa: BLE001 - the stream polls instead
                log.debug("no job-change notices for this stream (%r); polling", e)
                await self._drop()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._drop()

    async def wait(self, timeout_s: float) -> None:
        if self.pubsub is None:
            await anyio.sleep(timeout_s)
            return
        deadline = time.monotonic() + timeout_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                if await self.pubsub.get_message(timeout=left) is not None:
                    # Several commits may have come together: one snapshot answers them all.
                    while await self.pubsub.get_message(timeout=0) is not None:
                        pass
                    return
        except Exception as e:  # noqa: BLE001 - the stream polls instead
            log.debug("job-change notices lost (%r); polling", e)
            await self._drop()

    async def _drop(self) -> None:
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception:  # noqa: BLE001
                pass
