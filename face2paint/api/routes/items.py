"""A job's items and their results (owner only, like every /v1 route)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from ...jobs.db import unit_of_work
from ...jobs.lookup import get_item, get_result_key, list_items
from ...jobs.storage import ObjectNotFound
from ...models.image_io import OUTPUT_FORMATS
from .. import schemas
from ..deps import ItemId, JobId, OwnerDep, SessionDep, SettingsDep, StorageDep
from ..downloads import content_disposition, extension_of, object_chunks, result_name
from ..errors import answers

router = APIRouter(prefix="/v1", tags=["jobs"])
_MEDIA = {f.extension: f.mime for f in OUTPUT_FORMATS.values()}


@router.get("/jobs/{job_id}/items", response_model=list[schemas.ItemOut])
def job_items(job_id: JobId, session: SessionDep, owner: OwnerDep):
    with unit_of_work(session):
        return [schemas.item_out(i) for i in list_items(session, job_id, owner)]


@router.get("/jobs/{job_id}/items/{item_id}/result",
            responses={**answers(409, 410), 200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
                       307: {"description": "presigned URL"}})
def item_result(job_id: JobId, item_id: ItemId, session: SessionDep, owner: OwnerDep,
                storage: StorageDep, settings: SettingsDep,
                redirect: Annotated[bool, Query(description=(
                    "false: the API sends the bytes itself even on S3 (for a page's fetch(): a "
                    "cross-origin redirect drops its Authorization header and needs CORS)"))] = True):
    """The stylized image, named after its upload (`IMG_1.HEIC` gives `IMG_1.png`): a redirect
    to a presigned URL on S3, or the file itself. 409 while the item is pending; 410 with the
    reason once it failed or was canceled, or after the job's retention period."""
    with unit_of_work(session):
        key = get_result_key(session, job_id, item_id, owner, settings.retention_days)
        filename = get_item(session, job_id, item_id, owner).filename
    ext = extension_of(key)
    disposition = content_disposition(result_name(filename, ext))
    if redirect:
        url = storage.presigned_get_url(key, settings.presign_expires_s, disposition)
        if url:
            return RedirectResponse(url, status_code=307)
    headers = {"Content-Disposition": disposition, "Cache-Control": "private, max-age=86400"}
    media_type = _MEDIA.get(ext, "application/octet-stream")
    try:
        path = storage.local_path(key)
        if path is not None:
            return FileResponse(path, media_type=media_type, headers=headers)
        return StreamingResponse(object_chunks(storage, key), media_type=media_type, headers=headers)
    except ObjectNotFound:
        raise HTTPException(404, f"the result of item {item_id} is no longer stored") from None
