"""An owner's jobs and items by id. Anybody else's look exactly like ids that do not exist."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import Item, Job
from .errors import ItemNotFound, JobNotFound, NoResultYet
from .states import ItemState


def get_job(session: Session, job_id: str, owner: str) -> Job:
    """The owner's job; JobNotFound for a job that is not there or not theirs."""
    job = session.scalars(select(Job).where(Job.id == job_id, Job.owner == owner)).one_or_none()
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


def get_result_key(session: Session, job_id: str, item_id: str, owner: str) -> str:
    """The object key of the item's result; NoResultYet unless the item succeeded."""
    item = get_item(session, job_id, item_id, owner)
    if item.status != ItemState.SUCCEEDED or not item.output_key:
        raise NoResultYet(item_id, item.status)
    return item.output_key
