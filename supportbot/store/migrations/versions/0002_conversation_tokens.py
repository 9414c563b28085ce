"""Conversation access tokens (the web widget's), stored as SHA-256 hashes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversation_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversations.id"], name=op.f("fk_conversation_tokens_conversation_id_conversations")
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_conversation_tokens")),
    )
    op.create_index(
        op.f("ix_conversation_tokens_conversation_id"), "conversation_tokens", ["conversation_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_conversation_tokens_conversation_id"), table_name="conversation_tokens")
    op.drop_table("conversation_tokens")
