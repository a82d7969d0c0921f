"""A job's webhook deliveries: each event, its attempts and their last answer (owner only)."""

from __future__ import annotations

from fastapi import APIRouter

from ...jobs.db import unit_of_work
from ...jobs.webhooks import job_deliveries
from .. import schemas
from ..deps import JobId, OwnerDep, SessionDep

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.get("/jobs/{job_id}/webhooks", response_model=list[schemas.WebhookDeliveryOut])
def job_webhooks(job_id: JobId, session: SessionDep, owner: OwnerDep):
    """The job's webhook events, oldest first: attempts so far, the last HTTP status and error,
    and when it was delivered, given up (24 h after its first attempt) or is tried next."""
    with unit_of_work(session):
        return [schemas.webhook_delivery_out(d) for d in job_deliveries(session, job_id, owner)]
