"""Apply the Alembic migrations in face2paint/migrations from code; no alembic.ini needed.

Several processes (API replicas, workers) may call upgrade() at start-up at the same time; on
PostgreSQL an advisory lock makes them take turns, on SQLite the write lock does.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from .db import make_engine, normalise_url

# Any fixed 64-bit number; it only has to be the same in every face2paint process.
_ADVISORY_LOCK_ID = 0x46325041494E54  # "F2PAINT"


def migrations_dir() -> Path:
    from .. import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url:
        # ConfigParser interpolation: a literal % (in a password) must be doubled.
        cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` up to `revision` (default: the latest)."""
    _run(url, lambda cfg: command.upgrade(cfg, revision))


def downgrade(url: str, revision: str) -> None:
    _run(url, lambda cfg: command.downgrade(cfg, revision))


def current(url: str) -> str | None:
    """The revision the database is at, or None for an empty (never migrated) database."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def is_up_to_date(url: str) -> bool:
    return current(url) == head_revision()


def _run(url: str, action) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                # Session-level lock: survives the commit below and the migration's own
                # transaction, released explicitly (or when the connection closes).
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_LOCK_ID})
                conn.commit()
            try:
                cfg = alembic_config(url)
                cfg.attributes["connection"] = conn
                action(cfg)
                conn.commit()
            finally:
                if postgres:
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK_ID})
                    conn.commit()
    finally:
        engine.dispose()
