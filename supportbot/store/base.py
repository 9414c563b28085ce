"""What the engine and the tools need from storage: records, and the protocols split by who uses them.

``ConversationStore`` is the engine's (customers, conversations, messages, turns); ``TicketStore`` the
tickets' (the built-in tools, escalations, operators, announcements); ``Store`` is both. The channels'
inbox, outbox and leases are in ``mailboxes``, the operators' queries in ``review``.

The engine never sees ORM rows; a store returns these frozen records. ``supportbot.store.sql.SQLStore``
implements every protocol on SQLite or PostgreSQL (one backend module per dialect: ``sqlite``,
``postgres``); ``supportbot.store.memory.MemoryStore`` implements ``Store`` on dicts, for tests and
benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from supportbot._frozen import fast_init
from supportbot.messages import ImagePart, Role, ToolCall, Usage

ConversationStatus = Literal["bot", "human", "closed"]
"""``bot``: the bot answers; ``human``: handed to a person, the bot stays silent; ``closed``."""

MessageKind = Literal["normal", "greeting", "confirmation", "fallback", "human", "notice"]
"""``normal`` and ``greeting`` and ``human`` (an operator's reply) are shown to the model;
``confirmation`` (the engine asking the customer to approve a tool call), ``fallback`` (the reply
sent when the model failed) and ``notice`` are shown to the customer only."""

MessageStatus = Literal["ok", "error", "pending", "declined", "interrupted"]
"""``error``: a tool result that is an error; ``pending``: a tool call waiting for the customer's
yes; ``declined``: a tool call the customer refused; ``interrupted``: a stream cut short."""

TicketStatus = Literal["open", "pending", "solved", "closed"]
TicketPriority = Literal["low", "normal", "high", "urgent"]
TicketKind = Literal["request", "handoff", "escalation"]
"""``request``: the bot's ``create_ticket``; ``handoff``: the conversation went to a human;
``escalation``: opened by the engine itself when the model failed or a limit was hit."""
CapScope = Literal["customer", "conversation"]
"""What a ticket cap counts: a customer's tickets, or one conversation's."""


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class Customer:
    """A person who writes to support. ``verified`` is true only when the channel proved who they are."""

    id: str
    email: str | None = None
    name: str | None = None
    external_id: str | None = None
    verified: bool = False
    created_at: datetime | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.email or "customer"

    @property
    def first_name(self) -> str | None:
        return self.name.split()[0] if self.name and self.name.split() else None


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class Conversation:
    id: str
    customer_id: str
    channel: str
    flow: str
    status: ConversationStatus = "bot"
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    created_at: datetime | None = None
    updated_at: datetime | None = None


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class NewMessage:
    """A message to store. ``usage``, ``cost_usd`` and ``latency_ms`` belong to assistant messages."""

    role: Role
    content: str | None = None
    images: tuple[ImagePart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    tool_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    kind: MessageKind = "normal"
    status: MessageStatus = "ok"
    flow: str | None = None
    model: str | None = None
    usage: Usage | None = None
    cost_usd: float = 0.0
    latency_ms: float | None = None
    author: str | None = None


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class StoredMessage(NewMessage):
    id: int
    conversation_id: str
    created_at: datetime


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class Outgoing:
    """A reply to queue in the outbox together with the messages that hold it (one transaction).

    The row names the last of the messages (``message_id``) and the conversation; ``payload`` is
    JSON-able: ``{"kind": ReplyKind, "text": str, "turn": int | None, "author": str | None, ...}``.
    """

    channel: str
    payload: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class Ticket:
    id: int
    subject: str
    description: str = ""
    status: TicketStatus = "open"
    priority: TicketPriority = "normal"
    kind: TicketKind = "request"
    conversation_id: str | None = None
    customer_id: str | None = None
    channel: str | None = None
    flow: str | None = None
    assignee: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TicketOutcome:
    """What an operation that opens a ticket only under a rule did.

    Attributes:
        ticket: the ticket it opened; or, when ``created`` is false, the existing ticket that the
            rule points to instead (the latest under a cap, the open handoff ticket).
        created: whether ``ticket`` was opened by this call.
    """

    ticket: Ticket
    created: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class TicketEvent:
    """One change to a ticket (created, status changed, note, reply), with who made it."""

    id: int
    ticket_id: int
    actor: str
    action: str
    detail: str = ""
    created_at: datetime | None = None


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class TurnStart:
    """What a turn starts from, read in the same operation that stored the customer's message.

    Attributes:
        conversation: the conversation after the message was stored (its ``turns`` count it).
        customer: the conversation's customer.
        history: up to the requested number of messages stored before this one, oldest first.
        message: the customer's message as stored.
    """

    conversation: Conversation
    customer: Customer
    history: list[StoredMessage]
    message: StoredMessage


class ConversationStore(Protocol):
    """Customers, conversations and their messages, as the engine runs turns on them.

    Every method is atomic. ``add_messages`` also adds the messages' tokens and cost to the
    conversation's totals in the same transaction.
    """

    async def get_or_create_customer(
        self,
        *,
        email: str | None = None,
        external_id: str | None = None,
        name: str | None = None,
        verified: bool = False,
    ) -> Customer: ...
    async def get_customer(self, customer_id: str) -> Customer | None: ...

    async def create_conversation(
        self,
        *,
        customer_id: str,
        channel: str,
        flow: str,
        conversation_id: str | None = None,
        messages: Sequence[NewMessage] = (),
    ) -> Conversation:
        """Open a conversation (``conversation_id``, or a new random id) and store ``messages`` in the same transaction.

        ``messages`` is for what a conversation starts with (its greeting): stored together, a crash
        leaves both or neither. The returned conversation counts them (as ``add_messages`` would).
        """
        ...

    async def get_conversation(self, conversation_id: str) -> Conversation | None: ...
    async def update_conversation(
        self,
        conversation_id: str,
        *,
        flow: str | None = None,
        status: ConversationStatus | None = None,
        count_turn: bool = False,
    ) -> Conversation: ...
    async def list_conversations(self, *, customer_id: str | None = None, limit: int = 50) -> list[Conversation]: ...

    async def begin_turn(
        self, conversation_id: str, message: NewMessage, *, history: int, inbox_id: int | None = None
    ) -> TurnStart:
        """Store the customer's message and read what the turn needs, in one operation (a turn's first).

        With ``inbox_id``, the same transaction sets that inbox row's status to ``stored`` (see
        ``Mailboxes``), so a restart never stores the message twice; a store without an inbox ignores it.
        """
        ...

    async def add_messages(
        self, conversation_id: str, messages: Sequence[NewMessage], *, outgoing: Outgoing | None = None
    ) -> list[StoredMessage]:
        """Store messages (and add their tokens and cost to the conversation's totals).

        With ``outgoing``, the same transaction queues one outbox row for the last of ``messages``
        (a store without an outbox ignores it): a stored reply is always a queued reply.
        """
        ...

    async def list_messages(self, conversation_id: str, *, last: int | None = None) -> list[StoredMessage]: ...
    async def set_message_status(self, message_id: int, status: MessageStatus) -> None: ...

    async def claim_tool_run(self, conversation_id: str, tool_call_id: str) -> bool:
        """Record that a tool call is about to run; False if it was claimed before (never run it twice)."""
        ...

    async def approve_tool_calls(self, message_id: int, conversation_id: str, tool_call_ids: Sequence[str]) -> set[str]:
        """The customer approved a pending tool-call message: mark it ``ok`` and claim its calls' runs, atomically.

        One transaction, so a crash leaves both or neither: never an approved message whose calls
        could run unclaimed. Returns the ids claimed now; one claimed before is not run again
        (``claim_tool_run``).
        """
        ...

    def lock(self, conversation_id: str) -> AbstractAsyncContextManager[None]:
        """Hold while a turn runs: one turn at a time per conversation, across workers where the database allows."""
        ...

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


class TicketStore(Protocol):
    """Tickets and their history, as the built-in tools, the engine's escalations, operators and the
    channels' ticket announcements use them. Every method is atomic."""

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
    ) -> Ticket: ...

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
        """Open a ticket unless the customer already has ``cap`` tickets of ``kind`` opened within ``window``.

        Counting and opening are one atomic step, also between processes: however many calls
        race, no more than ``cap`` tickets are opened. When refused, ``created`` is false and
        ``ticket`` is the customer's latest ticket of that kind. ``per="conversation"`` counts the
        tickets of ``conversation_id`` instead (for a customer record several people may claim).

        Raises:
            ValueError: ``cap`` is less than 1.
        """
        ...

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
        """The conversation's one open handoff ticket: a new one, or the open one with ``note`` added.

        A conversation has at most one ``handoff`` ticket that is ``open`` or ``pending`` (the
        database enforces it); racing calls get that one ticket, each adding its ``note``.
        """
        ...

    async def get_ticket(self, ticket_id: int) -> Ticket | None: ...
    async def list_tickets(
        self, *, status: TicketStatus | None = None, conversation_id: str | None = None, limit: int = 100
    ) -> list[Ticket]: ...
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
        """Change a ticket; see ``SQLStore.update_ticket``.

        Raises:
            StorageError: there is no such ticket, or reopening a handoff ticket would give its
                conversation a second open one.
        """
        ...

    async def ticket_events(self, ticket_id: int) -> list[TicketEvent]: ...

    async def tickets_after(self, ticket_id: int, *, limit: int = 100) -> list[Ticket]:
        """Tickets with an id above ``ticket_id``, oldest first (announcing new tickets)."""
        ...

    async def last_ticket_id(self) -> int:
        """The highest ticket id so far, 0 with none."""
        ...


class Store(ConversationStore, TicketStore, Protocol):
    """What the engine and the built-in tools use: conversations and tickets (``SQLStore``, ``MemoryStore``)."""
