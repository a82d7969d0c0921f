"""Liveness, readiness (database, broker, storage) — open, no API key."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import text

from ...jobs.db import unit_of_work
from ..deps import SessionDep, StorageDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "The database, the broker or the storage does not answer."}})
def readyz(request: Request, session: SessionDep, storage: StorageDep):
    """Ready when the database, the broker and the storage all answer."""
    checks = {}
    try:
        with unit_of_work(session):
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"error: {type(e).__name__}"
    try:
        with request.app.state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as e:  # noqa: BLE001
        checks["broker"] = f"error: {type(e).__name__}"
    try:
        storage.check()
        checks["storage"] = "ok"
    except Exception as e:  # noqa: BLE001
        checks["storage"] = f"error: {type(e).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return Response(
        content=json.dumps({"status": "ok" if ok else "unavailable", "checks": checks}),
        status_code=200 if ok else 503,
        media_type="application/json",
    )
