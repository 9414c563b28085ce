"""Channels: conversation addresses and keys, channel state, and why an outbox row last failed.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10

``conversation_addresses`` binds a conversation to its channel's conversation key (found through
``ix_conversation_addresses_channel_key``) and to where its replies go; ``channel_state`` keeps a
channel's values between runs (cursors). The outbox gets ``last_error`` and a partial index of the
rows given up on, which operators list.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OUTBOX_FAILED = "status = 'failed'"


def upgrade() -> None:
    op.create_table(
        "conversation_addresses",
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=True),
        sa.Column("address", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_addresses_conversation_id_conversations"),
        ),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_conversation_addresses")),
    )
    op.create_index(
        op.f("ix_conversation_addresses_channel_key"), "conversation_addresses", ["channel", "key"], unique=False
    )
    op.create_table(
        "channel_state",
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel", "key", name=op.f("pk_channel_state")),
    )
    # A nullable column is a plain ALTER TABLE ... ADD COLUMN on both databases (no table rebuild).
    op.add_column("outbox", sa.Column("last_error", sa.Text(), nullable=True))
    op.create_index(
        "ix_outbox_failed",
        "outbox",
        ["id"],
        unique=False,
        sqlite_where=sa.text(_OUTBOX_FAILED),
        postgresql_where=sa.text(_OUTBOX_FAILED),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_failed", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("last_error")
    op.drop_table("channel_state")
    op.drop_index(op.f("ix_conversation_addresses_channel_key"), table_name="conversation_addresses")
    op.drop_table("conversation_addresses")
