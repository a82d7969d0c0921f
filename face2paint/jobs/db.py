"""Database schema for jobs, items, faces, stage attempts and API keys; engines, sessions and
the unit of work (the one place a transaction is committed; see the package docstring).

One schema for PostgreSQL (production) and SQLite (embedded mode). The migrations in
face2paint/migrations must produce exactly this schema; a test compares them.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from .states import ItemState, JobState, Outcome, Stage

# Named constraints, so later migrations (including SQLite batch mode) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores timestamptz; SQLite has no time zones, so values are stored as naive UTC
    and come back tagged as UTC. Callers always see aware datetimes and can compare them.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class EnumText(TypeDecorator):
    """A StrEnum stored as its value in a VARCHAR and read back as the member.

    A plain VARCHAR in the schema (no database enum type or CHECK constraint), so adding a
    state later needs no migration of the column; an unknown value fails loudly both ways.
    """

    impl = String
    cache_ok = True

    def __init__(self, enum: type[StrEnum], length: int = 32):
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: str | None, dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect) -> StrEnum | None:
        return None if value is None else self.enum(value)


# SQLite only auto-increments INTEGER PRIMARY KEY columns, so big ids are plain integers there.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    # sha256 hex of the key; the plaintext is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The key's first characters, to tell keys apart in `keys list` (not enough to use one).
    prefix: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    # The key's webhook signing secret (whsec_ + base64), shown with the key when created.
    # Kept in plain text: signing needs it (HMAC), unlike the key, which is only compared.
    webhook_secret: Mapped[str | None] = mapped_column(String(64))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # NULLs are distinct in unique constraints on both backends, so jobs without an
        # idempotency key never collide.
        UniqueConstraint("owner", "idempotency_key"),
        # Cursor pagination of one owner's jobs, newest first.
        Index(None, "owner", "created_at", "id"),
        # The retention sweep: finished jobs older than the retention period.
        Index(None, "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(255))
    status: Mapped[JobState] = mapped_column(EnumText(JobState), default=JobState.QUEUED)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # sha256 over the request (options and files), to tell a retried request from a different
    # request that reuses the same idempotency key.
    request_hash: Mapped[str | None] = mapped_column(String(64))
    total: Mapped[int] = mapped_column(default=0)
    succeeded: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    canceled: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Privacy (jobs/retention.py): deleted by its owner (404 from then on), or expired after
    # the retention period (410 for its results); purged once its objects are gone from storage.
    deleted_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    purged_at: Mapped[datetime | None]

    items: Mapped[list[Item]] = relationship(
        back_populates="job", order_by="Item.index", passive_deletes=True
    )

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.canceled


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("job_id", "index"),
        # The sweeper's scans: items in a given state not touched since some time.
        Index(None, "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int]  # position in the job's upload
    filename: Mapped[str] = mapped_column(String(255))  # display only, sanitised
    content_type: Mapped[str] = mapped_column(String(127))
    input_key: Mapped[str] = mapped_column(String(1024))
    output_key: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[ItemState] = mapped_column(EnumText(ItemState), default=ItemState.QUEUED)
    stage: Mapped[Stage | None] = mapped_column(EnumText(Stage))  # current (or last) stage
    attempts: Mapped[int] = mapped_column(default=0)  # attempts at the current stage
    error: Mapped[str | None] = mapped_column(Text)
    face_count: Mapped[int | None]
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # stage -> seconds
    # role -> model id, as each stage ran (detect, parse, stylize, stylize_background).
    models: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    width: Mapped[int | None]
    height: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set once the first stage's task is published. NULL on a queued item older than a few
    # seconds means the process died between the commit and the publish: the sweeper sends it.
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="items")
    faces: Mapped[list[FaceRow]] = relationship(
        back_populates="item", order_by="FaceRow.idx", passive_deletes=True
    )


class FaceRow(Base):
    """One detected face: the cache of detection results, reused by later stages."""

    __tablename__ = "faces"
    __table_args__ = (UniqueConstraint("item_id", "idx"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    idx: Mapped[int]
    box: Mapped[list[float]] = mapped_column(JSON)  # [x1, y1, x2, y2] in input pixels
    landmarks: Mapped[list[list[float]] | None] = mapped_column(JSON)  # 5 × [x, y]
    score: Mapped[float] = mapped_column(Float)

    item: Mapped[Item] = relationship(back_populates="faces")


class StageAttempt(Base):
    """One run of one stage on one item, for auditing and metrics.

    finished_at stays NULL when the worker died mid-stage. task_id is the broker message
    that carries the attempt (a merged stage runs under the message of the stage before it):
    a redelivered copy of another message must not take the stage over (worker/tasks.py).
    """

    __tablename__ = "stage_attempts"
    __table_args__ = (Index(None, "item_id", "stage"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    stage: Mapped[Stage] = mapped_column(EnumText(Stage))
    attempt: Mapped[int]
    worker: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    outcome: Mapped[Outcome | None] = mapped_column(EnumText(Outcome, 16))
    error: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(64))


class WebhookDelivery(Base):
    """One webhook event of a job, to be delivered to its URL (the outbox): written in the
    transaction of the state change it reports, sent by the worker's webhook task after the
    commit, retried until delivered_at or failed_at is set (jobs/webhooks.py)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index(None, "job_id", "created_at"),
        # The sweeper's scan: undelivered rows due before some time.
        Index(None, "delivered_at", "failed_at", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    # Whose secret signs it: the key that submitted the job.
    api_key_id: Mapped[str | None] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    first_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- engines and sessions -------------------------------------------------------------------


def normalise_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs that name no driver (postgres:// as Heroku writes)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine configured for the job system's access pattern on either backend."""
    url = normalise_url(url)
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _make_sqlite_engine(url, parsed, **kwargs)
    if backend == "postgresql":
        connect_args = dict(kwargs.pop("connect_args", {}))
        if "connect_timeout" not in parsed.query:
            connect_args.setdefault("connect_timeout", 10)
        # pre_ping: after a database restart, pooled connections are dead; check before use.
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, connect_args=connect_args, **kwargs)
    raise ValueError(
        f"unsupported database URL scheme {parsed.drivername!r}: use postgresql://... "
        "or sqlite:///path/to/face2paint.db"
    )


def _make_sqlite_engine(url: str, parsed, **kwargs: Any) -> Engine:
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args = dict(kwargs.pop("connect_args", {}))
    # Sessions move between threads in the API's thread pool; SQLite itself serialises access.
    connect_args.setdefault("check_same_thread", False)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Take transaction control from the sqlite3 module (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # First, so that the pragmas below also wait for a lock instead of failing.
        cur.execute("PRAGMA busy_timeout=30000")
        if not in_memory:
            # WAL: readers don't block the writer and vice versa, across processes.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # BEGIN IMMEDIATE takes the write lock up front. A plain (deferred) BEGIN that reads and
        # then writes fails at once with "database is locked" if another process wrote in
        # between; busy_timeout cannot help there. This makes SQLite's transactions behave like
        # the row locks the PostgreSQL path takes.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def session_factory(engine: Engine) -> sessionmaker:
    # expire_on_commit=False: a unit of work returns ORM objects that callers read after it
    # committed (possibly after the session is closed).
    return sessionmaker(bind=engine, expire_on_commit=False)


def after_commit(sessions: sessionmaker, key: str, publish: Callable[[Any], None]) -> None:
    """On every session of `sessions`: once a transaction commits, hand what it left in
    `session.info[key]` to `publish`; a rollback drops it (those rows were never written). For
    work outside the database that must follow a commit, never precede it: webhook deliveries
    (jobs/webhooks.py), job-change notices (jobs/notices.py)."""

    @event.listens_for(sessions, "after_commit")
    def _publish(session):
        value = session.info.pop(key, None)
        if value:
            publish(value)

    @event.listens_for(sessions, "after_soft_rollback")
    def _forget(session, previous_transaction):
        session.info.pop(key, None)


@contextmanager
def unit_of_work(session: Session) -> Iterator[Session]:
    """One transaction on `session`: committed when the block ends, rolled back if it raises.

    The only place face2paint commits. It refuses to start inside a transaction already open
    on the session (a read outside any unit of work, or a nested unit), because committing
    that would end work its owner did not mean to end.
    """
    if session.in_transaction():
        raise RuntimeError(
            "a transaction is already open on this session; run every database call inside "
            "one `with unit_of_work(session):` at a time (see face2paint/jobs/__init__.py)"
        )
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


@contextmanager
def session_scope(sessions: sessionmaker) -> Iterator[Session]:
    """A new session holding one unit of work, closed afterwards: for the worker, the command
    line and tools, which have no request to tie a session to."""
    with sessions() as session, unit_of_work(session):
        yield session
