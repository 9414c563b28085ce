"""Tickets and their event log, as a part of ``SQLStore``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select

from supportbot.errors import StorageError
from supportbot.store._sqlbase import SQLBase, now
from supportbot.store.base import Ticket, TicketEvent, TicketKind, TicketPriority, TicketStatus
from supportbot.store.models import ticket_events as _e
from supportbot.store.models import tickets as _t

__all__ = ["TicketMixin"]

_TICKET_COLS = (
    _t.c.id, _t.c.subject, _t.c.description, _t.c.status, _t.c.priority, _t.c.kind, _t.c.conversation_id,
    _t.c.customer_id, _t.c.channel, _t.c.flow, _t.c.assignee, _t.c.created_at, _t.c.updated_at,
)  # fmt: skip
_TICKET_INSERT = _t.insert().returning(_t.c.id)
_TICKET_BY_ID = select(*_TICKET_COLS).where(_t.c.id == bindparam("tid"))
_EVENT_COLS = (_e.c.id, _e.c.ticket_id, _e.c.actor, _e.c.action, _e.c.detail, _e.c.created_at)
_EVENTS_OF = select(*_EVENT_COLS).where(_e.c.ticket_id == bindparam("tid")).order_by(_e.c.id)


def _ticket(row: Sequence[Any]) -> Ticket:
    return Ticket(
        id=row[0], subject=row[1], description=row[2], status=row[3], priority=row[4], kind=row[5],
        conversation_id=row[6], customer_id=row[7], channel=row[8], flow=row[9], assignee=row[10],
        created_at=row[11], updated_at=row[12],
    )  # fmt: skip


def _event(row: Sequence[Any]) -> TicketEvent:
    return TicketEvent(id=row[0], ticket_id=row[1], actor=row[2], action=row[3], detail=row[4], created_at=row[5])


class TicketMixin(SQLBase):
    """Ticket methods of the ``Store`` protocol. Every change is logged as a ``TicketEvent`` in the same transaction."""

    async def create_ticket(
        self,
        *,
        subject: str,
        description: str = "",
        kind: TicketKind = "request",
        priority: TicketPriority = "normal",
        conversation_id: str | None = None,
        customer_id: str | None = None,
        channel: str | None = None,
        flow: str | None = None,
        actor: str = "bot",
    ) -> Ticket:
        """Open a ticket; its first event is ``created`` by ``actor``."""
        at = now()
        values = {
            "subject": subject, "description": description, "status": "open", "priority": priority, "kind": kind,
            "conversation_id": conversation_id, "customer_id": customer_id, "channel": channel, "flow": flow,
            "assignee": None, "created_at": at, "updated_at": at,
        }  # fmt: skip
        async with self._begin("creating a ticket") as connection:
            ticket_id = (await connection.execute(_TICKET_INSERT, values)).scalar_one()
            await connection.execute(
                _e.insert(),
                {"ticket_id": ticket_id, "actor": actor, "action": "created", "detail": kind, "created_at": at},
            )
            row = (await connection.execute(_TICKET_BY_ID, {"tid": ticket_id})).one()
        return _ticket(row)

    async def get_ticket(self, ticket_id: int) -> Ticket | None:
        async with self._begin("reading a ticket") as connection:
            row = (await connection.execute(_TICKET_BY_ID, {"tid": ticket_id})).first()
        return None if row is None else _ticket(row)

    async def list_tickets(
        self, *, status: TicketStatus | None = None, conversation_id: str | None = None, limit: int = 100
    ) -> list[Ticket]:
        """Tickets, newest first, optionally only those with ``status`` or of one conversation."""
        query = select(*_TICKET_COLS).order_by(_t.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(_t.c.status == status)
        if conversation_id is not None:
            query = query.where(_t.c.conversation_id == conversation_id)
        async with self._begin("listing tickets") as connection:
            rows = (await connection.execute(query)).all()
        return [_ticket(row) for row in rows]

    async def update_ticket(
        self,
        ticket_id: int,
        *,
        actor: str,
        status: TicketStatus | None = None,
        priority: TicketPriority | None = None,
        assignee: str | None = None,
        note: str | None = None,
    ) -> Ticket:
        """Change a ticket; each real change (and a note) becomes an event with ``actor``.

        Events: ``status``/``priority``/``assignee`` with the new value as detail, ``note`` with the text.
        ``assignee=""`` unassigns (an ``assignee`` event with an empty detail).

        Raises:
            StorageError: there is no ticket ``ticket_id``.
        """
        async with self._begin("updating a ticket", write_first=True) as connection:
            query = _TICKET_BY_ID
            if connection.dialect.name == "postgresql":
                query = query.with_for_update()
            row = (await connection.execute(query, {"tid": ticket_id})).first()
            if row is None:
                raise StorageError(f"no ticket #{ticket_id}; list tickets with `supportbot tickets list`")
            old = _ticket(row)
            changes: dict[str, str | None] = {
                key: value or None
                for key, value in (("status", status), ("priority", priority), ("assignee", assignee))
                if value is not None and (value or None) != getattr(old, key)
            }
            at = now()
            events = [
                {"ticket_id": ticket_id, "actor": actor, "action": key, "detail": value or "", "created_at": at}
                for key, value in changes.items()
            ]
            if note:
                events.append(
                    {"ticket_id": ticket_id, "actor": actor, "action": "note", "detail": note, "created_at": at}
                )
            if events:
                await connection.execute(_t.update().where(_t.c.id == ticket_id).values(**changes, updated_at=at))
                await connection.execute(_e.insert(), events)
                row = (await connection.execute(_TICKET_BY_ID, {"tid": ticket_id})).one()
        return _ticket(row)

    async def ticket_events(self, ticket_id: int) -> list[TicketEvent]:
        """The ticket's events, oldest first."""
        async with self._begin("reading ticket events") as connection:
            rows = (await connection.execute(_EVENTS_OF, {"tid": ticket_id})).all()
        return [_event(row) for row in rows]
