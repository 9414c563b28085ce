"""At most one open handoff ticket per conversation: a partial unique index on ``tickets``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

Before this, parallel ``handoff_to_human`` calls could each open a handoff ticket. The upgrade
keeps the oldest open one of each conversation and closes the others, logging why on each (a
``status`` and a ``note`` event by ``migration``), so the index can be created.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN_HANDOFF = "kind = 'handoff' AND status IN ('open', 'pending')"

# Each open handoff ticket with the oldest open handoff ticket of its conversation.
_OPEN_HANDOFFS = """
    SELECT t.id, (SELECT min(o.id) FROM tickets o
                  WHERE o.conversation_id = t.conversation_id AND o.kind = 'handoff'
                  AND o.status IN ('open', 'pending')) AS kept
    FROM tickets t
    WHERE t.conversation_id IS NOT NULL AND t.kind = 'handoff' AND t.status IN ('open', 'pending')
"""


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text(_OPEN_HANDOFFS)).all()
    duplicates = [(ticket_id, kept) for ticket_id, kept in rows if ticket_id != kept]
    if duplicates:
        events = sa.table(
            "ticket_events",
            sa.column("ticket_id", sa.BigInteger()),
            sa.column("actor", sa.Text()),
            sa.column("action", sa.String()),
            sa.column("detail", sa.Text()),
            sa.column("created_at", sa.DateTime(timezone=True)),
        )
        tickets = sa.table(
            "tickets",
            sa.column("id", sa.BigInteger()),
            sa.column("status", sa.String()),
            sa.column("updated_at", sa.DateTime(timezone=True)),
        )
        # SQLite keeps timestamps as naive UTC text (see ``UTCDateTime``); PostgreSQL a zoned value.
        at = datetime.now(UTC)
        if bind.dialect.name == "sqlite":
            at = at.replace(tzinfo=None)
        note = "closed: a second open handoff ticket of its conversation; the handoff is #{}"
        op.bulk_insert(
            events,
            [
                {"ticket_id": ticket_id, "actor": "migration", "action": action, "detail": detail, "created_at": at}
                for ticket_id, kept in duplicates
                for action, detail in (("note", note.format(kept)), ("status", "closed"))
            ],
        )
        for ticket_id, _ in duplicates:
            bind.execute(tickets.update().where(tickets.c.id == ticket_id).values(status="closed", updated_at=at))
    op.create_index(
        "uq_tickets_open_handoff",
        "tickets",
        ["conversation_id"],
        unique=True,
        sqlite_where=sa.text(_OPEN_HANDOFF),
        postgresql_where=sa.text(_OPEN_HANDOFF),
    )


def downgrade() -> None:
    op.drop_index("uq_tickets_open_handoff", table_name="tickets")
