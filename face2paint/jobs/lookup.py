"""An owner's jobs and items by id. Anybody else's, and deleted ones, look exactly like ids
that do not exist."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import Item, Job
from .errors import ItemNotFound, JobExpired, JobNotFound, NoResultYet, ResultGone
from .states import PENDING_ITEM_STATES, ItemState


def get_job(session: Session, job_id: str, owner: str) -> Job:
    """The owner's job; JobNotFound for a job that is not there, not theirs, or deleted."""
    job = session.scalars(
        select(Job).where(Job.id == job_id, Job.owner == owner, Job.deleted_at.is_(None))
    ).one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    return job


def list_items(session: Session, job_id: str, owner: str) -> list[Item]:
    """The items of the owner's job, in upload order."""
    get_job(session, job_id, owner)
    return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.index)))


def get_item(session: Session, job_id: str, item_id: str, owner: str) -> Item:
    get_job(session, job_id, owner)
    item = session.scalars(
        select(Item).where(Item.id == item_id, Item.job_id == job_id)
    ).one_or_none()
    if item is None:
        raise ItemNotFound(job_id, item_id)
    return item


def check_stored(job: Job, retention_days: float | None = None) -> Job:
    """The job, if its objects are still stored; JobExpired once retention removed them."""
    if job.expired_at is not None:
        raise JobExpired(job.id, retention_days)
    return job


def get_result_key(session: Session, job_id: str, item_id: str, owner: str,
                   retention_days: float | None = None) -> str:
    """The object key of the item's result: NoResultYet while the item is pending, ResultGone
    (with the reason) once it failed or was canceled, JobExpired after the retention period."""
    item = get_item(session, job_id, item_id, owner)
    check_stored(item.job, retention_days)
    if item.status in PENDING_ITEM_STATES:
        raise NoResultYet(item_id, item.status)
    if item.status != ItemState.SUCCEEDED or not item.output_key:
        raise ResultGone(item_id, item.status, item.error)
    return item.output_key


def models_used(session: Session, job_ids: list[str]) -> dict[str, dict[str, list[str]]]:
    """Per job: role -> the model ids its items' stages ran (sorted; several when items ran
    on workers with different models)."""
    out: dict[str, dict[str, set[str]]] = {j: {} for j in job_ids}
    if job_ids:
        rows = session.execute(
            select(Item.job_id, Item.models).where(Item.job_id.in_(job_ids), Item.models.is_not(None))
        ).all()
        for job_id, models in rows:
            for role, model_id in (models or {}).items():
                out[job_id].setdefault(role, set()).add(str(model_id))
    return {j: {r: sorted(ids) for r, ids in roles.items()} for j, roles in out.items()}
