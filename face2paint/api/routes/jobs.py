"""Jobs: submit, list, status and cancel. Every route needs an API key, and a key sees only its
owner's jobs (404 for anybody else's, so ids reveal nothing)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, File, Query, Request, Response, UploadFile

from ...jobs.cancel import cancel_job
from ...jobs.create import create_job
from ...jobs.db import unit_of_work
from ...jobs.listing import list_jobs
from ...jobs.lookup import get_job, list_items, models_used
from ...jobs.states import ItemState
from ...jobs.retention import mark_deleted, mark_purged, purge_objects
from .. import metrics, schemas
from ..deps import Cursor, EnqueuerDep, IdempotencyKey, JobId, OwnerDep, SessionDep, SettingsDep, StorageDep
from ..errors import ErrorOut, answers
from ..servable import check_servable
from ..options import JobOptionsDep
from ..uploads import read_uploads
from ..webhooks import webhook_key

router = APIRouter(prefix="/v1", tags=["jobs"])
log = logging.getLogger("face2paint.api")


# A sync route: it runs in the thread pool, so storing the files and the commits never hold up
# the event loop. FastAPI has parsed the multipart form (spooling big files to disk) before.
@router.post("/jobs", status_code=202, response_model=schemas.JobOut,
             responses={**answers(409, 415), 503: {"model": ErrorOut, "description": (
                 "No running worker holds the weights of the style; the answer lists the "
                 "styles that can run.")}})
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
    check_servable(options.style, getattr(request.app.state, "catalog", None))
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
        models = models_used(session, [j.id for j in jobs])
        return schemas.JobPage(jobs=[schemas.job_out(j, models[j.id]) for j in jobs],
                               next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=schemas.JobOut)
def job_status(job_id: JobId, session: SessionDep, owner: OwnerDep):
    with unit_of_work(session):
        job = get_job(session, job_id, owner)
        return schemas.job_out(job, models_used(session, [job.id])[job.id])


@router.post("/jobs/{job_id}/cancel", response_model=schemas.JobOut)
def cancel(job_id: JobId, session: SessionDep, owner: OwnerDep, storage: StorageDep):
    """Cancel every item not yet finished; finished results stay available. The canceled
    items' intermediate files are removed."""
    with unit_of_work(session):
        job = cancel_job(session, job_id, owner)
        canceled = [i.id for i in list_items(session, job_id, owner) if i.status == ItemState.CANCELED]
        out = schemas.job_out(job, models_used(session, [job.id])[job.id])
    drop_canceled_artifacts(storage, job_id, canceled)
    return out


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response)
def delete_job(job_id: JobId, session: SessionDep, owner: OwnerDep, storage: StorageDep):
    """Delete the job: what is still running is canceled, its photos, intermediate files and
    results are removed from storage, and the job answers 404 from then on (it leaves the
    listing too). Deleting it again is a no-op (204)."""
    with unit_of_work(session):
        job = mark_deleted(session, job_id, owner)
        purged = job.purged_at is not None
    if not purged:
        # Storage down: a 503 (retry the DELETE); the job is deleted all the same, and the
        # sweeper removes its objects when the storage is back.
        purge_objects(storage, job_id)
        with unit_of_work(session):
            mark_purged(session, [job_id])
    return Response(status_code=204)


def drop_canceled_artifacts(storage, job_id: str, item_ids: list[str]) -> None:
    from ...jobs.retention import drop_item_artifacts

    for item_id in item_ids:
        try:
            drop_item_artifacts(storage, job_id, item_id, result=True)
        except Exception as e:  # noqa: BLE001 - best effort: the worker drops them too
            log.warning("could not remove the artifacts of canceled item %s: %r", item_id, e)
