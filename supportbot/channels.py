"""The channel contract: everything a connector (web, Slack, email) needs from the core, and nothing else.

In::

    connector receives a message → InboundMessage(channel, external_id, key, identity, text, images, address)
      → await intake.submit(message)      stored in the durable inbox (UNIQUE channel+external_id);
                                          returns only then, so the connector may acknowledge it
      → the core resolves the conversation key to its conversation (a new one when there is none or
        the last one is closed), lets the channel ``prepare`` the message (look up the sender's
        email, download images), and runs the turn

Out::

    the engine stores the reply and, in the same transaction, an outbox row
      → the channel's delivery worker calls ``channel.deliver(reply)`` → the channel's id for it
      → the row is marked sent; a failed delivery is retried with backoff (``DeliveryError``)
    while a turn runs, ``channel.render(turn, event)`` may show it live (tokens, a status);
    live rendering is a courtesy, the outbox row is the guarantee

A connector is an entry point of the ``supportbot.connectors`` group that resolves to a
``Connector``: its settings model (it owns and validates ``connectors.<name>`` in config.yaml) and
a ``setup`` that adds its routes to the server and returns its ``Channel``. Connectors import only
the public names of ``supportbot`` (a test enforces it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from supportbot.errors import Busy, ConnectorError, MessageTooLarge, StorageError, Unavailable
from supportbot.events import Event
from supportbot.messages import ImagePart
from supportbot.operators import OperatorError

if TYPE_CHECKING:
    from aiohttp import web
    from pydantic import BaseModel

__all__ = [
    "Accepted",
    "Busy",
    "Channel",
    "ChannelBase",
    "Connector",
    "DeliveryError",
    "Identity",
    "InboundMessage",
    "Intake",
    "MessageTooLarge",
    "OperatorError",
    "OperatorReply",
    "Reply",
    "ReplyKind",
    "StorageError",
    "TurnInfo",
    "Unavailable",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Identity:
    """Who wrote, as the channel knows it.

    Attributes:
        external_id: the channel's stable id of the person (Slack: ``"T0123/U0456"``); None when the
            channel has none (an anonymous widget visitor).
        email: the person's email address, if the channel gave one.
        name: a display name.
        verified: the channel proved ``external_id`` and ``email`` (a signed event and Slack's own
            user record, a signed widget token, DMARC from our own MX). Never true for what a client
            may edit.
    """

    external_id: str | None = None
    email: str | None = None
    name: str | None = None
    verified: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class InboundMessage:
    """A customer's message as a channel received it.

    Attributes:
        channel: the connector's name (``"slack"``).
        external_id: unique per channel for this message; a redelivery carries the same one and is
            recognised (Slack: ``"C0123:1700000000.000100"``, the message's channel and ts).
        key: the conversation key (Slack: team+channel+thread, email: the thread's root, web: the
            widget's conversation); messages with one key go to one conversation until it is closed.
        conversation_id: instead of ``key``, the conversation itself, when the channel already made
            it (the web widget creates conversations before the first message).
        identity: who wrote, as the channel proved it.
        address: where replies to this conversation go (Slack: channel, thread_ts; email: the headers
            to thread on); JSON-able; kept with the conversation, the newest message's wins.
        data: anything else the channel wants back in ``prepare`` (file references); JSON-able.
    """

    channel: str
    external_id: str
    text: str
    key: str | None = None
    conversation_id: str | None = None
    identity: Identity = field(default_factory=Identity)
    images: tuple[ImagePart, ...] = ()
    address: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.key is None) == (self.conversation_id is None):
            raise ValueError("an InboundMessage names either its conversation key or its conversation_id")


@dataclass(frozen=True, kw_only=True, slots=True)
class OperatorReply:
    """A person of the support team answering a ticket from inside a channel (a Slack thread).

    ``external_id`` is unique per channel like an ``InboundMessage``'s, so a redelivery is not sent twice.
    ``hand_back`` gives the conversation back to the bot instead (``text`` is then ignored).
    """

    channel: str
    external_id: str
    actor: str
    text: str = ""
    ticket_id: int | None = None
    conversation_id: str | None = None
    hand_back: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Accepted:
    """``turn`` numbers the message's turn (its inbox id); ``duplicate``: stored before, not answered again."""

    turn: int
    duplicate: bool = False


ReplyKind = Literal["answer", "fallback", "notice", "confirmation", "operator", "handback", "ticket"]
"""``answer``: the bot's reply; ``fallback``: sent when the model failed; ``notice``: the engine's own words
(a refused message, a limit); ``confirmation``: the bot asks the customer to approve a tool call (offer
Yes/No); ``operator``: a person's reply; ``handback``: the bot has the conversation again; ``ticket``: a
new ticket announced to the operators (``data`` holds it)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Reply:
    """One outbox row to deliver.

    Attributes:
        outbox_id: the row; delivering the same row twice must not show the customer two messages.
        attempt: 1 on the first try; more after a failure or a restart, when the reply may already
            have been sent (a channel that can look, looks: ``deliver`` should be idempotent).
        turn: the inbox id of the customer message this answers, when it answers one: what
            ``render`` saw of that turn can be finished instead of sending a new message.
        address: the conversation's address as the connector gave it with the newest message.
        key: the conversation key.
        author: who wrote it (an operator's name for ``operator``).
        data: for ``ticket``: ``ticket_id``, ``subject``, ``customer``, ``channel``, ``url``.
    """

    outbox_id: int
    channel: str
    kind: ReplyKind
    text: str
    attempt: int = 1
    conversation_id: str | None = None
    message_id: int | None = None
    turn: int | None = None
    key: str | None = None
    address: Mapping[str, Any] = field(default_factory=dict)
    author: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class TurnInfo:
    """Which turn a live event belongs to: its inbox id, conversation and the message that started it."""

    turn: int
    conversation_id: str
    message: InboundMessage


class DeliveryError(ConnectorError):
    """A reply could not be delivered now.

    Attributes:
        retryable: trying again later may work (a 429, a timeout, a 5xx); false gives up at once.
        retry_after: seconds the channel asked us to wait (Slack's and HTTP's ``Retry-After``).
    """

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Intake(Protocol):
    """What the core offers a connector: store a message (then acknowledge it), or an operator's reply."""

    async def submit(self, message: InboundMessage) -> Accepted:
        """Store the message durably and start its turn; returns once it is stored.

        Raises:
            MessageTooLarge: it is over the ``limits``; nothing was stored.
            StorageError: it could not be stored; the channel must not acknowledge it.
            Unavailable: the server is shutting down; the channel should have the message sent again.
        """
        ...

    async def operator_reply(self, reply: OperatorReply) -> bool:
        """Store an operator's reply (or hand-back) once and queue it for the customer's own channel.

        Returns False for a redelivery of one already taken.

        Raises:
            OperatorError: the ticket or conversation does not exist, or the text is empty or too long.
        """
        ...

    async def delivered(self, channel: str, external_id: str) -> Reply | None:
        """The reply that was delivered as the channel's message ``external_id`` (the ticket announcement
        an operator answers in its thread), or None."""
        ...


@runtime_checkable
class Channel(Protocol):
    """What the core needs of a channel: its name and how to deliver a reply."""

    name: str

    async def deliver(self, reply: Reply) -> str:
        """Send the reply; returns the channel's id for the sent message (unique per channel).

        Raises:
            DeliveryError: not sent now (``retryable``, ``retry_after``); any other exception is
                retried as well.
        """
        ...


class ChannelBase(ABC):
    """A ``Channel`` with the optional hooks as no-ops; connectors subclass it, implement ``deliver`` and
    override what else they use."""

    name: str = ""
    announces_tickets: bool = False
    """True: new tickets are queued to this channel as ``ticket`` replies (Slack's tickets channel)."""
    exclusive_receiver: bool = False
    """True: of several workers on one database, one at a time runs this channel's ``start`` receiver (it holds a
    lease; another takes over within seconds when it stops or dies): the IMAP reader of one mailbox."""
    max_retry_interval_s: float | None = None
    """The longest wait between two tries of a failed delivery (None: the core's 5 minutes); email's is short,
    so a reply the SMTP server deferred leaves within about a minute of the server taking mail again."""

    @abstractmethod
    async def deliver(self, reply: Reply) -> str:
        """See ``Channel.deliver``."""

    def render(self, turn: TurnInfo, event: Event) -> None:  # noqa: B027 - optional, a no-op by default
        """Show a running turn live (must not block: schedule network work on a task of your own)."""

    async def prepare(self, message: InboundMessage) -> InboundMessage | None:
        """Complete a stored message before its turn (after the acknowledgement): look up the sender,
        download images. Runs again after a restart; returns the message to answer, or None to leave it
        unanswered (a deleted user, another bot)."""
        return message

    async def start(self, intake: Intake) -> None:  # noqa: B027 - optional, a no-op by default
        """Begin receiving on your own (Slack's Socket Mode, IMAP IDLE); called once the server is up."""

    async def stop(self) -> None:  # noqa: B027 - optional, a no-op by default
        """Stop receiving and finish what was started; called before the server closes."""


@dataclass(frozen=True, kw_only=True)
class Connector:
    """What a ``supportbot.connectors`` entry point names.

    Attributes:
        name: the key under ``connectors:`` in config.yaml and the channel's name.
        settings: the pydantic model of that section (it must have ``enabled: bool``); the config
            loader validates the section with it and reports problems as ``file:line``.
        setup: adds the connector's routes to the server application and returns its channel
            (None when it delivers nothing itself).
    """

    name: str
    settings: type[BaseModel]
    setup: Callable[[web.Application, Any], ChannelBase | None]
