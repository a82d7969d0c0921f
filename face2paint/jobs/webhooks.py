"""Webhooks of a job: the outbox rows, their retry schedule, and which URLs may be called.

A job submitted with `webhook_url` (options: webhook_url, webhook_events, webhook_key) gets one
WebhookDelivery row per event, written in the same transaction as the state change it reports
(an item succeeded or failed: stages.py, create.py; the job finished: progress.refresh_job), so
an event is never lost nor announced for a change that was rolled back. The ids of the rows a
transaction added are left in `session.info[OUTBOX]`; whoever owns the session publishes them
after the commit (worker.app.publish_outbox_after_commit), and the sweeper publishes again a
due row that no worker took (lost_deliveries). The worker's task claims a row (claim), sends
it, and records the answer (record_attempt): 2xx delivered; anything else is tried again after
an exponential backoff with full jitter, until give_up_after_s after the first attempt.

Never imports the worker or the API; never commits (jobs/__init__.py).
"""

from __future__ import annotations

import base64
import ipaddress
import random
import secrets
import socket
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import case, or_, select
from sqlalchemy.orm import Session

from ..settings import Settings
from .db import ApiKey, Item, Job, WebhookDelivery, new_id, utcnow
from .errors import clip
from .lookup import get_job
from .states import ItemState

ITEM_SUCCEEDED, ITEM_FAILED, JOB_FINISHED = "item.succeeded", "item.failed", "job.finished"
EVENTS = (ITEM_SUCCEEDED, ITEM_FAILED, JOB_FINISHED)
SECRET_PREFIX = "whsec_"
OUTBOX = "face2paint.webhook_outbox"  # session.info key: ids of deliveries to publish on commit
# A claimed delivery is not handed out again for this long (the attempt's own timeout is far
# shorter); a worker that died mid-attempt leaves it to the sweeper after that.
CLAIM_LEASE_S = 60.0
# A message may fire a little before the time written in its row (clocks, rounding).
_EARLY_S = 2.0


def new_secret() -> str:
    """A signing secret the Standard Webhooks way: whsec_ + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def key_secret(session: Session, key_hash: str) -> tuple[str, str | None] | None:
    """(key id, webhook secret) of an active key by its hash, or None."""
    row = session.execute(
        select(ApiKey.id, ApiKey.webhook_secret)
        .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    ).first()
    return (row[0], row[1]) if row else None


def secret_of_key(session: Session, key_id: str | None) -> str | None:
    if not key_id:
        return None
    return session.scalar(select(ApiKey.webhook_secret).where(ApiKey.id == key_id))


# --- which URLs ------------------------------------------------------------------------------


class WebhookRefused(ValueError):
    """A webhook URL that may not be called; the message says why and what to do."""


def _blocked(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_unspecified or ip.is_reserved)


def check_url(url: str, allow_private: bool) -> None:
    """WebhookRefused unless `url` is http(s) with a host that resolves only to public
    addresses (any address, with allow_private). Resolves the host: blocking."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused(f"webhook_url must be an http:// or https:// URL, not {parts.scheme or 'no'} scheme")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise WebhookRefused("webhook_url has an invalid port") from None
    if not host:
        raise WebhookRefused("webhook_url has no host")
    if parts.username or parts.password:
        raise WebhookRefused("webhook_url may not carry a user name or password")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise WebhookRefused(f"the host of webhook_url ({host}) cannot be resolved; check the URL") from None
    addrs = {info[4][0] for info in infos}
    if not addrs or any(_blocked(a) for a in addrs):
        raise WebhookRefused(
            f"webhook_url's host {host} resolves to a private, loopback, link-local or multicast "
            "address; use a public URL (or set FACE2PAINT_WEBHOOK_ALLOW_PRIVATE=true on the server)")


# --- the outbox ------------------------------------------------------------------------------


def _subscribed(job: Job, event: str) -> str | None:
    opts = job.options or {}
    url = opts.get("webhook_url")
    if not url:
        return None
    events = opts.get("webhook_events") or EVENTS
    return url if event in events else None


def _add(session: Session, job: Job, event: str, data: dict, now: datetime) -> WebhookDelivery | None:
    url = _subscribed(job, event)
    if url is None:
        return None
    row = WebhookDelivery(
        id=new_id(), job_id=job.id, event=event, url=url,
        api_key_id=(job.options or {}).get("webhook_key"),
        payload={"type": event, "timestamp": now.isoformat(), "data": data},
        attempts=0, created_at=now,
    )
    session.add(row)
    session.info.setdefault(OUTBOX, []).append(row.id)
    return row


def item_data(item: Item, job_id: str) -> dict:
    # job_id from the job: a new item's own foreign key is set only when it is flushed.
    data = {"job_id": job_id, "item_id": item.id, "index": item.index,
            "filename": item.filename, "status": str(item.status), "error": item.error}
    if item.status == ItemState.SUCCEEDED:
        data["result_url"] = f"/v1/jobs/{job_id}/items/{item.id}/result"
    return data


def item_ended(session: Session, item: Item, job: Job | None = None) -> WebhookDelivery | None:
    """The event of an item that just succeeded or failed (canceled items have none), in the
    transaction that ended it. Its time is the item's finished_at, so it sorts before the
    job.finished event that the same transaction may add first."""
    event = {ItemState.SUCCEEDED: ITEM_SUCCEEDED, ItemState.FAILED: ITEM_FAILED}.get(item.status)
    if event is None:
        return None
    job = job or session.get(Job, item.job_id)
    if job is None:
        return None
    return _add(session, job, event, item_data(item, job.id), item.finished_at or utcnow())


def job_finished(session: Session, job: Job) -> WebhookDelivery | None:
    """The event of a job that just reached a terminal state."""
    data = {"job_id": job.id, "status": str(job.status), "total": job.total,
            "succeeded": job.succeeded, "failed": job.failed, "canceled": job.canceled,
            "error": job.error, "items_url": f"/v1/jobs/{job.id}/items"}
    return _add(session, job, JOB_FINISHED, data, job.finished_at or utcnow())


def take_outbox(session: Session) -> list[str]:
    """The ids of deliveries added since the last take (to publish once committed)."""
    return session.info.pop(OUTBOX, None) or []


# --- delivering -------------------------------------------------------------------------------


def _lock(session: Session, delivery_id: str) -> WebhookDelivery | None:
    return session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
        .with_for_update().execution_options(populate_existing=True)
    ).one_or_none()


def claim(session: Session, delivery_id: str) -> WebhookDelivery | None:
    """Take a due delivery for one attempt (counted now, so a worker dying mid-attempt still
    counts), or None when it is done, or not due (a duplicate message: the row's own schedule
    has another one coming)."""
    row = _lock(session, delivery_id)
    if row is None or row.delivered_at is not None or row.failed_at is not None:
        return None
    now = utcnow()
    if row.next_attempt_at is not None and row.next_attempt_at > now + timedelta(seconds=_EARLY_S):
        return None
    row.attempts += 1
    if row.first_attempt_at is None:
        row.first_attempt_at = now
    row.next_attempt_at = now + timedelta(seconds=CLAIM_LEASE_S)
    return row


def backoff_s(attempts: int, settings: Settings) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(attempts-1))]."""
    ceiling = min(settings.webhook_backoff_cap_s,
                  settings.webhook_backoff_base_s * 2 ** min(max(attempts - 1, 0), 40))
    return random.uniform(0, ceiling)


def record_attempt(session: Session, delivery_id: str, status: int | None, error: str | None,
                   settings: Settings) -> float | None:
    """Record an attempt's answer (`status` None: no answer, `error` says why). Returns the
    seconds until the next attempt, or None when there is none (delivered, or given up)."""
    row = _lock(session, delivery_id)
    if row is None or row.delivered_at is not None or row.failed_at is not None:
        return None
    now = utcnow()
    row.last_status = status
    if status is not None and 200 <= status < 300:
        row.delivered_at = now
        row.last_error = None
        row.next_attempt_at = None
        return None
    row.last_error = clip(error or f"HTTP {status}")
    give_up_at = (row.first_attempt_at or now) + timedelta(seconds=settings.webhook_give_up_after_s)
    if now >= give_up_at:
        row.failed_at = now
        row.next_attempt_at = None
        return None
    nxt = min(now + timedelta(seconds=backoff_s(row.attempts, settings)), give_up_at)
    row.next_attempt_at = nxt
    return max(0.0, (nxt - now).total_seconds())


def give_up(session: Session, delivery_id: str, error: str) -> None:
    """A delivery that can never succeed (its URL is refused now): failed at once."""
    row = _lock(session, delivery_id)
    if row is None or row.delivered_at is not None or row.failed_at is not None:
        return
    row.last_error = clip(error)
    row.failed_at = utcnow()
    row.next_attempt_at = None


def lost_deliveries(session: Session, older_than_s: float, limit: int = 500) -> list[str]:
    """Pending deliveries due more than `older_than_s` ago (or never scheduled, created that
    long ago) that no worker took: their message was lost. Their clocks restart, and their ids
    go to the outbox, so they are published again once the caller commits."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    rows = list(session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.delivered_at.is_(None), WebhookDelivery.failed_at.is_(None),
               or_(WebhookDelivery.next_attempt_at < cutoff,
                   (WebhookDelivery.next_attempt_at.is_(None)) & (WebhookDelivery.created_at < cutoff)))
        .order_by(WebhookDelivery.created_at).limit(limit)
        .with_for_update(skip_locked=True)
    ))
    now = utcnow()
    for row in rows:
        row.next_attempt_at = now
    if rows:
        session.info.setdefault(OUTBOX, []).extend(r.id for r in rows)
    return [r.id for r in rows]


def job_deliveries(session: Session, job_id: str, owner: str) -> list[WebhookDelivery]:
    """The owner's job's deliveries, oldest first, job.finished after the items' events of the
    same moment (JobNotFound if the job is not theirs)."""
    get_job(session, job_id, owner)
    last = case((WebhookDelivery.event == JOB_FINISHED, 1), else_=0)
    return list(session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
        .order_by(WebhookDelivery.created_at, last, WebhookDelivery.id)
    ))
