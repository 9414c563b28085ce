"""A store that keeps everything in process memory and forgets it on exit.

For benchmarks (the engine's own cost with persistence switched off) and for embedding the
engine where another system keeps the transcript. Not for production: nothing survives a restart.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, date, datetime, timedelta
from typing import Any

from supportbot.errors import StorageError
from supportbot.store._common import stored as _stored
from supportbot.store._common import totals
from supportbot.store._locks import KeyedLocks
from supportbot.store.base import (
    CapScope,
    Conversation,
    ConversationStatus,
    Customer,
    MessageStatus,
    NewMessage,
    Outgoing,
    StoredMessage,
    Ticket,
    TicketEvent,
    TicketKind,
    TicketOutcome,
    TicketPriority,
    TicketStatus,
    TurnStart,
)
from supportbot.store.spending import ALL, Spent, customer_scope

_OPEN = ("open", "pending")


def _now() -> datetime:
    return datetime.now(UTC)


class MemoryStore:
    """Implements ``supportbot.store.base.Store`` on dicts. Conversations may be dropped with ``forget``.

    Attributes:
        outbox: what ``add_messages(outgoing=…)`` queued, as ``(channel, conversation_id, message_id,
            payload)``, oldest first. Nothing delivers it: a memory store has no outbox worker.
    """

    def __init__(self) -> None:
        self.outbox: list[tuple[str, str, int, dict[str, Any]]] = []
        self._customers: dict[str, Customer] = {}
        self._conversations: dict[str, Conversation] = {}
        self._messages: dict[str, list[StoredMessage]] = {}
        self._tool_runs: set[tuple[str, str]] = set()
        self._tickets: dict[int, Ticket] = {}
        self._events: dict[int, list[TicketEvent]] = {}
        self._locks = KeyedLocks()
        self._ids = itertools.count(1)

    async def close(self) -> None:
        return None

    def forget(self, conversation_id: str) -> None:
        """Drop a finished conversation's messages (keeps a long benchmark's memory flat)."""
        self._messages.pop(conversation_id, None)
        self._conversations.pop(conversation_id, None)
        self.outbox = [row for row in self.outbox if row[1] != conversation_id]

    async def get_or_create_customer(
        self,
        *,
        email: str | None = None,
        external_id: str | None = None,
        name: str | None = None,
        verified: bool = False,
    ) -> Customer:
        email = email.strip().lower() if email else None
        # As SQLStore: verified and unverified identities never share a record (an email typed into
        # a widget must not open the record of the customer whose identity a channel proved); the
        # external id is looked up first, then the email; a verified call's email replaces a stale one.
        same = [c for c in self._customers.values() if c.verified == verified]
        found = next((c for c in same if external_id and c.external_id == external_id), None)
        found = found or next((c for c in same if email and c.email == email), None)
        if found is None:
            customer = Customer(
                id=uuid.uuid4().hex,
                email=email,
                name=name,
                external_id=external_id,
                verified=verified,
                created_at=_now(),
            )
            self._customers[customer.id] = customer
            return customer
        if verified and email and found.email != email:
            owner = next((c for c in same if c.email == email), None)
            if owner is not None:
                self._customers[found.id] = dataclasses.replace(found, email=None)
                return owner
            found = dataclasses.replace(found, email=email)
        taken = {(c.email, c.external_id) for c in same}
        if email and not found.email and all(e != email for e, _ in taken):
            found = dataclasses.replace(found, email=email)
        if external_id and not found.external_id and all(x != external_id for _, x in taken):
            found = dataclasses.replace(found, external_id=external_id)
        found = dataclasses.replace(found, name=found.name or name)
        self._customers[found.id] = found
        return found

    async def get_customer(self, customer_id: str) -> Customer | None:
        return self._customers.get(customer_id)

    async def create_conversation(
        self,
        *,
        customer_id: str,
        channel: str,
        flow: str,
        conversation_id: str | None = None,
        messages: Sequence[NewMessage] = (),
    ) -> Conversation:
        if customer_id not in self._customers:
            raise StorageError(
                f"cannot create a conversation for customer {customer_id!r}: no such customer; "
                "create it with get_or_create_customer first"
            )
        now = _now()
        conv = Conversation(
            id=conversation_id or uuid.uuid4().hex, customer_id=customer_id, channel=channel, flow=flow,
            created_at=now, updated_at=now,
        )  # fmt: skip
        self._conversations[conv.id] = conv
        self._messages[conv.id] = []
        if messages:
            await self.add_messages(conv.id, messages)
            conv = self._conversations[conv.id]
        return conv

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        return self._conversations.get(conversation_id)

    async def update_conversation(
        self,
        conversation_id: str,
        *,
        flow: str | None = None,
        status: ConversationStatus | None = None,
        count_turn: bool = False,
    ) -> Conversation:
        conv = self._conversation(conversation_id, "no conversation {id} to update; create it with create_conversation")
        conv = dataclasses.replace(
            conv,
            flow=flow or conv.flow,
            status=status or conv.status,
            turns=conv.turns + int(count_turn),
            updated_at=_now(),
        )
        self._conversations[conversation_id] = conv
        return conv

    async def list_conversations(self, *, customer_id: str | None = None, limit: int = 50) -> list[Conversation]:
        found = [c for c in self._conversations.values() if customer_id in (None, c.customer_id)]
        return sorted(found, key=lambda c: c.updated_at or _now(), reverse=True)[:limit]

    async def add_messages(
        self, conversation_id: str, messages: Sequence[NewMessage], *, outgoing: Outgoing | None = None
    ) -> list[StoredMessage]:
        if outgoing is not None and not messages:
            raise ValueError("add_messages: outgoing names the last of the messages, but there are none")
        conv = self._conversation(conversation_id, "cannot store messages in conversation {id}: no such conversation")
        now = _now()
        # Spelled out rather than ``dataclasses.replace``/``**fields``: this runs several times a turn.
        stored = [_stored(m, next(self._ids), conversation_id, now) for m in messages]
        self._messages[conversation_id].extend(stored)
        turns, input_tokens, output_tokens, cost = totals(messages)
        self._conversations[conversation_id] = Conversation(
            id=conv.id, customer_id=conv.customer_id, channel=conv.channel, flow=conv.flow, status=conv.status,
            turns=conv.turns + turns, input_tokens=conv.input_tokens + input_tokens,
            output_tokens=conv.output_tokens + output_tokens, cost_usd=conv.cost_usd + cost,
            created_at=conv.created_at, updated_at=now,
        )  # fmt: skip
        if outgoing is not None:
            self.outbox.append((outgoing.channel, conversation_id, stored[-1].id, outgoing.payload))
        return stored

    async def begin_turn(
        self, conversation_id: str, message: NewMessage, *, history: int, inbox_id: int | None = None
    ) -> TurnStart:
        del inbox_id  # no inbox here: nothing outlives the process, so nothing is resumed
        self._conversation(conversation_id, "cannot store a message in conversation {id}: no such conversation")
        before = self._messages[conversation_id][-history:] if history > 0 else []
        (stored,) = await self.add_messages(conversation_id, [message])
        conversation = self._conversations[conversation_id]
        customer = self._customers.get(conversation.customer_id)
        if customer is None:
            raise StorageError(f"conversation {conversation_id!r} names a missing customer")
        return TurnStart(conversation=conversation, customer=customer, history=list(before), message=stored)

    async def list_messages(self, conversation_id: str, *, last: int | None = None) -> list[StoredMessage]:
        messages = self._messages.get(conversation_id, [])
        if last is None:
            return list(messages)
        return messages[-last:] if last > 0 else []

    async def set_message_status(self, message_id: int, status: MessageStatus) -> None:
        for messages in self._messages.values():
            for i, m in enumerate(messages):
                if m.id == message_id:
                    messages[i] = dataclasses.replace(m, status=status)
                    return

    async def claim_tool_run(self, conversation_id: str, tool_call_id: str) -> bool:
        key = (conversation_id, tool_call_id)
        if key in self._tool_runs:
            return False
        self._tool_runs.add(key)
        return True

    async def approve_tool_calls(self, message_id: int, conversation_id: str, tool_call_ids: Sequence[str]) -> set[str]:
        await self.set_message_status(message_id, "ok")
        return {call_id for call_id in tool_call_ids if await self.claim_tool_run(conversation_id, call_id)}

    def lock(self, conversation_id: str) -> AbstractAsyncContextManager[None]:
        return self._locks.hold(conversation_id)

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
        return self._new_ticket(
            subject=subject, description=description, kind=kind, priority=priority, conversation_id=conversation_id,
            customer_id=customer_id, channel=channel, flow=flow, actor=actor,
        )  # fmt: skip

    def _new_ticket(
        self,
        *,
        subject: str,
        description: str,
        kind: TicketKind,
        priority: TicketPriority,
        conversation_id: str | None,
        customer_id: str | None,
        channel: str | None,
        flow: str | None,
        actor: str,
    ) -> Ticket:
        # Not a coroutine: the capped operations check and insert with no ``await`` in between, so
        # under asyncio each runs whole, atomic as the SQL store's transactions are.
        now = _now()
        ticket = Ticket(
            id=len(self._tickets) + 1,
            subject=subject,
            description=description,
            kind=kind,
            priority=priority,
            conversation_id=conversation_id,
            customer_id=customer_id,
            channel=channel,
            flow=flow,
            created_at=now,
            updated_at=now,
        )
        self._tickets[ticket.id] = ticket
        self._events[ticket.id] = [
            TicketEvent(
                id=next(self._ids), ticket_id=ticket.id, actor=actor, action="created", detail=kind, created_at=now
            )
        ]
        return ticket

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
        if cap < 1:
            raise ValueError(f"cap must be at least 1, got {cap}")
        if per == "conversation" and conversation_id is None:
            raise ValueError("a cap per conversation needs conversation_id")
        since = _now() - window
        recent = [
            t
            for t in self._tickets.values()
            if (t.customer_id == customer_id if per == "customer" else t.conversation_id == conversation_id)
            and t.kind == kind
            and (t.created_at is None or t.created_at >= since)
        ]
        if len(recent) >= cap:
            return TicketOutcome(ticket=max(recent, key=lambda t: t.id), created=False)
        ticket = self._new_ticket(
            subject=subject, description=description, kind=kind, priority=priority, conversation_id=conversation_id,
            customer_id=customer_id, channel=channel, flow=flow, actor=actor,
        )  # fmt: skip
        return TicketOutcome(ticket=ticket, created=True)

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
        existing = self._open_handoff(conversation_id)
        if existing is not None:
            ticket = self._tickets[existing.id] = dataclasses.replace(existing, updated_at=_now())
            self._events[ticket.id].append(
                TicketEvent(
                    id=next(self._ids), ticket_id=ticket.id, actor=actor, action="note", detail=note, created_at=_now()
                )
            )
            return TicketOutcome(ticket=ticket, created=False)
        ticket = self._new_ticket(
            subject=subject, description=description, kind="handoff", priority="normal",
            conversation_id=conversation_id, customer_id=customer_id, channel=channel, flow=flow, actor=actor,
        )  # fmt: skip
        return TicketOutcome(ticket=ticket, created=True)

    def _open_handoff(self, conversation_id: str) -> Ticket | None:
        return next(
            (
                t
                for t in sorted(self._tickets.values(), key=lambda t: t.id)
                if t.conversation_id == conversation_id and t.kind == "handoff" and t.status in _OPEN
            ),
            None,
        )

    async def get_ticket(self, ticket_id: int) -> Ticket | None:
        return self._tickets.get(ticket_id)

    async def list_tickets(
        self, *, status: TicketStatus | None = None, conversation_id: str | None = None, limit: int = 100
    ) -> list[Ticket]:
        found = [
            t
            for t in self._tickets.values()
            if status in (None, t.status) and conversation_id in (None, t.conversation_id)
        ]
        return sorted(found, key=lambda t: t.id, reverse=True)[:limit]

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
        ticket = self._tickets.get(ticket_id)
        if ticket is None:
            raise StorageError(f"no ticket #{ticket_id}")
        if ticket.kind == "handoff" and ticket.status not in _OPEN and status in _OPEN and ticket.conversation_id:
            other = self._open_handoff(ticket.conversation_id)
            if other is not None:
                raise StorageError(
                    f"ticket #{ticket_id} cannot be reopened: its conversation already has an open handoff "
                    f"ticket, #{other.id}; add to that one instead"
                )
        # As SQLStore: only what changes is logged (``assignee=""`` unassigns), and nothing changes without events.
        changes: dict[str, str | None] = {
            key: value or None
            for key, value in (("status", status), ("priority", priority), ("assignee", assignee))
            if value is not None and (value or None) != getattr(ticket, key)
        }
        at = _now()
        events = [(key, value or "") for key, value in changes.items()] + ([("note", note)] if note else [])
        if not events:
            return ticket
        ticket = dataclasses.replace(ticket, **changes, updated_at=at)  # type: ignore[arg-type]
        self._tickets[ticket_id] = ticket
        self._events[ticket_id].extend(
            TicketEvent(id=next(self._ids), ticket_id=ticket_id, actor=actor, action=action, detail=detail,
                        created_at=at)
            for action, detail in events
        )  # fmt: skip
        return ticket

    async def ticket_events(self, ticket_id: int) -> list[TicketEvent]:
        return list(self._events.get(ticket_id, []))

    async def tickets_after(self, ticket_id: int, *, limit: int = 100) -> list[Ticket]:
        return [t for tid, t in sorted(self._tickets.items()) if tid > ticket_id][:limit]

    async def last_ticket_id(self) -> int:
        return max(self._tickets, default=0)

    def _conversation(self, conversation_id: str, missing: str) -> Conversation:
        """The conversation; ``StorageError(missing)`` with ``{id}`` filled in, as ``SQLStore`` says it, without."""
        conv = self._conversations.get(conversation_id)
        if conv is None:
            raise StorageError(missing.format(id=repr(conversation_id)))
        return conv

    # -- daily spending (the cost caps in ``limits``; ``supportbot.store.spending.SpendingStore``) --

    async def add_spending(self, customer_id: str, cost_usd: float, *, day: date) -> None:
        spent = self._spent()
        for scope in (customer_scope(customer_id), ALL):
            spent[scope, day] = spent.get((scope, day), 0.0) + cost_usd

    async def spending(self, customer_id: str, *, day: date) -> Spent:
        spent = self._spent()
        return Spent(customer=spent.get((customer_scope(customer_id), day), 0.0), everyone=spent.get((ALL, day), 0.0))

    def _spent(self) -> dict[tuple[str, date], float]:
        # Made on first use, so that these methods stay together at the end of the class.
        spent: dict[tuple[str, date], float] = vars(self).setdefault("_spending", {})
        return spent
