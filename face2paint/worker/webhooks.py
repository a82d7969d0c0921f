"""The webhook delivery task: one attempt at one outbox row (jobs/webhooks.py), signed the
Standard Webhooks way, on the `webhooks` queue.

Headers: `webhook-id` (the delivery's id, the same on every attempt, for the receiver to drop
repeats), `webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`
(`v1,` + base64 of HMAC-SHA256 over "{id}.{timestamp}.{body}" with the base64-decoded part of
the submitting key's `whsec_` secret), computed by the `standardwebhooks` package, whose
Webhook(secret).verify() is what a receiver runs. The body is the row's payload as compact JSON.

An attempt is claimed in one transaction (so two copies of a message never both send), made
outside any transaction with a short timeout and no redirects followed (a redirect could point
anywhere, a private address included), and its answer recorded in a second one; a retry is
published after that commit with its countdown. The URL is checked again before each attempt,
so a host that has come to resolve to a private address is refused then too.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import httpx
from standardwebhooks import Webhook

from ..jobs.webhooks import (
    WebhookRefused,
    check_url,
    claim,
    give_up,
    record_attempt,
    secret_of_key,
)
from .app import WEBHOOK_TASK, celery_app, enqueue_webhooks
from .context import resources

log = logging.getLogger("face2paint.webhooks")
app = celery_app()
USER_AGENT = "face2paint-webhooks/1"


def body_of(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def signed_headers(secret: str, delivery_id: str, body: str, when: datetime) -> dict[str, str]:
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(delivery_id, when, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def attempt(url: str, body: str, headers: dict[str, str], timeout_s: float) -> tuple[int | None, str | None]:
    """(HTTP status, error) of one POST; status None when no answer came."""
    try:
        r = httpx.post(url, content=body.encode(), headers=headers, timeout=timeout_s,
                       follow_redirects=False)
    except httpx.TimeoutException:
        return None, f"no answer within {timeout_s:g} s"
    except httpx.HTTPError as e:
        return None, f"{type(e).__name__}: {e}"
    if 200 <= r.status_code < 300:
        return r.status_code, None
    if r.is_redirect:
        return r.status_code, f"HTTP {r.status_code}: redirects are not followed; give the final URL"
    return r.status_code, f"HTTP {r.status_code}"


@app.task(name=WEBHOOK_TASK, ignore_result=True)
def deliver(delivery_id: str) -> None:
    res = resources()
    settings = res.settings
    with res.session_scope() as s:
        row = claim(s, delivery_id)
        if row is None:
            return  # delivered, given up, or a duplicate message of a row not due yet
        url, payload, attempts = row.url, dict(row.payload or {}), row.attempts
        secret = secret_of_key(s, row.api_key_id)
    try:
        if not secret:
            raise WebhookRefused("the API key that submitted the job has no webhook secret")
        check_url(url, settings.webhook_allow_private)
    except WebhookRefused as e:
        with res.session_scope() as s:
            give_up(s, delivery_id, str(e))
        log.warning("webhook %s refused: %s", delivery_id, e)
        return
    body = body_of(payload)
    headers = signed_headers(secret, delivery_id, body, datetime.now(timezone.utc))
    status, error = attempt(url, body, headers, settings.webhook_timeout_s)
    with res.session_scope() as s:
        delay = record_attempt(s, delivery_id, status, error, settings)
    if delay is not None:
        log.info("webhook %s attempt %d: %s; next in %.1f s", delivery_id, attempts, error, delay)
        enqueue_webhooks([delivery_id], countdown=delay)
