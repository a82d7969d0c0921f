"""Downloads: a job's results as one streamed zip, and each item's input as a preview (what the
web page compares a result with). Owner only, like every /v1 route."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response, StreamingResponse

from ...jobs.db import unit_of_work
from ...jobs.lookup import check_stored, get_item, get_job, list_items
from ...jobs.states import ItemState
from ...jobs.storage import ObjectNotFound
from ..deps import ItemId, JobId, OwnerDep, SessionDep, SettingsDep, StorageDep
from ..downloads import UniqueNames, content_disposition, extension_of, result_name
from ..errors import answers
from ..zipstream import MANIFEST, Member, stream_zip

router = APIRouter(prefix="/v1", tags=["jobs"])

_ZIP = {200: {"content": {"application/zip": {}}, "description": "the zip, streamed"}}
_JPEG = {200: {"content": {"image/jpeg": {}}, "description": "the input as JPEG"}}
# Inputs and results never change once stored; the browser may keep them.
_IMMUTABLE = "private, max-age=86400, immutable"


@router.get("/jobs/{job_id}/results.zip", response_class=StreamingResponse,
            responses={**_ZIP, **answers(409, 410)})
def results_zip(job_id: JobId, session: SessionDep, owner: OwnerDep, storage: StorageDep,
                settings: SettingsDep):
    """Every succeeded item's result, named after its upload (`a.jpg` gives `a.png`; a second
    `a.jpg` gives `a (2).png`), and manifest.json: which upload each file came from, and the
    items without a result with their status and reason. Streamed from storage as it is sent.
    Ask again after the job finishes for the rest; 409 while no item has a result."""
    with unit_of_work(session):
        job = check_stored(get_job(session, job_id, owner), settings.retention_days)
        items = list_items(session, job_id, owner)
        status = str(job.status)
        names = UniqueNames(reserved=(MANIFEST,))
        members, files, without = [], [], []
        for it in items:
            if it.status == ItemState.SUCCEEDED and it.output_key:
                name = names.take(result_name(it.filename, extension_of(it.output_key)))
                members.append(Member(name, it.output_key, it.finished_at))
                files.append({"name": name, "upload": it.filename, "item": it.id})
            else:
                without.append({"upload": it.filename, "item": it.id, "status": str(it.status),
                                "error": it.error})
    if not members:
        raise HTTPException(409, f"job {job_id} has no results yet (status {status}); wait for an "
                                 f"item to succeed (GET /v1/jobs/{job_id}/items)")
    manifest = {"job": job_id, "status": status, "files": files, "not_included": without}
    return StreamingResponse(
        stream_zip(storage, members, manifest), media_type="application/zip",
        headers={"Content-Disposition": content_disposition(f"face2paint-{job_id}.zip")},
    )


@router.get("/jobs/{job_id}/items/{item_id}/input", response_class=Response,
            responses={**_JPEG, **answers(410)})
def item_input(job_id: JobId, item_id: ItemId, session: SessionDep, owner: OwnerDep,
               storage: StorageDep, settings: SettingsDep):
    """The uploaded photo as the pipeline sees it, as JPEG: orientation applied, longest side at
    most FACE2PAINT_MAX_SIDE, no metadata. Any input format (HEIC, TIFF, PGM, ...) comes out
    viewable in a browser, the same shape as the result."""
    from ...models.image_io import ImageError, encode_image, load_image

    with unit_of_work(session):
        item = get_item(session, job_id, item_id, owner)
        check_stored(item.job, settings.retention_days)
        key, filename = item.input_key, item.filename
    try:
        data = storage.get_bytes(key)
    except ObjectNotFound:
        raise HTTPException(404, f"the input of item {item_id} is no longer stored") from None
    try:
        image = load_image(data, max_side=settings.max_side, max_pixels=settings.max_image_pixels)
    except ImageError as e:
        raise HTTPException(422, f"the input of item {item_id} cannot be shown: {e}") from None
    return Response(
        encode_image(image.rgb, "JPEG", quality=85), media_type="image/jpeg",
        headers={"Content-Disposition": content_disposition(result_name(filename, "jpg"), "inline"),
                 "Cache-Control": _IMMUTABLE},
    )

