"""Alembic environment: runs on the connection face2paint.jobs.migrate hands over, or on an
engine built from sqlalchemy.url (default: the database the settings name). SQLite gets batch
mode (it cannot ALTER most things) and one transaction for the whole upgrade."""

from __future__ import annotations

from alembic import context

from face2paint.jobs.db import Base, make_engine
from face2paint.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url


def _configure(**kwargs) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, **kwargs)


def run_offline() -> None:
    url = _url()
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    # Alembic treats SQLite DDL as non-transactional and commits after each migration, which
    # lets a second process take the write lock between steps with a stale plan (and add a
    # column twice). Our SQLite engine runs every statement inside BEGIN IMMEDIATE, so DDL is
    # transactional there: the whole upgrade is one transaction under one write lock.
    _configure(
        connection=connection,
        render_as_batch=sqlite,
        transactional_ddl=True if sqlite else None,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
