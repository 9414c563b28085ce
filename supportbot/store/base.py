"""What the engine and the tools need from storage: records and the ``Store`` protocol.

The engine never sees ORM rows; a store returns these frozen records. ``supportbot.store.sql``
implements the protocol on SQLAlchemy (SQLite or PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

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


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredMessage(NewMessage):
    id: int
    conversation_id: str
    created_at: datetime


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


class Store(Protocol):
    """Persistence as the engine and the built-in tools use it.

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

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class InboxItem:
    """An inbound channel message as stored before the channel was acknowledged.

    ``status``: ``received`` until the engine has taken it, then what the caller sets
    (e.g. ``done`` or ``failed``).
    """

    id: int
    channel: str
    external_id: str
    payload: Any
    status: str = "received"
    conversation_id: str | None = None
    created_at: datetime | None = None
    lane: str | None = None


OutboxStatus = Literal["pending", "sent", "failed"]


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxItem:
    """A reply waiting to be (or already) delivered to a channel; ``external_id`` is the channel's id for it."""

    id: int
    channel: str
    payload: Any
    status: OutboxStatus = "pending"
    attempts: int = 0
    conversation_id: str | None = None
    message_id: int | None = None
    external_id: str | None = None
    created_at: datetime | None = None
    sent_at: datetime | None = None
    last_error: str | None = None
    lease_until: datetime | None = None
    """While pending: the time before which no worker tries the row (another is sending it, or a retry waits)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelState:
    """A value a channel keeps between runs (a cursor), set in the same transaction as an outbox row."""

    channel: str
    key: str
    value: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ConversationAddress:
    """Where a conversation's replies go on its channel: the key it is found by and the channel's address."""

    conversation_id: str
    channel: str
    key: str | None
    address: dict[str, Any]


class Mailboxes(Protocol):
    """The durable inbox and outbox that make channel delivery exactly-once (DESIGN §3, §5).

    A connector stores an inbound message with ``inbox_add`` *before* acknowledging it to the
    channel (None means the channel redelivered a message already stored), and delivers replies
    from the outbox, marking each sent once.
    """

    async def inbox_add(
        self, channel: str, external_id: str, payload: Any, conversation_id: str | None = None, *,
        lane: str | None = None,
    ) -> int | None: ...  # fmt: skip
    async def inbox_set_status(self, inbox_id: int, status: str, *, conversation_id: str | None = None) -> None: ...
    async def inbox_pending(
        self, channel: str | None = None, *, statuses: Sequence[str] = ("received",), limit: int = 100
    ) -> list[InboxItem]: ...

    async def outbox_add(
        self,
        channel: str,
        payload: Any,
        *,
        conversation_id: str | None = None,
        message_id: int | None = None,
        state: ChannelState | None = None,
    ) -> int:
        """Queue a reply; with ``state``, set that channel state in the same transaction. Returns the row's id."""
        ...

    async def outbox_pending(self, channel: str, limit: int = 100) -> list[OutboxItem]:
        """Rows of ``channel`` still to deliver, oldest first."""
        ...

    async def outbox_get(self, outbox_id: int) -> OutboxItem | None: ...
    async def outbox_find(self, channel: str, external_id: str) -> OutboxItem | None:
        """The row that was delivered as the channel's message ``external_id`` (e.g. a Slack message's ts)."""
        ...

    async def outbox_attempt(self, outbox_id: int, *, owner: str = "", lease_s: float = 10.0) -> int | None:
        """Count an attempt before sending (so after a crash the row shows it may have been sent), and lease the
        row to ``owner`` for ``lease_s`` seconds so no other worker sends it meanwhile.

        Returns the attempts so far, this one included; None when the row is not ``owner``'s to send now (not
        pending any more, leased to another worker, or waiting out a retry's backoff).
        """
        ...

    async def outbox_mark_sent(self, outbox_id: int, external_id: str | None = None) -> bool:
        """Mark a reply delivered; False if it was not pending any more (another worker sent it)."""
        ...

    async def outbox_mark_failed(
        self, outbox_id: int, *, error: str, give_up: bool = False, retry_at: datetime | None = None
    ) -> None:
        """Record why the last attempt failed and end the row's lease; ``give_up`` marks the row ``failed`` for
        good; ``retry_at``: no worker tries it again before then.

        Raises:
            StorageError: the row does not exist or is no longer pending.
        """
        ...

    async def outbox_failed(self, *, limit: int = 100) -> list[OutboxItem]:
        """Rows given up on, newest first (for operators)."""
        ...

    async def channel_state(self, channel: str, key: str) -> str | None: ...
    async def set_channel_state(self, state: ChannelState) -> None: ...

    async def conversation_for_key(self, channel: str, key: str) -> str | None:
        """The newest conversation bound to ``key`` on ``channel`` (any status), or None."""
        ...

    async def set_conversation_address(
        self, conversation_id: str, *, channel: str, key: str | None, address: dict[str, Any]
    ) -> None:
        """Bind the conversation to its key and where its replies go (replacing the previous address)."""
        ...

    async def conversation_address(self, conversation_id: str) -> ConversationAddress | None: ...

    async def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take the lease ``name`` for ``seconds`` if it is free, expired, or ``owner``'s; whether ``owner`` has it."""
        ...

    async def renew_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Extend ``owner``'s lease; False when another worker took it over."""
        ...

    async def renew_leases(self, owner: str, names: Sequence[str], seconds: float) -> set[str]:
        """Extend ``owner``'s leases of ``names`` and its sends; the names it still holds."""
        ...

    async def release_lease(self, name: str, owner: str) -> None: ...

    async def renew_sends(self, owner: str, ids: Sequence[int], seconds: float) -> None:
        """Extend ``owner``'s leases of the outbox rows ``ids`` it is sending now."""
        ...

    async def tickets_after(self, ticket_id: int, *, limit: int = 100) -> list[Ticket]:
        """Tickets with an id above ``ticket_id``, oldest first (announcing new tickets)."""
        ...

    async def last_ticket_id(self) -> int:
        """The highest ticket id so far, 0 with none."""
        ...


class ConversationTokens(Protocol):
    """Bearer tokens that open one conversation each (the web widget's); only their hashes are stored."""

    async def add_conversation_token(self, conversation_id: str, token_hash: str) -> None: ...
    async def conversation_for_token(self, token_hash: str) -> str | None: ...
