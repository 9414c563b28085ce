"""Tickets and their event log, as a part of ``SQLStore``.

The two rules on opening tickets hold in the database, for any number of processes:

* a cap on a customer's tickets per day (``create_ticket_capped``) counts and inserts in one
  transaction that first takes a lock every competitor must take too: SQLite's write lock
  (``BEGIN IMMEDIATE``), PostgreSQL's row lock on the customer (``FOR NO KEY UPDATE``, which
  does not block the foreign-key checks of other writes);
* one open handoff ticket per conversation (``open_handoff_ticket``) is a partial unique index
  (``uq_tickets_open_handoff``), written to with ``INSERT ... ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from supportbot.errors import StorageError
from supportbot.store._sqlbase import SQLBase, now
from supportbot.store.base import (
    CapScope,
    Ticket,
    TicketEvent,
    TicketKind,
    TicketOutcome,
    TicketPriority,
    TicketStatus,
)
from supportbot.store.models import OPEN_HANDOFF
from supportbot.store.models import conversations as _conv
from supportbot.store.models import customers as _c
from supportbot.store.models import ticket_events as _e
from supportbot.store.models import tickets as _t

__all__ = ["TicketMixin"]

logger = logging.getLogger("supportbot.store")

_TICKET_COLS = (
    _t.c.id, _t.c.subject, _t.c.description, _t.c.status, _t.c.priority, _t.c.kind, _t.c.conversation_id,
    _t.c.customer_id, _t.c.channel, _t.c.flow, _t.c.assignee, _t.c.created_at, _t.c.updated_at,
)  # fmt: skip
_TICKET_INSERT = _t.insert().returning(_t.c.id)
_TICKET_BY_ID = select(*_TICKET_COLS).where(_t.c.id == bindparam("tid"))
_TICKETS_AFTER = select(*_TICKET_COLS).where(_t.c.id > bindparam("tid")).order_by(_t.c.id).limit(bindparam("n"))
_LAST_TICKET_ID = select(func.coalesce(func.max(_t.c.id), 0))
_EVENT_COLS = (_e.c.id, _e.c.ticket_id, _e.c.actor, _e.c.action, _e.c.detail, _e.c.created_at)
_EVENTS_OF = select(*_EVENT_COLS).where(_e.c.ticket_id == bindparam("tid")).order_by(_e.c.id)
_OPEN_HANDOFF_OF = (
    select(*_TICKET_COLS).where(_t.c.conversation_id == bindparam("cid"), OPEN_HANDOFF).order_by(_t.c.id).limit(1)
)
_ATTEMPTS = 3
"""Tries of ``open_handoff_ticket`` when the open ticket it collided with was closed before it could be read."""


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

    def on_ticket_opened(self, callback: Callable[[int], None]) -> None:
        """Call ``callback`` with a new ticket's id once the transaction that opened it has committed (the admin
        page's live list); it runs on the event loop and must not block or raise."""
        self._ticket_opened.append(callback)

    def _opened(self, ticket: Ticket) -> Ticket:
        for callback in self._ticket_opened:
            try:
                callback(ticket.id)
            except Exception:
                logger.exception("a listener of new tickets failed")
        return ticket

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
        values = _values(subject, description, kind, priority, conversation_id, customer_id, channel, flow)
        async with self._begin("creating a ticket") as connection:
            ticket_id = (await connection.execute(_TICKET_INSERT, values)).scalar_one()
            ticket = await _created(connection, ticket_id, actor, kind)
        return self._opened(ticket)

    async def create_ticket_capped(
        self,
        *,
        cap: int,
        subject: str,
        customer_id: str,
        description: str = "",
        kind: TicketKind = "request",
        priority: TicketPriority = "normal",
        conversation_id: str | None = None,
        channel: str | None = None,
        flow: str | None = None,
        actor: str = "bot",
        window: timedelta = timedelta(days=1),
        per: CapScope = "customer",
    ) -> TicketOutcome:
        """Open a ticket unless the customer has ``cap`` of ``kind`` within ``window``; see ``Store``."""
        if cap < 1:
            raise ValueError(f"cap must be at least 1, got {cap}")
        if per == "conversation" and conversation_id is None:
            raise ValueError("a cap per conversation needs conversation_id")
        values = _values(subject, description, kind, priority, conversation_id, customer_id, channel, flow)
        since = values["created_at"] - window
        owner, key = (_c, customer_id) if per == "customer" else (_conv, conversation_id)
        counted = _t.c.customer_id == customer_id if per == "customer" else _t.c.conversation_id == conversation_id
        async with self._begin("creating a ticket", write_first=True) as connection:
            # Capped inserts for this customer (or conversation) take turns here, so each count sees the last ticket.
            await self._backend.hold_row(connection, select(owner.c.id).where(owner.c.id == key))
            count, latest = (
                await connection.execute(
                    select(func.count(), func.max(_t.c.id)).where(counted, _t.c.kind == kind, _t.c.created_at >= since)
                )
            ).one()
            if count >= cap:
                row = (await connection.execute(_TICKET_BY_ID, {"tid": latest})).one()
                return TicketOutcome(ticket=_ticket(row), created=False)
            ticket_id = (await connection.execute(_TICKET_INSERT, values)).scalar_one()
            ticket = await _created(connection, ticket_id, actor, kind)
        return TicketOutcome(ticket=self._opened(ticket), created=True)

    async def open_handoff_ticket(
        self,
        *,
        subject: str,
        conversation_id: str,
        note: str,
        description: str = "",
        customer_id: str | None = None,
        channel: str | None = None,
        flow: str | None = None,
        actor: str = "bot",
    ) -> TicketOutcome:
        """The conversation's one open handoff ticket, new or with ``note`` added; see ``Store``."""
        values = _values(subject, description, "handoff", "normal", conversation_id, customer_id, channel, flow)
        insert = (
            self._insert(_t)
            .values(values)
            .on_conflict_do_nothing(index_elements=[_t.c.conversation_id], index_where=OPEN_HANDOFF)
            .returning(_t.c.id)
        )
        for _ in range(_ATTEMPTS):
            async with self._begin("opening a handoff ticket", write_first=True) as connection:
                ticket_id = (await connection.execute(insert)).scalar_one_or_none()
                if ticket_id is not None:
                    opened = await _created(connection, ticket_id, actor, "handoff")
                    outcome = TicketOutcome(ticket=opened, created=True)
                else:
                    # PostgreSQL waited for the other insert to commit; this statement's snapshot sees it.
                    row = (await connection.execute(_OPEN_HANDOFF_OF, {"cid": conversation_id})).first()
                    if row is None:
                        continue  # it was closed in between: try the insert again
                    ticket_id = row[0]
                    at = now()
                    await connection.execute(_t.update().where(_t.c.id == ticket_id).values(updated_at=at))
                    await connection.execute(
                        _e.insert(),
                        {"ticket_id": ticket_id, "actor": actor, "action": "note", "detail": note, "created_at": at},
                    )
                    row = (await connection.execute(_TICKET_BY_ID, {"tid": ticket_id})).one()
                    outcome = TicketOutcome(ticket=_ticket(row), created=False)
            if outcome.created:
                self._opened(outcome.ticket)
            return outcome
        raise StorageError(
            f"opening a handoff ticket for conversation {conversation_id} kept colliding with one being closed; "
            "try again"
        )

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
            row = (await connection.execute(self._backend.for_update(_TICKET_BY_ID), {"tid": ticket_id})).first()
            if row is None:
                raise StorageError(f"no ticket #{ticket_id}; list tickets with `supportbot tickets list`")
            old = _ticket(row)
            if old.kind == "handoff" and old.status not in _OPEN and status in _OPEN and old.conversation_id:
                other = (await connection.execute(_OPEN_HANDOFF_OF, {"cid": old.conversation_id})).first()
                if other is not None:
                    raise StorageError(
                        f"ticket #{ticket_id} cannot be reopened: its conversation already has an open handoff "
                        f"ticket, #{other[0]}; add to that one instead"
                    )
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

    async def tickets_after(self, ticket_id: int, *, limit: int = 100) -> list[Ticket]:
        """Tickets with an id above ``ticket_id``, oldest first (``Mailboxes``: announcing new tickets).

        On PostgreSQL ids are drawn before commit, so a ticket may become visible after one with a
        higher id: a caller that only ever asks after the highest id it saw can miss it.
        """
        async with self._begin("listing new tickets") as connection:
            rows = (await connection.execute(_TICKETS_AFTER, {"tid": ticket_id, "n": limit})).all()
        return [_ticket(row) for row in rows]

    async def last_ticket_id(self) -> int:
        """The highest ticket id so far, 0 with none."""
        async with self._begin("reading the last ticket id") as connection:
            return int((await connection.execute(_LAST_TICKET_ID)).scalar_one())


_OPEN = ("open", "pending")


def _values(
    subject: str,
    description: str,
    kind: TicketKind,
    priority: TicketPriority,
    conversation_id: str | None,
    customer_id: str | None,
    channel: str | None,
    flow: str | None,
) -> dict[str, Any]:
    at = now()
    return {
        "subject": subject, "description": description, "status": "open", "priority": priority, "kind": kind,
        "conversation_id": conversation_id, "customer_id": customer_id, "channel": channel, "flow": flow,
        "assignee": None, "created_at": at, "updated_at": at,
    }  # fmt: skip


async def _created(connection: AsyncConnection, ticket_id: int, actor: str, kind: str) -> Ticket:
    """Log a new ticket's ``created`` event and read the ticket back, in the transaction that inserted it."""
    row = (await connection.execute(_TICKET_BY_ID, {"tid": ticket_id})).one()
    await connection.execute(
        _e.insert(),
        {"ticket_id": ticket_id, "actor": actor, "action": "created", "detail": kind, "created_at": row[11]},
    )
    return _ticket(row)
