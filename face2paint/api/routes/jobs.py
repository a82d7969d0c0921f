"""Jobs: submit, list, status and cancel. Every route needs an API key, and a key sees only its
owner's jobs (404 for anybody else's, so ids reveal nothing)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile

from ...jobs.cancel import cancel_job
from ...jobs.create import create_job
from ...jobs.db import unit_of_work
from ...jobs.listing import list_jobs
from ...jobs.lookup import get_job
from .. import metrics, schemas
from ..deps import Cursor, EnqueuerDep, IdempotencyKey, JobId, OwnerDep, SessionDep, SettingsDep, StorageDep
from ..errors import answers
from ..options import JobOptionsDep
from ..uploads import read_uploads
from ..webhooks import webhook_key

router = APIRouter(prefix="/v1", tags=["jobs"])


# A sync route: it runs in the thread pool, so storing the files and the commits never hold up
# the event loop. FastAPI has parsed the multipart form (spooling big files to disk) before.
@router.post("/jobs", status_code=202, response_model=schemas.JobOut,
             responses=answers(409, 415))
def submit_job(
    request: Request,
    session: SessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
    storage: StorageDep,
    enqueuer: EnqueuerDep,
    options: JobOptionsDep,
    files: Annotated[list[UploadFile], File(description="The photos, one part each.")] = None,
    idempotency_key: IdempotencyKey = None,
):
    """Submit photos for processing; returns the job at once (202) and processes it in the
    background. Repeating a request with the same Idempotency-Key returns the same job."""
    stored = options.stored()
    if options.webhook_url or options.webhook_events:
        stored["webhook_key"] = webhook_key(session, request, options, settings)
    uploads = read_uploads(files or [], settings)
    # Two workflows that open their own units of work: the job is committed, then published.
    job, created = create_job(session, storage, owner, uploads, stored, idempotency_key,
                              settings=settings)
    if created:
        metrics.UPLOADED.inc(len(job.items))
        enqueuer.new_job(session, job)
    return schemas.job_out(job)


@router.get("/jobs", response_model=schemas.JobPage, responses=answers(400))
def list_owner_jobs(
    session: SessionDep,
    owner: OwnerDep,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
):
    with unit_of_work(session):
        jobs, next_cursor = list_jobs(session, owner, cursor, limit)
        return schemas.JobPage(jobs=[schemas.job_out(j) for j in jobs], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=schemas.JobOut)
def job_status(job_id: JobId, session: SessionDep, owner: OwnerDep):
    with unit_of_work(session):
        return schemas.job_out(get_job(session, job_id, owner))


@router.post("/jobs/{job_id}/cancel", response_model=schemas.JobOut)
def cancel(job_id: JobId, session: SessionDep, owner: OwnerDep):
    """Cancel every item not yet finished; finished results stay available."""
    with unit_of_work(session):
        return schemas.job_out(cancel_job(session, job_id, owner))
