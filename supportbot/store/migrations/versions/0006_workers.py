"""Several workers: inbox lanes, leases, outbox leases, daily spending and the event bus's spill table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

``inbox.lane`` is the queue a message waits in (its conversation, or its channel's conversation key);
``leases`` says which worker runs a lane, or a channel's receiver, and until when. ``outbox`` rows get
a lease too, so two workers never send one row, and a retry's backoff holds for every worker.
``spending`` adds up the model's cost per day and scope for the cost caps; ``bus_spill`` holds
cross-worker events too large for a NOTIFY payload.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns: a plain ALTER TABLE ... ADD COLUMN on both databases (no table rebuild).
    op.add_column("inbox", sa.Column("lane", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_inbox_lane_id"), "inbox", ["lane", "id"], unique=False)
    op.add_column("outbox", sa.Column("lease_owner", sa.String(length=64), nullable=True))
    op.add_column("outbox", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "spending",
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("cost_usd", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "day", name=op.f("pk_spending")),
    )
    op.create_table(
        "bus_spill",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bus_spill")),
    )
    op.create_index(op.f("ix_bus_spill_created_at"), "bus_spill", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_bus_spill_created_at"), table_name="bus_spill")
    op.drop_table("bus_spill")
    op.drop_table("spending")
    op.drop_table("leases")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
    op.drop_index(op.f("ix_inbox_lane_id"), table_name="inbox")
    with op.batch_alter_table("inbox") as batch:
        batch.drop_column("lane")
