"""Response models of API v1."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from pydantic import BaseModel

from ..jobs.states import ItemState, JobState, Stage


class Progress(BaseModel):
    """The items by how they stand, apart: done (succeeded), failed, canceled and pending add
    up to total. A canceled job of 16 photos, 3 finished, reads done 3, canceled 13."""

    done: int
    failed: int
    canceled: int
    pending: int
    total: int


class JobOut(BaseModel):
    id: str
    status: JobState
    options: dict
    progress: Progress
    succeeded: int
    failed: int
    canceled: int
    error: Optional[str] = None
    created_at: datetime
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    # When its photos and results were deleted after the retention period (410 from then on).
    expired_at: Optional[datetime] = None
    # Per role (detect, parse, stylize, stylize_background), the models its items ran.
    models: dict[str, list[str]] = {}
    items_url: str


class ItemOut(BaseModel):
    id: str
    index: int
    filename: Optional[str]
    status: ItemState
    stage: Optional[Stage]
    attempts: int
    face_count: Optional[int]
    width: Optional[int]
    height: Optional[int]
    error: Optional[str]
    timings: Optional[dict]
    # Per role, the model its stage ran (as the stages ran; empty before the first).
    models: dict[str, str] = {}
    result_url: Optional[str]
    created_at: datetime
    finished_at: Optional[datetime] = None


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: Optional[str]


def job_out(job, models: dict[str, list[str]] | None = None) -> JobOut:
    pending = max(0, job.total - job.succeeded - job.failed - job.canceled)
    return JobOut(
        id=job.id, status=job.status, options=job.options or {},
        progress=Progress(done=job.succeeded, failed=job.failed, canceled=job.canceled,
                          pending=pending, total=job.total),
        succeeded=job.succeeded,
        failed=job.failed, canceled=job.canceled, error=job.error, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at, expired_at=job.expired_at,
        models=models or {}, items_url=f"/v1/jobs/{job.id}/items",
    )


def job_models(items) -> dict[str, list[str]]:
    """The models a job's items (ItemOut) ran, per role."""
    out: dict[str, set[str]] = {}
    for item in items:
        for role, model_id in item.models.items():
            out.setdefault(role, set()).add(model_id)
    return {role: sorted(ids) for role, ids in out.items()}


def item_out(item) -> ItemOut:
    succeeded = item.status == ItemState.SUCCEEDED
    return ItemOut(
        id=item.id, index=item.index, filename=item.filename, status=item.status,
        stage=item.stage, attempts=item.attempts, face_count=item.face_count,
        width=item.width, height=item.height, error=item.error, timings=item.timings,
        models={str(k): str(v) for k, v in (item.models or {}).items()},
        result_url=f"/v1/jobs/{item.job_id}/items/{item.id}/result" if succeeded else None,
        created_at=item.created_at, finished_at=item.finished_at,
    )


class StyleOut(BaseModel):
    """A style preset (models/presets.py): the `style` a job may name."""

    name: str
    description: str
    face_model: str
    background_model: str
    licences: list[str]
    commercial_use: bool
    # A thumbnail of the preset on a public-domain photo, when the page ships one.
    example_url: Optional[str] = None


def style_out(preset, example_url: str | None) -> StyleOut:
    return StyleOut(
        name=preset.id, description=preset.description, face_model=preset.face_model,
        background_model=preset.background_model, licences=list(preset.licences),
        commercial_use=preset.commercial_use, example_url=example_url,
    )


class WebhookDeliveryOut(BaseModel):
    """One webhook event of a job and how its delivery went."""

    id: str  # the webhook-id header of every attempt
    event: str
    url: str
    attempts: int
    last_status: Optional[int] = None
    last_error: Optional[str] = None
    created_at: datetime
    next_attempt_at: Optional[datetime] = None
    delivered_at: Optional[datetime] = None
    failed_at: Optional[datetime] = None


def webhook_delivery_out(row) -> WebhookDeliveryOut:
    return WebhookDeliveryOut(
        id=row.id, event=row.event, url=row.url, attempts=row.attempts,
        last_status=row.last_status, last_error=row.last_error, created_at=row.created_at,
        next_attempt_at=None if row.delivered_at or row.failed_at else row.next_attempt_at,
        delivered_at=row.delivered_at, failed_at=row.failed_at,
    )
