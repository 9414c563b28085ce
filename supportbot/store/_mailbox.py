"""The inbox and outbox (the ``Mailboxes`` protocol), as a part of ``SQLStore``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select, update

from supportbot.errors import StorageError
from supportbot.store._sqlbase import SQLBase, now
from supportbot.store.base import InboxItem, OutboxItem
from supportbot.store.models import inbox as _i
from supportbot.store.models import json_dumps
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
)
_OUTBOX_INSERT = _o.insert().returning(_o.c.id)
_OUTBOX_PENDING = (
    select(*_OUTBOX_COLS)
    .where(_o.c.status == "pending", _o.c.channel == bindparam("channel"))
    .order_by(_o.c.id)
    .limit(bindparam("n"))
)
# Only a pending row can become sent: of two workers racing to mark one reply, one wins.
_OUTBOX_SENT = (
    update(_o)
    .where(_o.c.id == bindparam("oid"), _o.c.status == "pending")
    .values(
        status="sent", external_id=bindparam("new_external_id"), sent_at=bindparam("at"), attempts=_o.c.attempts + 1
    )
)
_OUTBOX_FAILED = (
    update(_o)
    .where(_o.c.id == bindparam("oid"), _o.c.status == "pending")
    .values(status=bindparam("new_status"), attempts=_o.c.attempts + 1)
    .returning(_o.c.attempts)
)


def _inbox_item(row: Sequence[Any]) -> InboxItem:
    return InboxItem(
        id=row[0],
        channel=row[1],
        external_id=row[2],
        payload=row[3],
        status=row[4],
        conversation_id=row[5],
        created_at=row[6],
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
    )


class MailboxMixin(SQLBase):
    """Implements ``supportbot.store.base.Mailboxes``."""

    async def inbox_add(
        self, channel: str, external_id: str, payload: Any, conversation_id: str | None = None
    ) -> int | None:
        """Store an inbound message before acknowledging it; None when it is already stored (a redelivery)."""
        encoded = None if payload is None else json_dumps(payload)
        async with self._driver("storing an inbound message") as driver:
            return await self._hot.inbox_add(driver, channel, external_id, encoded, conversation_id, now())

    async def inbox_set_status(self, inbox_id: int, status: str, *, conversation_id: str | None = None) -> None:
        """Record what became of an inbound message (e.g. ``done``), and the conversation it went to."""
        async with self._driver("updating an inbound message") as driver:
            await self._hot.inbox_set_status(driver, inbox_id, status, conversation_id)

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

    async def outbox_add(
        self, channel: str, payload: Any, *, conversation_id: str | None = None, message_id: int | None = None
    ) -> int:
        """Queue a reply for delivery; returns its outbox id."""
        async with self._begin("queueing a reply") as connection:
            return int((await connection.execute(_OUTBOX_INSERT, {
                "channel": channel, "conversation_id": conversation_id, "message_id": message_id,
                "payload": payload, "status": "pending", "attempts": 0, "external_id": None, "created_at": now(),
                "sent_at": None,
            })).scalar_one())  # fmt: skip

    async def outbox_pending(self, channel: str, limit: int = 100) -> list[OutboxItem]:
        """Replies of ``channel`` still to deliver, oldest first."""
        async with self._begin("listing replies to send") as connection:
            rows = (await connection.execute(_OUTBOX_PENDING, {"channel": channel, "n": limit})).all()
        return [_outbox_item(row) for row in rows]

    async def outbox_mark_sent(self, outbox_id: int, external_id: str | None = None) -> bool:
        """Mark a reply delivered, with the channel's id for it; False if it was not pending any more.

        Raises:
            StorageError: another reply of the same channel already has ``external_id``.
        """
        async with self._begin(f"marking reply {outbox_id} sent") as connection:
            result = await connection.execute(
                _OUTBOX_SENT, {"oid": outbox_id, "new_external_id": external_id, "at": now()}
            )
        return bool(result.rowcount == 1)

    async def outbox_mark_failed(self, outbox_id: int, *, give_up: bool = False) -> int:
        """Count a failed delivery; ``give_up`` marks the reply ``failed`` for good. Returns the attempts so far.

        Raises:
            StorageError: the reply does not exist or is no longer pending.
        """
        async with self._begin(f"marking reply {outbox_id} failed") as connection:
            attempts = (await connection.execute(_OUTBOX_FAILED, {
                "oid": outbox_id, "new_status": "failed" if give_up else "pending"})).scalar()  # fmt: skip
        if attempts is None:
            raise StorageError(f"outbox reply {outbox_id} does not exist or is not pending; nothing to mark")
        return int(attempts)
