"""A new job's webhook at submit: the URL checked (http(s) only; no private, loopback,
link-local or multicast host unless FACE2PAINT_WEBHOOK_ALLOW_PRIVATE) and the submitting key,
whose secret signs the deliveries, recorded with the job's options."""

from __future__ import annotations

from fastapi import HTTPException, Request
from sqlalchemy.orm import Session

from ..jobs.api_keys import hash_api_key
from ..jobs.db import unit_of_work
from ..jobs.webhooks import WebhookRefused, check_url, key_secret
from ..settings import Settings
from .auth import key_from_headers
from .options import JobOptions

NO_SECRET = ("this API key has no webhook secret (it was made before webhooks existed); create a "
             "new key with `face2paint keys create --owner NAME` and submit with that one")


def webhook_key(session: Session, request: Request, options: JobOptions, settings: Settings) -> str:
    """The id of the key whose secret signs this job's webhooks; HTTP 422 with the reason when
    the webhook cannot be had. Resolves the URL's host: blocking (a sync route's thread)."""
    if not options.webhook_url:
        raise HTTPException(422, "webhook_events needs a webhook_url to send them to")
    try:
        check_url(options.webhook_url, settings.webhook_allow_private)
    except WebhookRefused as e:
        raise HTTPException(422, str(e)) from None
    key = key_from_headers(request.headers.get("authorization"), request.headers.get("x-api-key"))
    with unit_of_work(session):
        found = key_secret(session, hash_api_key(key or ""))
    if not found or not found[1]:
        raise HTTPException(422, NO_SECRET)
    return found[0]
