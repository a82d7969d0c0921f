"""Each stage attempt records the broker message that carries it, so that a redelivered copy
of one message does not take over a stage that another message is running.

Revision ID: 0004_attempt_task
Revises: 0003_privacy
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_attempt_task"
down_revision = "0003_privacy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Attempts made before this revision have no task id: the carrier check skips them.
    op.add_column("stage_attempts", sa.Column("task_id", sa.String(64), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by copying the table (batch mode); PostgreSQL in place.
    with op.batch_alter_table("stage_attempts") as batch:
        batch.drop_column("task_id")
