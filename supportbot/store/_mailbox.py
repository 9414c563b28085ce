"""The inbox, the outbox, channel state and conversation keys (the ``Mailboxes`` protocol), as a part of ``SQLStore``.

What a channel does for every message (the inbox, binding a conversation's key and address,
counting and marking a delivery) runs on the dialect's backend (``sqlite.py``, ``postgres.py``); the
rest on SQLAlchemy Core.
Upserts are ``INSERT … ON CONFLICT DO UPDATE``, atomic on both databases however many callers race.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Interval, bindparam, case, func, null, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from supportbot.errors import StorageError
from supportbot.store._sqlbase import SQLBase, now
from supportbot.store.mailboxes import ChannelState, ConversationAddress, InboxItem, OutboxItem, StateChanged
from supportbot.store.models import OUTBOX_FAILED, UTCDateTime, clean_text, json_dumps
from supportbot.store.models import channel_state as _s
from supportbot.store.models import inbox as _i
from supportbot.store.models import outbox as _o

__all__ = ["MailboxMixin"]

_INBOX_COLS = (
    _i.c.id,
    _i.c.channel,
    _i.c.external_id,
    _i.c.payload,
    _i.c.status,
    _i.c.conversation_id,
    _i.c.created_at,
    _i.c.lane,
)
_OUTBOX_COLS = (
    _o.c.id,
    _o.c.channel,
    _o.c.payload,
    _o.c.status,
    _o.c.attempts,
    _o.c.conversation_id,
    _o.c.message_id,
    _o.c.external_id,
    _o.c.created_at,
    _o.c.sent_at,
    _o.c.last_error,
    _o.c.lease_until,
)
_OUTBOX_INSERT = _o.insert().returning(_o.c.id)
_OUTBOX_PENDING = (
    select(*_OUTBOX_COLS)
    .where(_o.c.status == "pending", _o.c.channel == bindparam("channel"))
    .order_by(_o.c.id)
    .limit(bindparam("n"))
)
_OUTBOX_BY_ID = select(*_OUTBOX_COLS).where(_o.c.id == bindparam("oid"))
_OUTBOX_BY_EXTERNAL_ID = select(*_OUTBOX_COLS).where(
    _o.c.channel == bindparam("channel"), _o.c.external_id == bindparam("eid")
)
# ``OUTBOX_FAILED`` as the condition, so PostgreSQL and SQLite use the partial index ``ix_outbox_failed``.
_OUTBOX_FAILED_LIST = select(*_OUTBOX_COLS).where(OUTBOX_FAILED).order_by(_o.c.id.desc()).limit(bindparam("n"))


def _outbox_failed(retry_at: Any) -> Any:
    return (
        update(_o)
        .where(_o.c.id == bindparam("oid"), _o.c.status == "pending")
        .values(status=bindparam("new_status"), last_error=bindparam("error"), lease_owner=None, lease_until=retry_at)
        .returning(_o.c.id)
    )


# A retry's backoff ends at a time of the database's clock on PostgreSQL (every worker compares it with that
# clock), of the one process's on SQLite.
_OUTBOX_FAILED = {
    "sqlite": _outbox_failed(bindparam("retry_at", type_=UTCDateTime())),
    "postgresql": _outbox_failed(
        case(
            (bindparam("retry_in", type_=Interval()).is_(None), null()),
            else_=func.statement_timestamp(type_=UTCDateTime()) + bindparam("retry_in", type_=Interval()),
        )
    ),
}
# Compare and set: under READ COMMITTED a concurrent writer's change is seen (the row is re-read), so of two
# workers moving one cursor from the same value, one does.
_STATE_SWAP = (
    update(_s)
    .where(
        _s.c.channel == bindparam("state_channel"),
        _s.c.key == bindparam("state_key"),
        _s.c.value == bindparam("previous"),
    )
    .values(value=bindparam("new_value"), updated_at=bindparam("at"))
)
_STATE_VALUE = select(_s.c.value).where(_s.c.channel == bindparam("channel"), _s.c.key == bindparam("key"))

ERROR_LIMIT = 1000
"""Characters of a delivery error kept in ``last_error`` (an API's error body can be long)."""
KEY_LIMIT = 255
"""Characters of a conversation key or a channel state's key (the columns' width on PostgreSQL)."""


def _inbox_item(row: Sequence[Any]) -> InboxItem:
    return InboxItem(
        id=row[0],
        channel=row[1],
        external_id=row[2],
        payload=row[3],
        status=row[4],
        conversation_id=row[5],
        created_at=row[6],
        lane=row[7],
    )


def _outbox_item(row: Sequence[Any]) -> OutboxItem:
    return OutboxItem(
        id=row[0],
        channel=row[1],
        payload=row[2],
        status=row[3],
        attempts=row[4],
        conversation_id=row[5],
        message_id=row[6],
        external_id=row[7],
        created_at=row[8],
        sent_at=row[9],
        last_error=row[10],
        lease_until=row[11],
    )


def _check_key(what: str, key: str) -> None:
    # PostgreSQL would refuse a longer one and SQLite keep it: refuse it on both, the same way.
    if len(key) > KEY_LIMIT:
        raise ValueError(
            f"{what} {key[:40]!r}… is {len(key)} characters long, more than the {KEY_LIMIT} the store keeps; "
            "shorten it (e.g. a hash of it)"
        )


class MailboxMixin(SQLBase):
    """Implements ``supportbot.store.base.Mailboxes``."""

    # -- inbox -----------------------------------------------------------------------------------

    async def inbox_add(
        self, channel: str, external_id: str, payload: Any, conversation_id: str | None = None, *,
        lane: str | None = None,
    ) -> int | None:  # fmt: skip
        """Store an inbound message before acknowledging it; None when it is already stored (a redelivery).

        ``lane``: the queue its turn waits in (``supportbot.dispatch.lane_of``); None for a row that is no
        customer's message (an operator's reply), which no turn runs.
        """
        encoded = None if payload is None else json_dumps(payload)
        async with self._driver("storing an inbound message") as driver:
            return await self._backend.inbox_add(driver, channel, external_id, encoded, conversation_id, now(), lane)

    async def inbox_set_status(self, inbox_id: int, status: str, *, conversation_id: str | None = None) -> None:
        """Record what became of an inbound message (e.g. ``done``), and the conversation it went to."""
        async with self._driver("updating an inbound message") as driver:
            await self._backend.inbox_set_status(driver, inbox_id, status, conversation_id)

    async def inbox_pending(
        self, channel: str | None = None, *, statuses: Sequence[str] = ("received",), limit: int = 100
    ) -> list[InboxItem]:
        """Inbound messages in one of ``statuses`` (by default not yet taken by the engine), oldest first."""
        query = select(*_INBOX_COLS).where(_i.c.status.in_(statuses)).order_by(_i.c.id).limit(limit)
        if channel is not None:
            query = query.where(_i.c.channel == channel)
        async with self._begin("listing inbound messages") as connection:
            rows = (await connection.execute(query)).all()
        return [_inbox_item(row) for row in rows]

    # -- outbox ----------------------------------------------------------------------------------

    async def outbox_add(
        self,
        channel: str,
        payload: Any,
        *,
        conversation_id: str | None = None,
        message_id: int | None = None,
        state: ChannelState | None = None,
    ) -> int:
        """Queue a reply for delivery; with ``state``, set that channel state in the same transaction.

        Returns the row's id. (A reply stored as a message is queued by ``add_messages(outgoing=…)``
        instead, in the message's own transaction.)

        Raises:
            ValueError: ``state``'s key is longer than ``KEY_LIMIT``.
        """
        if state is not None:
            _check_key("the channel state key", state.key)
        async with self._begin("queueing a reply", write_first=state is not None) as connection:
            if state is not None and state.previous is not None:
                moved = await connection.execute(_STATE_SWAP, {
                    "state_channel": state.channel, "state_key": state.key, "previous": state.previous,
                    "new_value": state.value, "at": now(),
                })  # fmt: skip
                if moved.rowcount != 1:
                    raise StateChanged(
                        f"{state.channel}'s {state.key} is no longer {state.previous!r} (another worker moved it); "
                        "nothing was queued"
                    )
                state = None
            outbox_id = int((await connection.execute(_OUTBOX_INSERT, {
                "channel": channel, "conversation_id": conversation_id, "message_id": message_id,
                "payload": payload, "status": "pending", "attempts": 0, "external_id": None, "created_at": now(),
                "sent_at": None, "last_error": None,
            })).scalar_one())  # fmt: skip
            if state is not None:
                await self._set_state(connection, state)
        return outbox_id

    async def outbox_pending(self, channel: str, limit: int = 100) -> list[OutboxItem]:
        """Replies of ``channel`` still to deliver, oldest first."""
        async with self._begin("listing replies to send") as connection:
            rows = (await connection.execute(_OUTBOX_PENDING, {"channel": channel, "n": limit})).all()
        return [_outbox_item(row) for row in rows]

    async def outbox_get(self, outbox_id: int) -> OutboxItem | None:
        """The outbox row with this id, in any status, or None."""
        async with self._begin(f"reading reply {outbox_id}") as connection:
            row = (await connection.execute(_OUTBOX_BY_ID, {"oid": outbox_id})).first()
        return None if row is None else _outbox_item(row)

    async def outbox_find(self, channel: str, external_id: str) -> OutboxItem | None:
        """The row delivered as the channel's message ``external_id`` (e.g. a Slack message's ts), or None."""
        async with self._begin("finding a delivered reply") as connection:
            row = (await connection.execute(_OUTBOX_BY_EXTERNAL_ID, {"channel": channel, "eid": external_id})).first()
        return None if row is None else _outbox_item(row)

    async def outbox_attempt(self, outbox_id: int, *, owner: str = "", lease_s: float = 10.0) -> int | None:
        """Count an attempt and lease the row to ``owner`` for ``lease_s`` before sending it (on PostgreSQL
        by the database's clock).

        Returns the attempts so far, this one included; None when the row is not ``owner``'s to send now:
        it is no longer pending, another worker is sending it, or it waits out a retry's backoff.
        """
        async with self._driver(f"counting a delivery attempt of reply {outbox_id}") as driver:
            return await self._backend.outbox_attempt(driver, outbox_id, owner, lease_s, now())

    async def outbox_mark_sent(self, outbox_id: int, external_id: str | None = None) -> bool:
        """Mark a reply delivered, with the channel's id for it; False if it was not pending any more.

        Raises:
            StorageError: another reply of the same channel already has ``external_id``.
        """
        async with self._driver(f"marking reply {outbox_id} sent") as driver:
            return await self._backend.outbox_mark_sent(driver, outbox_id, external_id, now())

    async def outbox_mark_failed(
        self, outbox_id: int, *, error: str, give_up: bool = False, retry_in: float | None = None
    ) -> None:
        """Record why the last attempt failed (up to ``ERROR_LIMIT`` characters); ``give_up`` marks it ``failed``.

        The row's lease ends; with ``retry_in``, no worker tries it again for that many seconds (the retry's
        backoff; on PostgreSQL by the database's clock).

        Raises:
            StorageError: the reply does not exist or is no longer pending.
        """
        if len(error) > ERROR_LIMIT:
            error = error[: ERROR_LIMIT - 1] + "…"
        values: dict[str, Any] = {"oid": outbox_id, "new_status": "failed" if give_up else "pending", "error": error}
        if self._backend.name == "postgresql":
            values["retry_in"] = None if retry_in is None else timedelta(seconds=retry_in)
        else:
            values["retry_at"] = None if retry_in is None else now() + timedelta(seconds=retry_in)
        async with self._begin(f"marking reply {outbox_id} failed") as connection:
            found = (await connection.execute(_OUTBOX_FAILED[self._backend.name], values)).scalar()
        if found is None:
            raise StorageError(
                f"outbox reply {outbox_id} does not exist or is not pending (sent or given up on already); "
                "nothing to mark failed"
            )

    async def outbox_failed(self, *, limit: int = 100) -> list[OutboxItem]:
        """Replies given up on, newest first (for operators)."""
        async with self._begin("listing replies given up on") as connection:
            rows = (await connection.execute(_OUTBOX_FAILED_LIST, {"n": limit})).all()
        return [_outbox_item(row) for row in rows]

    # -- channel state ---------------------------------------------------------------------------

    async def channel_state(self, channel: str, key: str) -> str | None:
        """The value ``set_channel_state`` last set for ``channel`` and ``key``, or None."""
        async with self._begin("reading a channel's state") as connection:
            value = (await connection.execute(_STATE_VALUE, {"channel": channel, "key": key})).scalar()
        return None if value is None else str(value)

    async def set_channel_state(self, state: ChannelState) -> None:
        """Set (or replace) a channel's value for a key.

        Raises:
            ValueError: the key is longer than ``KEY_LIMIT``.
        """
        _check_key("the channel state key", state.key)
        async with self._begin("setting a channel's state") as connection:
            await self._set_state(connection, state)

    async def _set_state(self, connection: AsyncConnection, state: ChannelState) -> None:
        insert = self._insert(_s).values(channel=state.channel, key=state.key, value=state.value, updated_at=now())
        await connection.execute(insert.on_conflict_do_update(
            index_elements=[_s.c.channel, _s.c.key],
            set_={"value": insert.excluded.value, "updated_at": insert.excluded.updated_at},
        ))  # fmt: skip

    # -- conversation keys and addresses ---------------------------------------------------------

    async def conversation_for_key(self, channel: str, key: str) -> str | None:
        """The newest conversation (by creation, any status) bound to ``key`` on ``channel``, or None."""
        async with self._driver("looking up a conversation key") as driver:
            return await self._backend.conversation_for_key(driver, channel, clean_text(key))

    async def set_conversation_address(
        self, conversation_id: str, *, channel: str, key: str | None, address: dict[str, Any]
    ) -> None:
        """Bind the conversation to its key and where its replies go, replacing what was bound before.

        Raises:
            StorageError: there is no such conversation.
            ValueError: ``key`` is longer than ``KEY_LIMIT``.
        """
        if key is not None:
            key = clean_text(key)
            _check_key("the conversation key", key)
        async with self._driver("storing a conversation's address") as driver:
            encoded = json_dumps(address)
            await self._backend.set_conversation_address(driver, conversation_id, channel, key, encoded, now())

    async def conversation_address(self, conversation_id: str) -> ConversationAddress | None:
        """The conversation's key and address as ``set_conversation_address`` last set them, or None."""
        async with self._driver("reading a conversation's address") as driver:
            return await self._backend.conversation_address(driver, conversation_id)
