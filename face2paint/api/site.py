"""What a browser loads from the API: the web page's files (static/, package data: plain HTML,
CSS and JS, nothing to build), Swagger UI at /docs and ReDoc at /redoc from files served here
(the fastapi-offline package ships both bundles, so the docs work without internet), and the
OpenAPI document's security schemes, so /docs has an Authorize button.

The API never creates keys for a browser: the page takes a key that `face2paint up` or
`face2paint keys create` printed (see static/index.html).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles


STATIC_DIR = Path(__file__).with_name("static")
EXAMPLES_DIR = STATIC_DIR / "examples"
_DOCS_ASSETS = "/static/docs"
_REDOCLY_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
# The docs pages may load from this server only (their generated HTML has inline scripts; ReDoc
# runs its search in a blob: worker).
_DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
             "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'")

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "Authorization: Bearer KEY (`face2paint keys create --owner NAME`)"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "X-API-Key: KEY, the same key as a header of its own"},
}
# Either scheme alone is enough.
_SECURITY = [{"bearer": []}, {"apiKey": []}]


@lru_cache(maxsize=1)
def _examples() -> dict[str, str]:
    """Style -> its example image (examples.json, written by tools/style_examples.py)."""
    try:
        styles = json.loads((EXAMPLES_DIR / "examples.json").read_text())["styles"]
    except (OSError, ValueError, KeyError):
        return {}
    return {name: s["image"] for name, s in styles.items() if (EXAMPLES_DIR / s.get("image", "")).is_file()}


def example_url(style: str) -> str | None:
    """The URL of a style's example thumbnail, if the page ships one."""
    image = _examples().get(style)
    return f"/static/examples/{quote(image)}" if image else None


# The headers deps.require_owner reads; an operation that has them needs a key.
_KEY_HEADERS = {"authorization", "x-api-key"}


def _with_security(app: FastAPI):
    build = app.openapi

    def openapi() -> dict:
        """FastAPI's document, with the key headers of each operation that takes them turned
        into the security requirement they are (Swagger UI ignores an Authorization parameter
        and would show X-API-Key on every operation)."""
        schema = build()
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for path in schema.get("paths", {}).values():
            for op in path.values():
                params = op.get("parameters", [])
                keep = [p for p in params if not (p.get("in") == "header" and p.get("name", "").lower() in _KEY_HEADERS)]
                if len(keep) != len(params):
                    op["parameters"] = keep
                    op["security"] = _SECURITY
        return schema

    return openapi


@lru_cache(maxsize=1)
def _redoc_js() -> bytes:
    """ReDoc's bundle without its one hard-wired remote address (the Redocly logo, which it
    hides when the image does not load): a docs page that reaches nowhere else."""
    js = (files("fastapi_offline") / "static" / "redoc.standalone.js").read_bytes()
    return js.replace(_REDOCLY_LOGO, b"")


def install(app: FastAPI) -> None:
    """Mount the page's files and the docs' assets, add /docs and /redoc, declare the security
    schemes. The app must be created with docs_url=None and redoc_url=None."""
    docs_assets = files("fastapi_offline") / "static"

    # Before the mount below, which would otherwise answer first.
    @app.get(f"{_DOCS_ASSETS}/redoc.standalone.js", include_in_schema=False)
    def redoc_js():
        return Response(_redoc_js(), media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    app.mount(_DOCS_ASSETS, StaticFiles(directory=str(docs_assets)), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.openapi = _with_security(app)

    @app.get("/docs", include_in_schema=False)
    def swagger_ui():
        return _docs_page(get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - API", oauth2_redirect_url=None,
            swagger_js_url=f"{_DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{_DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
            # No validator badge: it would send the document's address to validator.swagger.io.
            swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        ))

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return _docs_page(get_redoc_html(
            openapi_url=app.openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{_DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url="/static/favicon.svg", with_google_fonts=False,
        ))


def _docs_page(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = _DOCS_CSP
    return page
