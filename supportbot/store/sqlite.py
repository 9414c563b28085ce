"""The SQLite backend: every statement the store runs on SQLite's own driver, one transaction each.

Every turn stores the customer's message and reads what the turn needs, then stores one or two
batches of messages; channels add, mark and look up their rows per message. Through SQLAlchemy's
asyncio layer each of those cost 0.4-1 ms of CPU: aiosqlite makes a thread hop per cursor call
(cursor, execute, fetch, close, commit). Here each operation is one short transaction on the event
loop's thread (see ``SQLiteBackend`` for why that is safe, and what goes to a worker thread instead).
What is not per message (tickets, review, leases) stays on SQLAlchemy Core in the store's mixins;
this module also owns SQLite's part of those (``Dialect``).

Connections come from the store's SQLAlchemy pool (so the PRAGMAs and codecs are the same).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import weakref
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Select, func
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from supportbot._json import loads
from supportbot.messages import Usage
from supportbot.store._common import (
    ADDRESS,
    CONV_COLS,
    CONVERSATION_FOR_KEY,
    CUSTOMER_COLS,
    INSERT_COLS,
    INSERT_CUSTOMER,
    INSERT_INBOX,
    INSERT_TOKEN,
    MSG_COLS,
    OUTBOX_ATTEMPT,
    OUTBOX_SENT,
    SET_ADDRESS,
    SET_INBOX_STATUS,
    TAKEN,
    TOKEN_CONVERSATION,
    Started,
    conversation,
    customer,
    decode_images,
    decode_tool_calls,
    message_values,
    totals,
)
from supportbot.store._engine import SQLITE_BUSY_TIMEOUT_MS
from supportbot.store._locks import KeyedLocks
from supportbot.store.base import Conversation, ConversationStatus, Customer, NewMessage, Outgoing, StoredMessage
from supportbot.store.mailboxes import ConversationAddress
from supportbot.store.models import json_dumps

__all__ = ["SQLiteBackend"]

logger = logging.getLogger("supportbot.store")


def _sqlite_time(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME text form (always with microseconds), in UTC: the ISO text
    # without its "+00:00" (a UTC time, the usual case, needs no conversion).
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # Without ``timespec`` (whose keyword parsing costs more than the formatting) the text has
    # microseconds unless they are 0.
    text = value.isoformat(" ")
    return text[:26] if len(text) == 32 else text[:19] + ".000000"


def _sqlite_datetime(value: str) -> datetime:
    try:
        # Naive UTC text, as SQLAlchemy writes it: parsing it with its offset is a single C call.
        return datetime.fromisoformat(value + "+00:00")
    except ValueError:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _sqlite_parse(value: str | None) -> datetime | None:
    return None if value is None else _sqlite_datetime(value)


MESSAGE_CACHE_SIZE = 4096
"""Decoded messages kept by their row (``_MessageCache``); each is a few hundred bytes."""


class _MessageCache:
    """Messages decoded from SQLite rows, keyed by the whole row: a turn reads its conversation's history again.

    The key is every column as read, so a row that changed in any way (a status set, a row
    written through SQLAlchemy) is a different key and is decoded afresh: a hit is exactly what
    decoding would give. ``StoredMessage`` is frozen, so one instance can be handed out again.
    Oldest entries go first once ``MESSAGE_CACHE_SIZE`` are kept.
    """

    __slots__ = ("_messages",)

    def __init__(self) -> None:
        self._messages: dict[tuple[Any, ...], StoredMessage] = {}

    def decode(self, rows: Sequence[tuple[Any, ...]]) -> list[StoredMessage]:
        messages = self._messages
        out = []
        for row in rows:
            found = messages.get(row)
            if found is None:
                found = _sqlite_message(row)
                if len(messages) >= MESSAGE_CACHE_SIZE:
                    del messages[next(iter(messages))]
                messages[row] = found
            out.append(found)
        return out


def _sqlite_message(row: Sequence[Any]) -> StoredMessage:
    """A message from its ``MSG_COLS`` row as SQLite returns it (text timestamps and JSON).

    Built in one step rather than through ``message``: the whole history is read every turn.
    """
    (message_id, conversation_id, created_at, role, content, images, tool_calls, tool_call_id, tool_name, extra,
     kind, status, flow, model, input_tokens, output_tokens, audio_input_tokens, reasoning_tokens, cost, latency,
     author) = row  # fmt: skip
    # JSON columns are NULL when empty (see ``message_values``); rows written through SQLAlchemy may say "null".
    images = images and loads(images)
    tool_calls = tool_calls and loads(tool_calls)
    extra = extra and loads(extra)
    return StoredMessage(
        id=message_id,
        conversation_id=conversation_id,
        created_at=_sqlite_datetime(created_at),
        role=role,
        content=content,
        images=decode_images(images) if images else (),
        tool_calls=decode_tool_calls(tool_calls) if tool_calls else (),
        tool_call_id=tool_call_id,
        tool_name=tool_name,
        extra=extra or {},
        kind=kind,
        status=status,
        flow=flow,
        model=model,
        usage=None
        if input_tokens is None
        else Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens or 0,
            audio_input_tokens=audio_input_tokens or 0,
            reasoning_tokens=reasoning_tokens or 0,
        ),
        cost_usd=cost,
        latency_ms=latency,
        author=author,
    )


def _as_read(message_id: int, conversation_id: str, created_at: str, values: tuple[Any, ...]) -> StoredMessage:
    """The record a read of a row just inserted with ``values`` (``message_values``) gives, without reading it.

    Decoded by ``_sqlite_message`` itself, so it is what a read returns: text as cleaned, JSON columns as
    their text decodes, and ``latency_ms`` (a REAL column, where SQLite stores an integer as a float) a float.
    """
    latency = values[16]
    if type(latency) is int:
        values = (*values[:16], float(latency), values[17])
    return _sqlite_message((message_id, conversation_id, created_at, *values))


HISTORY_CACHE_SIZE = 8192
"""Messages ``_Histories`` keeps over all conversations; each is a few hundred bytes."""
HISTORY_KEEP = 400
"""The newest messages ``_Histories`` keeps per conversation: the history a turn reads (``engine.HISTORY_LIMIT``)."""


class _History:
    __slots__ = ("complete", "messages")

    def __init__(self, messages: list[StoredMessage], complete: bool) -> None:
        self.messages = messages
        self.complete = complete  # all of the conversation's messages, not only the newest


class _Histories:
    """The newest messages of recently active conversations as stored, so a turn's history needs no read.

    Every message this backend stores is appended to its conversation's entry once its transaction has
    committed, so an entry holds what a read would return for as long as no other connection writes.
    Another connection's commit (SQLAlchemy's: a message's status, an operator's reply; another
    process's) changes SQLite's ``PRAGMA data_version``, which ``begin_turn`` reads in its transaction
    before it uses an entry: then every entry is dropped and histories are read again. Rows are only
    appended, with growing ids, while entries are kept. Off for an in-memory database, where SQLAlchemy
    shares the one connection (``data_version`` counts only other connections' commits).
    """

    __slots__ = ("_connection", "_entries", "_size", "_version", "enabled")

    def __init__(self) -> None:
        self._entries: dict[str, _History] = {}  # least recently used first
        self._size = 0
        self._connection: sqlite3.Connection | None = None
        self._version = -1
        self.enabled = False

    def check(self, db: sqlite3.Connection) -> None:
        """Drop every entry if another connection committed since the last check (or the connection changed)."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version or db is not self._connection:
            self.clear()
            self._version = version
            self._connection = db

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._size = 0

    def get(self, conversation_id: str, last: int) -> list[StoredMessage] | None:
        """The newest ``last`` messages (a new list), or None when they are not all kept."""
        entry = self._entries.pop(conversation_id, None)
        if entry is None:
            return None
        self._entries[conversation_id] = entry
        messages = entry.messages
        if len(messages) < last and not entry.complete:
            return None
        return messages[-last:] if len(messages) > last else messages[:]

    def put(self, conversation_id: str, messages: Sequence[StoredMessage], *, complete: bool) -> None:
        """Keep ``messages``, the newest of a conversation (all of them when ``complete``), in id order."""
        if not self.enabled:
            return
        old = self._entries.pop(conversation_id, None)
        if old is not None:
            self._size -= len(old.messages)
        self._entries[conversation_id] = _History(list(messages), complete)
        self._size += len(messages)
        self._trim(conversation_id)

    def forget(self, conversation_id: str) -> None:
        """Drop the conversation's entry: one of its messages changed (its next history is read again)."""
        entry = self._entries.pop(conversation_id, None)
        if entry is not None:
            self._size -= len(entry.messages)

    def append(self, conversation_id: str, messages: Sequence[StoredMessage]) -> None:
        """Add messages just stored to the conversation's entry, if it has one."""
        entry = self._entries.get(conversation_id)
        if entry is None:
            return
        entry.messages.extend(messages)
        self._size += len(messages)
        self._trim(conversation_id)

    def _trim(self, conversation_id: str) -> None:
        entry = self._entries[conversation_id]
        over = len(entry.messages) - HISTORY_KEEP
        if over > 0:
            del entry.messages[:over]
            entry.complete = False
            self._size -= over
        while self._size > HISTORY_CACHE_SIZE:
            oldest = next(iter(self._entries))
            self._size -= len(self._entries.pop(oldest).messages)


def _sqlite_conversation(row: Sequence[Any]) -> Conversation:
    values = list(row)
    values[9], values[10] = _sqlite_parse(values[9]), _sqlite_parse(values[10])
    return conversation(values)


def _in_transaction(db: sqlite3.Connection, work: Any, *args: Any) -> Any:
    try:
        result = work(db, *args)
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return result


WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes the WAL file is truncated to when it restarts after a complete checkpoint."""

CHECKPOINT_EVERY = 1024
"""Commits of the hot path between two WAL checkpoints (run in a worker thread).

A turn commits 2-4 times (2 when its tool calls are read-only), 5-8 pages each: the WAL grows to 15-25 MB
between checkpoints. With 256 they cost about 0.015 ms of CPU a turn more (the same pages copied 4 times
as often)."""


BUSY_FIRST_SLEEP = 0.001
"""Seconds the hot path sleeps after its first "database is locked"; doubled after each further one."""
BUSY_MAX_SLEEP = 0.05
"""The longest of those sleeps: another connection's transaction is a few ms, or a CLI command's much longer."""
BUSY_GIVE_UP = SQLITE_BUSY_TIMEOUT_MS / 1000
"""Seconds of "database is locked" after which a hot transaction fails (what other connections wait at most)."""


class Lender(Protocol):
    """Lets others use a held connection for a while (``_sqlbase.HotPool``)."""

    def lent(self, driver: Any) -> AbstractAsyncContextManager[None]: ...


def _busy(exc: sqlite3.OperationalError) -> bool:
    # The primary code: WAL mode also has SQLITE_BUSY_SNAPSHOT, SQLITE_BUSY_RECOVERY, ...
    return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_BUSY


def _checkpoint(path: str) -> None:
    """A passive checkpoint of the database file at ``path``, on a connection of its own."""
    try:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            # PASSIVE never waits for readers or writers: what it cannot copy now, the next one does.
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            db.close()
    except (sqlite3.Error, OSError) as exc:
        logger.warning("WAL checkpoint of %s failed (the next one will try again): %s", path, exc)


def _checkpoint_tail(db: sqlite3.Connection) -> None:
    """Finish a checkpoint on the hot connection itself (outside any transaction): only the frames left."""
    try:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as exc:
        logger.warning("WAL checkpoint failed (the next one will try again): %s", exc)


def _database_file(db: sqlite3.Connection) -> str:
    """The file of the connection's main database; empty for an in-memory one."""
    return str(next((row[2] for row in db.execute("PRAGMA database_list") if row[1] == "main"), ""))


class SQLiteBackend:
    """Each method takes the aiosqlite connection and runs one transaction, on the event loop's thread.

    A hop to aiosqlite's worker thread costs about 90 µs of CPU here, several times the SQL of a
    hot-path call (10-60 µs: indexed reads and a commit that, in WAL mode with
    ``synchronous=NORMAL``, is a write into the page cache). Running it inline is safe because
    the two things that can take long never happen inline:

    * waiting for another connection's write lock (another process's, or a SQLAlchemy
      transaction of this one): the hot connection's busy timeout is 0; a busy transaction is
      rolled back, the connection is lent to the pool while the call sleeps (1 ms, doubling up to
      50 ms), and it runs again inline, for up to ``BUSY_GIVE_UP`` seconds. Waiting in
      aiosqlite's thread instead (SQLite's own busy handler) held the only hot connection for the
      whole wait: every other store call queued behind it, and at 100 new conversations a
      second a quarter of the calls found the lock taken, so the queue never drained;
    * checkpoints, which fsync: automatic checkpoints are off on the hot connection, and every
      ``CHECKPOINT_EVERY`` commits a passive checkpoint runs in a worker thread on a connection
      of its own. The hot connection is not held meanwhile: turns waiting for it would queue,
      and go on waking one by one (an event loop round each) long after the checkpoint.
    """

    name = "sqlite"
    hot_connections = 1
    """Its worker thread runs one transaction at a time anyway."""
    discard_broken = False
    """A refused or interrupted transaction leaves an aiosqlite connection usable (it was rolled back)."""
    insert = staticmethod(sqlite_insert)
    """SQLAlchemy's ``INSERT … ON CONFLICT`` construct, for the mixins' statements."""

    def __init__(self, pool: Lender) -> None:
        self._pool = pool
        self._prepared: weakref.WeakSet[Any] = weakref.WeakSet()
        self._commits = 0
        self._file = ""
        self._checkpoint: asyncio.Task[None] | None = None
        self._decoded = _MessageCache()
        self._histories = _Histories()
        self._locks = KeyedLocks()

    # -- SQLite's part of the mixins' SQLAlchemy transactions -------------------------------------

    async def begin_write(self, connection: AsyncConnection) -> None:
        """Take the write lock up front (``BEGIN IMMEDIATE``), for a transaction that reads and then writes.

        Otherwise upgrading its read snapshot fails with "database is locked" when another writer
        changed the database meanwhile.
        """
        await connection.exec_driver_sql("BEGIN IMMEDIATE")

    async def hold_row(self, connection: AsyncConnection, query: Select[Any]) -> None:
        """Nothing: ``begin_write`` already made the transaction the only writer."""

    def for_update(self, query: Select[Any]) -> Select[Any]:
        """``query`` as it is: a ``begin_write`` transaction is the only writer already."""
        return query

    def day(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        """The UTC day of a ``UTCDateTime`` column as ``'YYYY-MM-DD'`` text (``date()`` reads its naive UTC text)."""
        return func.date(column)

    def lock(self, conversation_id: str) -> AbstractAsyncContextManager[None]:
        """One turn at a time per conversation: SQLite serves one process, so its asyncio lock is the whole lock."""
        return self._locks.hold(conversation_id)

    async def _run(self, driver: Any, work: Any, *args: Any) -> Any:
        db = driver._conn
        if driver not in self._prepared:
            db.execute("PRAGMA busy_timeout=0")
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")  # a WAL that restarts is cut back to this
            self._prepared.add(driver)
            self._file = _database_file(db)
            self._histories.enabled = bool(self._file)
        try:
            result = _in_transaction(db, work, *args)
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            result = await self._retry(driver, work, *args)
        self._commits += 1
        if self._checkpoint is not None and self._checkpoint.done():
            # The worker thread copied the WAL up to where it was when it started; what this process
            # wrote meanwhile is copied now, between our transactions, so the checkpoint completes and
            # the next write starts the WAL afresh. (Without this, under steady load no checkpoint ever
            # completed and the WAL grew without end.) The tail is small: a few turns' pages.
            self._checkpoint = None
            _checkpoint_tail(db)
        if self._commits >= CHECKPOINT_EVERY and self._checkpoint is None:
            self._commits = 0
            if self._file:
                self._checkpoint = asyncio.create_task(asyncio.to_thread(_checkpoint, self._file))
        return result

    async def _retry(self, driver: Any, work: Any, *args: Any) -> Any:
        """Run a transaction that found the database locked again, sleeping in between without the connection."""
        db = driver._conn
        started = time.monotonic()
        sleep = BUSY_FIRST_SLEEP
        while True:
            async with self._pool.lent(driver):
                await asyncio.sleep(sleep)
            try:
                return _in_transaction(db, work, *args)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                waited = time.monotonic() - started
                if waited >= BUSY_GIVE_UP:
                    raise sqlite3.OperationalError(
                        f"database is locked: another connection held its write lock for {waited:.1f} s"
                    ) from exc
            sleep = min(sleep * 2, BUSY_MAX_SLEEP)

    async def close(self) -> None:
        """Wait for a checkpoint still running (call before the connections close)."""
        if self._checkpoint is not None:
            await self._checkpoint
            self._checkpoint = None

    async def get_customer(self, driver: Any, customer_id: str) -> Customer | None:
        rows = await self._run(driver, _fetch, f"SELECT {CUSTOMER_COLS} FROM customers WHERE id = ?", (customer_id,))
        if not rows:
            return None
        values = list(rows[0])
        values[5] = _sqlite_parse(values[5])
        return customer(values)

    async def get_conversation(self, driver: Any, conversation_id: str) -> Conversation | None:
        rows = await self._run(driver, _fetch, f"SELECT {CONV_COLS} FROM conversations WHERE id = ?",
                               (conversation_id,))  # fmt: skip
        return _sqlite_conversation(rows[0]) if rows else None

    async def update_conversation(
        self,
        driver: Any,
        conversation_id: str,
        flow: str | None,
        status: ConversationStatus | None,
        turns: int,
        now: datetime,
    ) -> Conversation | None:
        rows = await self._run(driver, _fetch,
            "UPDATE conversations SET flow = coalesce(?, flow), status = coalesce(?, status), turns = turns + ?, "
            f"updated_at = ? WHERE id = ? RETURNING {CONV_COLS}",
            (flow, status, turns, _sqlite_time(now), conversation_id),
        )  # fmt: skip
        return _sqlite_conversation(rows[0]) if rows else None

    async def list_messages(self, driver: Any, conversation_id: str, last: int | None) -> list[StoredMessage]:
        args: tuple[Any, ...]
        if last is None:
            sql, args = f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,)
        else:
            sql = f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? ORDER BY id DESC LIMIT ?"
            args = (conversation_id, last)
        rows = await self._run(driver, _fetch, sql, args)
        if last is not None:
            rows.reverse()
        return self._decoded.decode(rows)

    async def add_messages(
        self,
        driver: Any,
        conversation_id: str,
        messages: Sequence[NewMessage],
        now: datetime,
        outgoing: Outgoing | None = None,
    ) -> list[StoredMessage] | None:
        """Insert, add to the totals, queue ``outgoing`` for the last message; None without the conversation."""
        rows = [message_values(m) for m in messages]
        queued = None if outgoing is None else (outgoing.channel, json_dumps(outgoing.payload))
        at = _sqlite_time(now)
        ids = await self._run(driver, _sqlite_add, conversation_id, totals(messages), rows, at, queued)
        if ids is None:
            return None
        saved = [_as_read(i, conversation_id, at, row) for i, row in zip(ids, rows, strict=True)]
        self._histories.append(conversation_id, saved)
        return saved

    async def claim_tool_runs(
        self, driver: Any, conversation_id: str, tool_call_ids: Sequence[str], now: datetime, approve: int | None
    ) -> set[str]:
        """Claim the runs of ``tool_call_ids`` (and first mark the message ``approve`` ``ok``), in one transaction;
        the ids claimed now."""
        claimed: set[str] = await self._run(
            driver, _sqlite_claim, conversation_id, tool_call_ids, _sqlite_time(now), approve
        )
        if approve is not None:  # a message's status changed on this connection, which data_version does not see
            self._histories.forget(conversation_id)
        return claimed

    async def find_customer(
        self, driver: Any, email: str | None, external_id: str | None, verified: bool
    ) -> Customer | None:
        row = await self._run(driver, _sqlite_find_customer, email, external_id, verified)
        if row is None:
            return None
        values = list(row)
        values[5] = _sqlite_parse(values[5])
        return customer(values)

    async def create_conversation(self, driver: Any, conv: Conversation, messages: Sequence[NewMessage] = ()) -> None:
        """Insert a new conversation and its first ``messages``; a missing customer raises IntegrityError."""
        now = _sqlite_time(conv.created_at or datetime.now(UTC))
        rows = [message_values(m) for m in messages]
        ids = await self._run(driver, _sqlite_create,
                              (conv.id, conv.customer_id, conv.channel, conv.flow, conv.status, now, now),
                              totals(messages), rows, now)  # fmt: skip
        # A new conversation's history is known whole: its first turn reads none.
        self._histories.put(conv.id, [_as_read(i, conv.id, now, row) for i, row in zip(ids, rows, strict=True)],
                            complete=True)  # fmt: skip

    async def begin_turn(
        self,
        driver: Any,
        conversation_id: str,
        message: NewMessage,
        history: int,
        now: datetime,
        inbox_id: int | None = None,
    ) -> Started | str | None:
        """Store the message (and mark its inbox row stored), then read the conversation, customer and history.

        ``TAKEN`` when the inbox row was taken by another worker already; None without the conversation.
        """
        row = message_values(message)
        at = _sqlite_time(now)
        histories = self._histories
        found = await self._run(driver, _sqlite_begin, conversation_id, totals((message,)), row, at, history, inbox_id,
                                histories if histories.enabled else None)  # fmt: skip
        if found is None or found == TAKEN:
            return found  # type: ignore[no-any-return]
        message_id, conv, cust, kept, rows = found
        if kept is None:
            rows.reverse()
            kept = self._decoded.decode(rows)
            histories.put(conversation_id, kept, complete=len(rows) < history)
        saved = _as_read(message_id, conversation_id, at, row)
        histories.append(conversation_id, (saved,))
        values = list(cust)
        values[5] = _sqlite_parse(values[5])
        return saved, _sqlite_conversation(conv), customer(values), kept

    async def create_customer(self, driver: Any, new: Customer) -> None:
        """Insert a customer (fields already cleaned); a taken email or external id raises IntegrityError."""
        await self._run(driver, _fetch, INSERT_CUSTOMER, (new.id, new.email, new.external_id, new.name,
                        int(new.verified), _sqlite_time(new.created_at or datetime.now(UTC))))  # fmt: skip

    async def inbox_add(
        self, driver: Any, channel: str, external_id: str, payload: str | None, conversation_id: str | None,
        now: datetime, lane: str | None = None,
    ) -> int | None:  # fmt: skip
        """Insert an inbox row (``payload`` JSON-encoded); None when the channel's message is stored already."""
        rows = await self._run(driver, _fetch, INSERT_INBOX,
                               (channel, external_id, conversation_id, payload, _sqlite_time(now), lane))  # fmt: skip
        return int(rows[0][0]) if rows else None

    async def inbox_set_status(self, driver: Any, inbox_id: int, status: str, conversation_id: str | None) -> None:
        await self._run(driver, _fetch, SET_INBOX_STATUS, (status, conversation_id, inbox_id))

    async def add_conversation_token(self, driver: Any, conversation_id: str, token_hash: str, now: datetime) -> None:
        await self._run(driver, _fetch, INSERT_TOKEN, (token_hash, conversation_id, _sqlite_time(now)))

    async def conversation_for_token(self, driver: Any, token_hash: str) -> str | None:
        rows = await self._run(driver, _fetch, TOKEN_CONVERSATION, (token_hash,))
        return str(rows[0][0]) if rows else None

    async def outbox_attempt(
        self, driver: Any, outbox_id: int, owner: str, lease_s: float, now: datetime
    ) -> int | None:
        until = now + timedelta(seconds=lease_s)
        rows = await self._run(driver, _fetch, OUTBOX_ATTEMPT,
                               (owner, _sqlite_time(until), outbox_id, _sqlite_time(now)))  # fmt: skip
        return int(rows[0][0]) if rows else None

    async def outbox_mark_sent(self, driver: Any, outbox_id: int, external_id: str | None, now: datetime) -> bool:
        return await self._run(driver, _changed, OUTBOX_SENT, (external_id, _sqlite_time(now), outbox_id))  # type: ignore[no-any-return]

    async def set_conversation_address(
        self, driver: Any, conversation_id: str, channel: str, key: str | None, address: str, now: datetime
    ) -> None:
        """Bind the conversation to its key and address (JSON-encoded); a missing one raises IntegrityError."""
        await self._run(driver, _fetch, SET_ADDRESS, (conversation_id, channel, key, address, _sqlite_time(now)))

    async def conversation_for_key(self, driver: Any, channel: str, key: str) -> str | None:
        rows = await self._run(driver, _fetch, CONVERSATION_FOR_KEY, (channel, key))
        return str(rows[0][0]) if rows else None

    async def conversation_address(self, driver: Any, conversation_id: str) -> ConversationAddress | None:
        rows = await self._run(driver, _fetch, ADDRESS, (conversation_id,))
        if not rows:
            return None
        conversation_id, channel, key, address = rows[0]
        return ConversationAddress(conversation_id=conversation_id, channel=channel, key=key,
                                   address=loads(address) if address else {})  # fmt: skip


def _fetch(db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[Any]:
    return db.execute(sql, args).fetchall()


def _changed(db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> bool:
    return db.execute(sql, args).rowcount == 1


# Only a row nobody took yet: a worker that lost its lane (another answered the message) stores nothing.
_MARK_INBOX_STORED = "UPDATE inbox SET status = 'stored' WHERE id = ? AND status = 'received'"
_INSERT_CONVERSATION = (
    "INSERT INTO conversations (id, customer_id, channel, flow, status, turns, input_tokens, output_tokens, "
    "cost_usd, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, 0, 0, 0.0, ?, ?)"
)
_SQLITE_INSERT = f"INSERT INTO messages ({INSERT_COLS}) VALUES ({', '.join('?' * 20)})"
_SQLITE_COUNT = (
    "UPDATE conversations SET turns = turns + ?, input_tokens = input_tokens + ?, "
    "output_tokens = output_tokens + ?, cost_usd = cost_usd + ?, updated_at = ? WHERE id = ?"
)
_SQLITE_COUNT_RETURNING = f"{_SQLITE_COUNT} RETURNING {CONV_COLS}"
_SQLITE_CUSTOMER = f"SELECT {CUSTOMER_COLS} FROM customers WHERE id = ?"
_SQLITE_HISTORY = f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? AND id < ? ORDER BY id DESC LIMIT ?"


_SQLITE_OUTBOX = (
    "INSERT INTO outbox (channel, conversation_id, message_id, payload, status, attempts, created_at) "
    "VALUES (?, ?, ?, ?, 'pending', 0, ?)"
)


def _sqlite_add(
    db: sqlite3.Connection,
    conversation_id: str,
    batch: tuple[int, int, int, float],
    rows: list[tuple[Any, ...]],
    now: str,
    outgoing: tuple[str, str] | None,
) -> list[int] | None:
    # The UPDATE goes first: it finds a missing conversation and takes the write lock at once.
    cursor = db.execute(_SQLITE_COUNT, (*batch, now, conversation_id))
    if cursor.rowcount != 1:
        return None
    ids = []
    for row in rows:
        cursor.execute(_SQLITE_INSERT, (conversation_id, *row, now))
        ids.append(int(cursor.lastrowid or 0))
    if outgoing is not None and ids:
        # In the same transaction as the messages: a stored reply is always a queued one.
        cursor.execute(_SQLITE_OUTBOX, (outgoing[0], conversation_id, ids[-1], outgoing[1], now))
    return ids


def _sqlite_create(
    db: sqlite3.Connection,
    conv: tuple[Any, ...],
    batch: tuple[int, int, int, float],
    rows: list[tuple[Any, ...]],
    now: str,
) -> list[int]:
    db.execute(_INSERT_CONVERSATION, conv)
    if rows:  # in the same transaction: a conversation is never stored without its greeting
        return _sqlite_add(db, conv[0], batch, rows, now, None) or []
    return []


def _sqlite_find_customer(db: sqlite3.Connection, email: str | None, external_id: str | None, verified: bool) -> Any:
    # By external id first (the channel's stable id), then by email; never across verified/unverified.
    if external_id:
        row = db.execute(f"SELECT {CUSTOMER_COLS} FROM customers WHERE external_id = ? AND verified = ?",
                         (external_id, verified)).fetchone()  # fmt: skip
        if row is not None:
            return row
    if email:
        return db.execute(f"SELECT {CUSTOMER_COLS} FROM customers WHERE email = ? AND verified = ?",
                          (email, verified)).fetchone()  # fmt: skip
    return None


def _sqlite_begin(
    db: sqlite3.Connection,
    conversation_id: str,
    batch: tuple[int, int, int, float],
    row: tuple[Any, ...],
    now: str,
    history: int,
    inbox_id: int | None,
    histories: _Histories | None,
) -> tuple[int, Any, Any, list[StoredMessage] | None, list[Any]] | str | None:
    # The writes go first so the transaction holds the write lock from its start (a read
    # snapshot upgraded to a write could fail with "database is locked"). The inbox row is marked in the
    # same transaction as the message: a restart finds both or neither (never stores it twice), and a
    # row another worker took already is not answered again.
    if inbox_id is not None and db.execute(_MARK_INBOX_STORED, (inbox_id,)).rowcount != 1:
        return TAKEN
    # Its RETURNING is the conversation as this turn sees it.
    conv = db.execute(_SQLITE_COUNT_RETURNING, (*batch, now, conversation_id)).fetchone()
    if conv is None:
        if inbox_id is not None:
            db.rollback()  # no conversation: the row stays as it was
        return None
    cursor = db.execute(_SQLITE_INSERT, (conversation_id, *row, now))
    message_id = int(cursor.lastrowid or 0)
    cust = db.execute(_SQLITE_CUSTOMER, (conv[1],)).fetchone()
    if histories is not None:
        histories.check(db)
        kept = histories.get(conversation_id, history)
        if kept is not None:
            return message_id, conv, cust, kept, []
    rows = db.execute(_SQLITE_HISTORY, (conversation_id, message_id, history)).fetchall()
    return message_id, conv, cust, None, rows


def _sqlite_claim(
    db: sqlite3.Connection, conversation_id: str, tool_call_ids: Sequence[str], now: str, approve: int | None
) -> set[str]:
    cursor = db.cursor()
    if approve is not None:
        cursor.execute("UPDATE messages SET status = 'ok' WHERE id = ?", (approve,))
    claimed = set()
    for call_id in tool_call_ids:
        cursor.execute(_CLAIM, (conversation_id, call_id, now))
        if cursor.rowcount == 1:
            claimed.add(call_id)
    return claimed


_CLAIM = "INSERT INTO tool_runs (conversation_id, tool_call_id, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
