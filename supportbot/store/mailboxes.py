"""What channels and their workers need of storage: the inbox and outbox (``Mailboxes``), lanes and leases
across workers (``Lanes``, ``Leases``), and the widget's conversation tokens; with the records they return.

``SQLStore`` implements all of them (``_mailbox.py``, ``_leases.py``, ``_tokens.py``); the engine needs none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from supportbot.errors import StorageError

__all__ = [
    "ChannelState",
    "ConversationAddress",
    "ConversationTokens",
    "InboxItem",
    "Lanes",
    "Leases",
    "Mailboxes",
    "OutboxItem",
    "OutboxStatus",
    "StateChanged",
]


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
    """A value a channel keeps between runs (a cursor), set in the same transaction as an outbox row.

    With ``previous``, it is set only while the stored value is still ``previous`` (compare and set): otherwise
    the whole write is refused with ``StateChanged`` (another worker moved the cursor meanwhile).
    """

    channel: str
    key: str
    value: str
    previous: str | None = None


class StateChanged(StorageError):
    """A channel state was not set: its value was no longer the ``previous`` the write expected."""


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
        """Queue a reply; with ``state``, set that channel state in the same transaction. Returns the row's id.

        Raises:
            StateChanged: ``state.previous`` is set and the stored value differs; nothing was queued.
        """
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
        self, outbox_id: int, *, error: str, give_up: bool = False, retry_in: float | None = None
    ) -> None:
        """Record why the last attempt failed and end the row's lease; ``give_up`` marks the row ``failed`` for
        good; ``retry_in``: no worker tries it again for that many seconds.

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


class Leases(Protocol):
    """Named leases that let one worker of several do a thing at a time (a conversation's lane, a channel's
    receiver, ticket announcements), taken over by another when the holder stops renewing.
    """

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

    async def pass_lease(self, name: str, owner: str, to: str, seconds: float) -> bool:
        """Hand ``owner``'s lease to ``to`` for ``seconds`` in one step (e.g. a lane resting after a failure);
        False when ``owner`` did not hold it."""
        ...

    async def clear_leases(self) -> None:
        """Drop every lease and free every outbox row being sent: for a server that is the database's only
        worker (SQLite), at its start."""
        ...

    async def drop_stale_leases(self) -> int:
        """Delete leases that expired a while ago; how many."""
        ...

    async def inbox_claim(self, inbox_id: int, owner: str, seconds: float) -> bool:
        """Hold an inbound row that is no customer's message (an operator's reply) for ``seconds`` if it is still
        ``received`` and nobody else holds it; whether ``owner`` holds it now."""
        ...


class Lanes(Protocol):
    """The inbox in lanes: a conversation's messages (or a channel key's, before it has one) in arrival order."""

    async def inbox_next(self, lane: str) -> InboxItem | None:
        """The oldest message of ``lane`` whose turn has not finished, or None."""
        ...

    async def inbox_lane(self, lane: str, *, limit: int = 1000, after_id: int = 0) -> list[InboxItem]:
        """The messages of ``lane`` whose turns have not finished, oldest first, those after ``after_id``."""
        ...

    async def inbox_unlaned(self, *, limit: int = 1000, after_id: int = 0) -> list[InboxItem]:
        """Unanswered inbox rows without a lane, oldest first, those after ``after_id``."""
        ...

    async def inbox_orphan_lanes(self, *, limit: int = 100, after: str | None = None) -> list[str]:
        """Lanes with unanswered messages that no worker holds; with ``after``, those after it (pages)."""
        ...

    async def inbox_turn_failed(self, inbox_id: int) -> int:
        """Count one more failed turn of an inbound message, atomically; how often it failed so far, anywhere."""
        ...

    async def inbox_set_lanes(self, lanes: Sequence[tuple[int, str]]) -> None:
        """Give inbox rows their lane: ``(inbox id, lane)`` pairs."""
        ...

    async def inbox_bind(self, inbox_id: int, conversation_id: str) -> None:
        """Record the conversation a keyed message goes to, if its turn was not taken meanwhile."""
        ...


class ConversationTokens(Protocol):
    """Bearer tokens that open one conversation each (the web widget's); only their hashes are stored."""

    async def add_conversation_token(self, conversation_id: str, token_hash: str) -> None: ...
    async def conversation_for_token(self, token_hash: str) -> str | None: ...
