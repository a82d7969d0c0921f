"""The dependencies routes take as parameters, declared once as Annotated types.

One database session per request: SessionDep opens it, the owner lookup and the route share
it (FastAPI caches a dependency within a request), and it is closed when the route returns,
before the response is sent. Routes run their database work in `with unit_of_work(session):`
blocks (jobs/__init__.py).
"""

from __future__ import annotations

from typing import Annotated, Iterator, Optional

from fastapi import Depends, Header, Path, Request, Response
from sqlalchemy.orm import Session

from ..jobs.api_keys import owner_for_key
from ..jobs.db import unit_of_work
from ..jobs.storage import Storage
from ..settings import Settings
from .auth import key_from_headers, take_token, unknown_key
from .publishing import Enqueuer


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def request_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
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


def require_owner(
    request: Request,
    response: Response,
    session: SessionDep,
    authorization: Annotated[Optional[str], Header()] = None,
    x_api_key: Annotated[Optional[str], Header()] = None,
) -> str:
    """The owner of the request's API key (401 without a valid one), after its rate limit."""
    key = key_from_headers(authorization, x_api_key)
    with unit_of_work(session):
        owner = owner_for_key(session, key)
    if owner is None:
        raise unknown_key()
    take_token(getattr(request.app.state, "limiter", None), request.method, key, response)
    return owner


OwnerDep = Annotated[str, Depends(require_owner)]
