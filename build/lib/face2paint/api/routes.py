"""API v1 routes. Every route but health needs an API key, and a key sees only its owner's jobs
(404 for anybody else's, so ids reveal nothing)."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Optional

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import select, text

from ..jobs import service
from ..jobs.db import Item
from . import schemas
from .auth import require_owner
from .uploads import read_uploads, validate_options

log = logging.getLogger("face2paint.api")
router = APIRouter(prefix="/v1", tags=["jobs"])
health = APIRouter(tags=["health"])


def _sessions(request: Request):
    return request.app.state.sessions


def _job_or_404(session, job_id: str, owner: str):
    job = service.get_job(session, job_id, owner)
    if job is None:
        raise HTTPException(404, f"no job {job_id} for this API key")
    return job


@router.post("/jobs", status_code=202, response_model=schemas.JobOut)
async def submit_job(
    request: Request,
    owner: Annotated[str, Depends(require_owner)],
    files: Annotated[list[UploadFile], File(description="The photos, one part each.")] = None,
    options: Annotated[Optional[str], Form(description='JSON, e.g. {"style": "animeganv2-hayao-int8", "face2paint": true, "params": {"eye_enhance_ratio": 1.2}}')] = None,
    style: Annotated[Optional[str], Form()] = None,
    face2paint: Annotated[Optional[bool], Form()] = None,
    idempotency_key: Annotated[Optional[str], Header(alias="Idempotency-Key", max_length=200)] = None,
):
    """Submit photos for processing; returns the job at once (202) and processes it in the
    background. Repeating a request with the same Idempotency-Key returns the same job."""
    settings = request.app.state.settings
    opts = validate_options(options, style, face2paint)
    uploads = await read_uploads(files or [], settings)
    with _sessions(request)() as s:
        try:
            job, created = service.create_job(
                s, request.app.state.storage, owner, uploads, opts, idempotency_key,
                settings=settings,
            )
        except service.IdempotencyConflict as e:
            raise HTTPException(409, str(e)) from None
        except service.JobRejected as e:
            raise HTTPException(400, str(e)) from None
        s.commit()
        # Items rejected at upload start out failed and are never published.
        item_ids = [i.id for i in job.items if i.status == "queued"] if created else []
        out = schemas.job_out(job)
    if item_ids:
        from ..worker import faults
        from ..worker.app import enqueue_items

        faults.hit("submit", job.id, [i.filename for i in job.items])  # inert in production
        # A crash between the commit above and this publish leaves items with enqueued_at
        # unset; the sweeper finds and enqueues them. For the same reason a broker that is
        # down now is no reason to fail the request: the job is safely stored, and the
        # sweeper publishes what was not published once the broker is back.
        try:
            enqueue_items(item_ids)
        except Exception:  # any publish failure is recovered the same way
            log.warning("could not publish job %s; the sweeper will", job.id, exc_info=True)
            return out
        with _sessions(request)() as s:
            service.mark_enqueued(s, item_ids)
            s.commit()
    return out


@router.get("/jobs", response_model=schemas.JobPage)
def list_jobs(
    request: Request,
    owner: Annotated[str, Depends(require_owner)],
    cursor: Optional[str] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
):
    with _sessions(request)() as s:
        try:
            jobs, next_cursor = service.list_jobs(s, owner, cursor, limit)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return schemas.JobPage(jobs=[schemas.job_out(j) for j in jobs], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=schemas.JobOut)
def get_job(job_id: str, request: Request, owner: Annotated[str, Depends(require_owner)]):
    with _sessions(request)() as s:
        return schemas.job_out(_job_or_404(s, job_id, owner))


@router.get("/jobs/{job_id}/items", response_model=list[schemas.ItemOut])
def list_items(job_id: str, request: Request, owner: Annotated[str, Depends(require_owner)]):
    with _sessions(request)() as s:
        job = _job_or_404(s, job_id, owner)
        return [schemas.item_out(i) for i in sorted(job.items, key=lambda i: i.index)]


@router.get("/jobs/{job_id}/items/{item_id}/result", responses={307: {"description": "presigned URL"}})
def get_result(job_id: str, item_id: str, request: Request, owner: Annotated[str, Depends(require_owner)]):
    """The stylized image: a redirect to a presigned URL on S3, or the file itself."""
    with _sessions(request)() as s:
        _job_or_404(s, job_id, owner)
        item = s.scalar(select(Item).where(Item.id == item_id, Item.job_id == job_id))
        if item is None:
            raise HTTPException(404, f"no item {item_id} in job {job_id}")
        if item.status != "succeeded" or not item.output_key:
            raise HTTPException(409, f"item {item_id} has no result yet (status {item.status})")
        key = item.output_key
    storage = request.app.state.storage
    url = storage.presigned_get_url(key, request.app.state.settings.presign_expires_s)
    if url:
        return RedirectResponse(url, status_code=307)
    path = storage.local_path(key)
    return FileResponse(path, media_type="image/png", filename=f"{item_id}.png")


@router.post("/jobs/{job_id}/cancel", response_model=schemas.JobOut)
def cancel_job(job_id: str, request: Request, owner: Annotated[str, Depends(require_owner)]):
    """Cancel every item not yet finished; finished results stay available."""
    with _sessions(request)() as s:
        _job_or_404(s, job_id, owner)
        service.cancel_job(s, job_id, owner)
        s.commit()
        return schemas.job_out(_job_or_404(s, job_id, owner))


@health.get("/healthz")
def healthz():
    return {"status": "ok"}


@health.get("/readyz")
def readyz(request: Request):
    """Ready when the database, the broker and the storage all answer."""
    checks = {}
    try:
        with _sessions(request)() as s:
            s.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"error: {type(e).__name__}"
    try:
        from ..worker.app import celery_app

        with celery_app().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as e:  # noqa: BLE001
        checks["broker"] = f"error: {type(e).__name__}"
    try:
        request.app.state.storage.check()
        checks["storage"] = "ok"
    except Exception as e:  # noqa: BLE001
        checks["storage"] = f"error: {type(e).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return Response(
        content=json.dumps({"status": "ok" if ok else "unavailable", "checks": checks}),
        status_code=200 if ok else 503,
        media_type="application/json",
    )
