"""A job's items and their results (owner only, like every /v1 route)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from ...jobs.db import unit_of_work
from ...jobs.lookup import get_result_key, list_items
from .. import schemas
from ..deps import ItemId, JobId, OwnerDep, SessionDep, SettingsDep, StorageDep
from ..errors import answers

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.get("/jobs/{job_id}/items", response_model=list[schemas.ItemOut])
def job_items(job_id: JobId, session: SessionDep, owner: OwnerDep):
    with unit_of_work(session):
        return [schemas.item_out(i) for i in list_items(session, job_id, owner)]


@router.get("/jobs/{job_id}/items/{item_id}/result",
            responses={307: {"description": "presigned URL"}, **answers(409)})
def item_result(job_id: JobId, item_id: ItemId, session: SessionDep, owner: OwnerDep,
                storage: StorageDep, settings: SettingsDep):
    """The stylized image: a redirect to a presigned URL on S3, or the file itself."""
    with unit_of_work(session):
        key = get_result_key(session, job_id, item_id, owner)
    url = storage.presigned_get_url(key, settings.presign_expires_s)
    if url:
        return RedirectResponse(url, status_code=307)
    return FileResponse(storage.local_path(key), media_type="image/png", filename=f"{item_id}.png")
