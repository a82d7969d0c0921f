"""Privacy and provenance: jobs can be deleted and expire (their objects purged), items record
the models their stages used, API keys keep a displayable prefix.

Revision ID: 0003_privacy
Revises: 0002_webhooks
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_privacy"
down_revision = "0002_webhooks"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER much in place.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("deleted_at", TS, nullable=True))
        batch.add_column(sa.Column("expired_at", TS, nullable=True))
        batch.add_column(sa.Column("purged_at", TS, nullable=True))
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("models", sa.JSON(), nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("prefix", sa.String(16), nullable=True))
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_finished_at", "jobs")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("prefix")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("models")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("purged_at")
        batch.drop_column("expired_at")
        batch.drop_column("deleted_at")
