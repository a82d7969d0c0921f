"""The web page at `/`: one HTML file whose script talks to /v1 with the key the user pasted."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ..site import STATIC_DIR

router = APIRouter(include_in_schema=False)

# Everything the page loads comes from here; results and previews are blob: URLs made from
# fetch() answers. No inline script, so an injected one would not run.
_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@router.get("/")
def index():
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache",
                                 "Referrer-Policy": "no-referrer"})
