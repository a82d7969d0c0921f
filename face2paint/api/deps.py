"""The dependencies routes take as parameters, declared once as Annotated types.

One database session per request: on a route that takes OwnerDep, the Authenticate middleware
opened it for the key lookup (before the body was read) and SessionDep hands the same one on;
elsewhere SessionDep opens it. It is closed when the route returns, before the response is
sent. Routes run their database work in `with unit_of_work(session):` blocks (jobs/__init__.py).

Every path, query and header parameter has a shape checked here at the edge (422 otherwise),
so nothing unchecked reaches SQL: ids (JobId, ItemId), the list cursor (Cursor; its content is
checked by jobs.listing), the Idempotency-Key (IdempotencyKey).
"""

from __future__ import annotations

from typing import Annotated, Iterator, Optional

from fastapi import Depends, Header, Path, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from ..jobs.storage import Storage
from ..settings import Settings
from .auth import authenticate
from .authenticate import STATE_OWNER, STATE_SESSION
from .publishing import Enqueuer


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def request_session(request: Request) -> Iterator[Session]:
    session = getattr(request.state, STATE_SESSION, None)  # the middleware's, when it ran
    if session is None:
        session = request.app.state.sessions()
    with session:
        yield session


def app_storage(request: Request) -> Storage:
    return request.app.state.storage


def app_enqueuer(request: Request) -> Enqueuer:
    return request.app.state.enqueuer


SettingsDep = Annotated[Settings, Depends(app_settings)]
# scope="function": closed as soon as the route returns, not after the response is sent, so
# no transaction (on SQLite: the write lock) outlives the route.
SessionDep = Annotated[Session, Depends(request_session, scope="function")]
StorageDep = Annotated[Storage, Depends(app_storage)]
EnqueuerDep = Annotated[Enqueuer, Depends(app_enqueuer)]

# Ids have one shape (jobs.db.new_id: 32 lowercase hex digits); anything else is refused at the
# edge with a 422 and never reaches SQL (a NUL byte there is a database error).
ID_PATTERN = r"^[0-9a-f]{32}$"
JobId = Annotated[str, Path(pattern=ID_PATTERN, min_length=32, max_length=32, description="A job id.")]
ItemId = Annotated[str, Path(pattern=ID_PATTERN, min_length=32, max_length=32, description="An item id.")]
# A cursor is base64url of a short JSON array (jobs.listing.encode_cursor); its content is
# checked when it is decoded (400), its shape here (422).
CURSOR_MAX = 256
Cursor = Annotated[Optional[str], Query(max_length=CURSOR_MAX, pattern=r"^[A-Za-z0-9_-]+={0,2}$",
                                        description="The next_cursor of the previous page.")]
# Printable ASCII, no leading or trailing space (jobs.idempotency also caps it at 255).
IdempotencyKey = Annotated[Optional[str], Header(
    alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[!-~]([ -~]*[!-~])?$",
    description="Repeat a request with the same key to get the same job (printable ASCII).")]

# Declared for the OpenAPI document (and /docs' Authorize button); the Authenticate middleware
# reads the same headers itself before the body.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer KEY`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: KEY`")


def require_owner(
    request: Request,
    session: SessionDep,
    bearer: Annotated[Optional[HTTPAuthorizationCredentials], Security(_bearer)] = None,
    x_api_key: Annotated[Optional[str], Security(_api_key_header)] = None,
) -> str:
    """The owner of the request's API key. The Authenticate middleware has checked it (401 and
    429 before the body); a route it did not cover (an app built without it) checks here."""
    owner = getattr(request.state, STATE_OWNER, None)
    if owner is not None:
        return owner
    client = request.client
    auth = authenticate(lambda: session, getattr(request.app.state, "limiter", None),
                        request.method, request.headers.get("authorization"), x_api_key,
                        client.host if client else "unknown")
    return auth.owner


OwnerDep = Annotated[str, Depends(require_owner)]
