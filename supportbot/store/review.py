"""What the operators' surfaces (the admin page, its JSON API, the CLI) need from storage.

These are queries over many tickets and conversations, reports, and the operators' own
accounts and sessions. ``SQLStore`` implements ``Review``; the engine never uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal, Protocol

from supportbot.store.base import (
    Conversation,
    ConversationStatus,
    StoredMessage,
    Ticket,
    TicketEvent,
    TicketPriority,
    TicketStatus,
)

__all__ = [
    "AdminSession",
    "ConversationPage",
    "ConversationQuery",
    "Overview",
    "Review",
    "TicketPage",
    "TicketQuery",
]

TicketSort = Literal["created", "updated", "priority", "status", "id"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TicketQuery:
    """Which tickets to list, in which order, which page.

    Attributes:
        status: any of these statuses (empty: all).
        priority: any of these priorities (empty: all).
        channel, flow, assignee, kind: exact matches when set.
        created_from, created_to: ``created_at`` in ``[created_from, created_to)`` when set.
        text: case-insensitive substring of the subject, the description, or any message content
            of the ticket's conversation (``%`` and ``_`` are literal, not wildcards).
        after_id: only tickets with a larger id (a live list asks for what is new).
        sort: ``priority`` orders urgent > high > normal > low; ties by id.
    """

    status: tuple[TicketStatus, ...] = ()
    priority: tuple[TicketPriority, ...] = ()
    channel: str | None = None
    flow: str | None = None
    assignee: str | None = None
    kind: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    text: str | None = None
    after_id: int | None = None
    sort: TicketSort = "created"
    descending: bool = True
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True, kw_only=True, slots=True)
class TicketPage:
    tickets: list[Ticket]
    total: int
    """How many tickets match the query, over all pages."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ConversationQuery:
    """Which conversations to list (newest activity first).

    ``text`` is a case-insensitive substring of any message content; ``customer`` of the
    customer's email or name.
    """

    channel: str | None = None
    status: ConversationStatus | None = None
    flow: str | None = None
    customer_id: str | None = None
    customer: str | None = None
    text: str | None = None
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True, kw_only=True, slots=True)
class ConversationPage:
    conversations: list[Conversation]
    total: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Overview:
    """Figures for the admin overview over the ``days`` days ending today (UTC), oldest day first.

    Attributes:
        opened_per_day: tickets created per day (every day of the window, zeros included).
        solved_per_day: tickets whose status became ``solved`` or ``closed`` that day (events).
        cost_per_day: USD of all messages stored that day.
        cost_per_flow: USD per flow over the window, largest first (messages' ``flow``).
        open_by_age: open or pending tickets by age now: ``< 1 h``, ``1–24 h``, ``1–7 d``, ``> 7 d``.
        conversations: conversations created in the window.
        resolved_without_ticket: of those, how many have no ticket and are not with a human.
        tickets_by_status: all tickets now, by status.
    """

    days: int
    opened_per_day: list[tuple[date, int]]
    solved_per_day: list[tuple[date, int]]
    cost_per_day: list[tuple[date, float]]
    cost_per_flow: list[tuple[str, float]]
    open_by_age: list[tuple[str, int]]
    conversations: int
    resolved_without_ticket: int
    tickets_by_status: dict[str, int]


@dataclass(frozen=True, kw_only=True, slots=True)
class AdminSession:
    """A signed-in operator's session on the admin page. The cookie holds a secret whose hash is ``id_hash``."""

    id_hash: str
    username: str
    csrf_token: str
    created_at: datetime
    expires_at: datetime


class Review(Protocol):
    """Storage for operators. Every method is atomic and raises ``StorageError`` when the database fails."""

    async def search_tickets(self, query: TicketQuery) -> TicketPage: ...
    def on_ticket_opened(self, callback: Callable[[int], None]) -> None:
        """Call ``callback`` with each new ticket's id once it is committed (the live ticket list)."""
        ...

    async def search_conversations(self, query: ConversationQuery) -> ConversationPage: ...
    async def add_ticket_event(self, ticket_id: int, *, actor: str, action: str, detail: str = "") -> TicketEvent:
        """Record something done about a ticket that is not a field change (``reply``, ``handback``)."""
        ...

    async def overview(self, *, days: int = 14, now: datetime | None = None) -> Overview: ...

    async def operator_messages_after(self, message_id: int, *, limit: int = 500) -> list[StoredMessage]:
        """What operators put in conversations, with an id above ``message_id``, oldest first: their replies
        (``kind == "human"``) and the notices their actions left for the customer (``notice`` with an author)."""
        ...

    async def last_message_id(self) -> int:
        """The largest message id so far (0 for none)."""
        ...

    async def set_operator_password(self, username: str, password_hash: str) -> None:
        """Create the operator or replace their password hash."""
        ...

    async def operator_password_hash(self, username: str) -> str | None: ...

    async def create_admin_session(self, session: AdminSession) -> None: ...
    async def get_admin_session(self, id_hash: str, *, now: datetime | None = None) -> AdminSession | None:
        """The session if it exists and has not expired."""
        ...

    async def delete_admin_session(self, id_hash: str) -> None: ...
    async def purge_admin_sessions(self, *, now: datetime | None = None) -> int:
        """Delete expired sessions; returns how many."""
        ...
