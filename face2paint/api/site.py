"""What a browser loads from the API: the web page's files (static/, package data: plain HTML,
CSS and JS, nothing to build), Swagger UI at /docs and ReDoc at /redoc from files served here
(the fastapi-offline package ships both bundles, so the docs work without internet), and the
OpenAPI document's security schemes, so /docs has an Authorize button.

The API never creates keys for a browser: the page takes a key that `face2paint up` or
`face2paint keys create` printed (see static/index.html).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles


STATIC_DIR = Path(__file__).with_name("static")
EXAMPLES_DIR = STATIC_DIR / "examples"
_DOCS_ASSETS = "/static/docs"

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "Authorization: Bearer KEY (`face2paint keys create --owner NAME`)"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "X-API-Key: KEY, the same key as a header of its own"},
}
# Either scheme alone is enough.
_SECURITY = [{"bearer": []}, {"apiKey": []}]


def example_url(style: str) -> str | None:
    """The URL of a style's example thumbnail, if the page ships one."""
    return f"/static/examples/{style}.jpg" if (EXAMPLES_DIR / f"{style}.jpg").is_file() else None


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


def install(app: FastAPI) -> None:
    """Mount the page's files and the docs' assets, add /docs and /redoc, declare the security
    schemes. The app must be created with docs_url=None and redoc_url=None."""
    docs_assets = files("fastapi_offline") / "static"
    app.mount(_DOCS_ASSETS, StaticFiles(directory=str(docs_assets)), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.openapi = _with_security(app)

    @app.get("/docs", include_in_schema=False)
    def swagger_ui():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - API", oauth2_redirect_url=None,
            swagger_js_url=f"{_DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{_DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return get_redoc_html(
            openapi_url=app.openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{_DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url="/static/favicon.svg", with_google_fonts=False,
        )
