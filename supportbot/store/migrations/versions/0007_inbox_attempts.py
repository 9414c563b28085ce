"""Inbox attempts: how often a message's turn failed, counted in the database across workers and restarts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

A turn that fails (the database away, a bug) is tried again after a rest; after ``len(RETRY_AFTER_S)``
retries the message is given up on (``supportbot.dispatch``). The count lived in each worker's memory, so
N workers tried a message up to N times as often, and a restart started it again from zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: a plain ALTER TABLE ... ADD COLUMN on both databases (no table rewrite).
    op.add_column("inbox", sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("inbox") as batch:
        batch.drop_column("attempts")
