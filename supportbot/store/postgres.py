"""The PostgreSQL backend: every statement the store runs on asyncpg itself, one round trip each.

Each operation is one statement in autocommit mode: asyncpg pays a round trip each for BEGIN,
every statement and COMMIT, so ``add_messages`` is a single ``WITH … UPDATE … INSERT … SELECT FROM
unnest(…)`` statement, atomic by itself (with an outbox row to queue, the messages' INSERT becomes a
CTE and the outbox INSERT follows it, still one statement). What is not per message (tickets,
review, leases) stays on SQLAlchemy Core in the store's mixins; this module also owns PostgreSQL's
part of those (``Dialect``).

Connections come from the store's SQLAlchemy pool (so the codecs and ``search_path`` are the same).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Date, Select, cast, func, literal_column
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

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
    OUTBOX_SENT,
    SET_ADDRESS,
    SET_INBOX_STATUS,
    TAKEN,
    TOKEN_CONVERSATION,
    Started,
    conversation,
    customer,
    message,
    message_values,
    numbered,
    stored,
    totals,
)
from supportbot.store._engine import make_engine
from supportbot.store._locks import KeyedLocks, SharedAdvisoryLocks
from supportbot.store.base import Conversation, ConversationStatus, Customer, NewMessage, Outgoing, StoredMessage
from supportbot.store.mailboxes import ConversationAddress
from supportbot.store.models import json_dumps

__all__ = ["PostgresBackend"]


_PG_CONV = """
WITH conv AS (
    UPDATE conversations SET turns = turns + $2, input_tokens = input_tokens + $3,
        output_tokens = output_tokens + $4, cost_usd = cost_usd + $5, updated_at = $6
    WHERE id = $1 RETURNING id
)"""
_PG_INSERT_MESSAGES = f"""
INSERT INTO messages ({INSERT_COLS})
SELECT conv.id, v.role, v.content, v.images::json, v.tool_calls::json, v.tool_call_id, v.tool_name, v.extra::json,
       v.kind, v.status, v.flow, v.model, v.input_tokens, v.output_tokens, v.audio_input_tokens, v.reasoning_tokens,
       v.cost_usd, v.latency_ms, v.author, $6
FROM conv, unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                  $14::text[], $15::text[], $16::text[], $17::text[], $18::int[], $19::int[], $20::int[], $21::int[],
                  $22::float8[], $23::float8[], $24::text[])
     WITH ORDINALITY AS v(role, content, images, tool_calls, tool_call_id, tool_name, extra, kind, status, flow, model,
                          input_tokens, output_tokens, audio_input_tokens, reasoning_tokens, cost_usd, latency_ms,
                          author, ord)
ORDER BY v.ord
RETURNING id
"""
_PG_ADD = _PG_CONV + _PG_INSERT_MESSAGES
# begin_turn's: also marks the message's inbox row stored, in the same statement (so the same transaction),
# and stores nothing when the row was taken by another worker already (no longer 'received').
_PG_ADD_MARKING = (
    "WITH marked AS (UPDATE inbox SET status = 'stored' WHERE id = $25 AND status = 'received' AND EXISTS ("
    "SELECT FROM conversations WHERE id = $1) RETURNING id),"
    + _PG_CONV.replace("WITH conv AS (", " conv AS (", 1).replace(
        "WHERE id = $1 RETURNING id", "WHERE id = $1 AND EXISTS (SELECT FROM marked) RETURNING id", 1
    )
    + _PG_INSERT_MESSAGES
)
# With a reply to queue: the outbox row names the last message (ids are drawn in batch order), and
# is written only when the messages were (no conversation, no messages, no row).
_PG_ADD_QUEUEING = f"""{_PG_CONV}, added AS ({_PG_INSERT_MESSAGES}), queued AS (
    INSERT INTO outbox (channel, conversation_id, message_id, payload, status, attempts, created_at)
    SELECT $25, $1, max(id), $26::text::json, 'pending', 0, $6 FROM added HAVING count(*) > 0
)
SELECT id FROM added
"""
# A new conversation with its first messages (a greeting), in one statement.
_PG_CREATE_WITH_MESSAGES = (
    """
WITH conv AS (
    INSERT INTO conversations (id, customer_id, channel, flow, status, turns, input_tokens, output_tokens, cost_usd,
                               created_at, updated_at)
    VALUES ($1, $25, $26, $27, $28, $2, $3, $4, $5, $6, $6) RETURNING id
)"""
    + _PG_INSERT_MESSAGES
)


HOT_CONNECTIONS = 4
"""PostgreSQL connections kept for the hot path (each call holds one for a single round trip)."""


class PostgresBackend:
    """Each method takes the asyncpg connection and makes one round trip (autocommit)."""

    name = "postgresql"
    hot_connections = HOT_CONNECTIONS
    discard_broken = True
    """A failed asyncpg connection may be dead (the server restarted): it is closed, not reused."""
    insert = staticmethod(postgresql_insert)
    """SQLAlchemy's ``INSERT … ON CONFLICT`` construct, for the mixins' statements."""

    def __init__(self, url: URL) -> None:
        self._url = url
        self._locks = KeyedLocks()
        self._advisory: SharedAdvisoryLocks | None = None

    async def close(self) -> None:
        if self._advisory is not None:
            await self._advisory.close()
            self._advisory = None

    # -- PostgreSQL's part of the mixins' SQLAlchemy transactions ---------------------------------

    async def begin_write(self, connection: AsyncConnection) -> None:
        """Nothing: row locks (``hold_row``, ``for_update``) order PostgreSQL's writers."""

    async def hold_row(self, connection: AsyncConnection, query: Select[Any]) -> None:
        """Lock the rows of ``query`` (``FOR KEY SHARE``) until the transaction ends.

        Every capped insert for one customer (or conversation) then queues here until the one before
        commits, so the count that follows (a new snapshot under READ COMMITTED) sees its ticket.
        """
        await connection.execute(query.with_for_update(key_share=True))

    def for_update(self, query: Select[Any]) -> Select[Any]:
        """``query`` locking its rows until the transaction ends."""
        return query.with_for_update()

    def day(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        """The UTC day of a ``UTCDateTime`` column as a ``date``."""
        # A literal, not a parameter: PostgreSQL matches GROUP BY to the selected expression textually.
        return cast(func.timezone(literal_column("'UTC'"), column), Date)

    def lock(self, conversation_id: str) -> AbstractAsyncContextManager[None]:
        """One turn at a time per conversation, across workers.

        In-process waiters queue on an asyncio lock first (in arrival order); the holder then takes an
        advisory lock, which serialises turns across workers too. All of a worker's advisory locks live
        on one session of their own (``SharedAdvisoryLocks``), so any number of turns can run at once
        without holding a connection each.
        """
        return self._lock_across_workers(conversation_id)

    @asynccontextmanager
    async def _lock_across_workers(self, conversation_id: str) -> AsyncIterator[None]:
        async with self._locks.hold(conversation_id):
            if self._advisory is None:
                self._advisory = SharedAdvisoryLocks(make_engine(self._url, pool_size=1, max_overflow=0))
            async with self._advisory.hold(conversation_id):
                yield

    # -- the hot path ------------------------------------------------------------------------------

    async def get_customer(self, driver: Any, customer_id: str) -> Customer | None:
        row = await driver.fetchrow(f"SELECT {CUSTOMER_COLS} FROM customers WHERE id = $1", customer_id)
        return None if row is None else customer(row)

    async def get_conversation(self, driver: Any, conversation_id: str) -> Conversation | None:
        row = await driver.fetchrow(f"SELECT {CONV_COLS} FROM conversations WHERE id = $1", conversation_id)
        return None if row is None else conversation(row)

    async def update_conversation(
        self,
        driver: Any,
        conversation_id: str,
        flow: str | None,
        status: ConversationStatus | None,
        turns: int,
        now: datetime,
    ) -> Conversation | None:
        row = await driver.fetchrow(
            "UPDATE conversations SET flow = coalesce($1, flow), status = coalesce($2, status), turns = turns + $3, "
            f"updated_at = $4 WHERE id = $5 RETURNING {CONV_COLS}",
            flow, status, turns, now, conversation_id,
        )  # fmt: skip
        return None if row is None else conversation(row)

    async def list_messages(self, driver: Any, conversation_id: str, last: int | None) -> list[StoredMessage]:
        if last is None:
            rows = await driver.fetch(f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = $1 ORDER BY id",
                                      conversation_id)  # fmt: skip
        else:
            rows = await driver.fetch(
                f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = $1 ORDER BY id DESC LIMIT $2",
                conversation_id, last,
            )  # fmt: skip
            rows.reverse()
        return [message(row) for row in rows]

    async def add_messages(
        self,
        driver: Any,
        conversation_id: str,
        messages: Sequence[NewMessage],
        now: datetime,
        outgoing: Outgoing | None = None,
        *,
        inbox_id: int | None = None,
    ) -> list[StoredMessage] | None:
        """Insert, add to the totals, queue ``outgoing``, in one statement; None without the conversation."""
        columns = list(zip(*(message_values(m) for m in messages), strict=True))
        if outgoing is not None:
            rows = await driver.fetch(_PG_ADD_QUEUEING, conversation_id, *totals(messages), now, *columns,
                                      outgoing.channel, json_dumps(outgoing.payload))  # fmt: skip
        elif inbox_id is None:
            rows = await driver.fetch(_PG_ADD, conversation_id, *totals(messages), now, *columns)
        else:
            rows = await driver.fetch(_PG_ADD_MARKING, conversation_id, *totals(messages), now, *columns, inbox_id)
        if not rows:
            return None
        ids = sorted(row[0] for row in rows)  # ids are drawn in insertion (= batch) order
        return [stored(m, mid, conversation_id, now) for mid, m in zip(ids, messages, strict=True)]

    async def find_customer(
        self, driver: Any, email: str | None, external_id: str | None, verified: bool
    ) -> Customer | None:
        row = None
        if external_id:
            row = await driver.fetchrow(
                f"SELECT {CUSTOMER_COLS} FROM customers WHERE external_id = $1 AND verified = $2", external_id, verified
            )
        if row is None and email:
            row = await driver.fetchrow(
                f"SELECT {CUSTOMER_COLS} FROM customers WHERE email = $1 AND verified = $2", email, verified
            )
        return None if row is None else customer(row)

    async def create_conversation(self, driver: Any, conv: Conversation, messages: Sequence[NewMessage] = ()) -> None:
        """Insert a new conversation and its first ``messages``; a missing customer raises a foreign-key error."""
        now = conv.created_at or datetime.now(UTC)
        if messages:
            columns = list(zip(*(message_values(m) for m in messages), strict=True))
            await driver.fetch(_PG_CREATE_WITH_MESSAGES, conv.id, *totals(messages), now, *columns,
                               conv.customer_id, conv.channel, conv.flow, conv.status)  # fmt: skip
            return
        await driver.execute(
            "INSERT INTO conversations (id, customer_id, channel, flow, status, turns, input_tokens, output_tokens, "
            "cost_usd, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 0, 0, 0, 0.0, $6, $6)",
            conv.id, conv.customer_id, conv.channel, conv.flow, conv.status, now,
        )  # fmt: skip

    async def begin_turn(
        self,
        driver: Any,
        conversation_id: str,
        new: NewMessage,
        history: int,
        now: datetime,
        inbox_id: int | None = None,
    ) -> Started | str | None:
        """Store the message and mark its inbox row (one statement), then read the conversation, customer, history.

        ``TAKEN`` when the inbox row was taken by another worker already; None without the conversation.
        """
        saved = await self.add_messages(driver, conversation_id, (new,), now, inbox_id=inbox_id)
        if saved is None:
            if inbox_id is None:
                return None
            status = await driver.fetchval("SELECT status FROM inbox WHERE id = $1", inbox_id)
            return TAKEN if status not in (None, "received") else None
        conv = await self.get_conversation(driver, conversation_id)
        assert conv is not None  # it was just updated, and conversations are never deleted
        cust = await self.get_customer(driver, conv.customer_id)
        assert cust is not None  # a foreign key guarantees it
        rows = await driver.fetch(
            f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            conversation_id, saved[0].id, history,
        )  # fmt: skip
        rows.reverse()
        return saved[0], conv, cust, [message(row) for row in rows]

    async def claim_tool_runs(
        self, driver: Any, conversation_id: str, tool_call_ids: Sequence[str], now: datetime, approve: int | None
    ) -> set[str]:
        """Claim the runs of ``tool_call_ids`` (and mark the message ``approve`` ``ok``), in one statement; the ids
        claimed now."""
        rows = await driver.fetch(_PG_CLAIM, conversation_id, list(tool_call_ids), now, approve)
        return {row[0] for row in rows}

    async def create_customer(self, driver: Any, new: Customer) -> None:
        """Insert a customer (fields already cleaned); a taken email or external id raises a unique violation."""
        await driver.execute(
            _PG_INSERT_CUSTOMER,
            new.id, new.email, new.external_id, new.name, new.verified, new.created_at or datetime.now(UTC),
        )  # fmt: skip

    async def inbox_add(
        self, driver: Any, channel: str, external_id: str, payload: str | None, conversation_id: str | None,
        now: datetime, lane: str | None = None,
    ) -> int | None:  # fmt: skip
        """Insert an inbox row (``payload`` JSON-encoded); None when the channel's message is stored already."""
        inbox_id = await driver.fetchval(_PG_INSERT_INBOX, channel, external_id, conversation_id, payload, now, lane)
        return None if inbox_id is None else int(inbox_id)

    async def inbox_set_status(self, driver: Any, inbox_id: int, status: str, conversation_id: str | None) -> None:
        await driver.execute(_PG_SET_INBOX_STATUS, status, conversation_id, inbox_id)

    async def add_conversation_token(self, driver: Any, conversation_id: str, token_hash: str, now: datetime) -> None:
        await driver.execute(_PG_INSERT_TOKEN, token_hash, conversation_id, now)

    async def conversation_for_token(self, driver: Any, token_hash: str) -> str | None:
        found = await driver.fetchval(_PG_TOKEN_CONVERSATION, token_hash)
        return None if found is None else str(found)

    async def outbox_attempt(
        self, driver: Any, outbox_id: int, owner: str, lease_s: float, now: datetime
    ) -> int | None:
        """Lease the row by the database's clock (``now`` is unused): workers whose clocks disagree still agree."""
        del now
        attempts = await driver.fetchval(_PG_OUTBOX_ATTEMPT, owner, lease_s, outbox_id)
        return None if attempts is None else int(attempts)

    async def outbox_mark_sent(self, driver: Any, outbox_id: int, external_id: str | None, now: datetime) -> bool:
        return bool(await driver.execute(_PG_OUTBOX_SENT, external_id, now, outbox_id) == "UPDATE 1")

    async def set_conversation_address(
        self, driver: Any, conversation_id: str, channel: str, key: str | None, address: str, now: datetime
    ) -> None:
        """Bind the conversation to its key and address (``address`` JSON-encoded); a missing one raises a violation."""
        await driver.execute(_PG_SET_ADDRESS, conversation_id, channel, key, address, now)

    async def conversation_for_key(self, driver: Any, channel: str, key: str) -> str | None:
        found = await driver.fetchval(_PG_CONVERSATION_FOR_KEY, channel, key)
        return None if found is None else str(found)

    async def conversation_address(self, driver: Any, conversation_id: str) -> ConversationAddress | None:
        row = await driver.fetchrow(_PG_ADDRESS, conversation_id)
        if row is None:
            return None
        return ConversationAddress(conversation_id=row[0], channel=row[1], key=row[2], address=row[3] or {})


# The approval is a CTE of the same statement, so it happens with the claims or not at all.
_PG_CLAIM = """
WITH approved AS (UPDATE messages SET status = 'ok' WHERE id = $4::bigint)
INSERT INTO tool_runs (conversation_id, tool_call_id, created_at)
SELECT $1, call_id, $3 FROM unnest($2::text[]) AS call_id
ON CONFLICT DO NOTHING
RETURNING tool_call_id
"""
# OUTBOX_ATTEMPT with the database's clock for the lease's end and for the check that it is free.
_PG_OUTBOX_ATTEMPT = """
UPDATE outbox SET attempts = attempts + 1, lease_owner = $1,
    lease_until = statement_timestamp() + make_interval(secs => $2::float8)
WHERE id = $3 AND status = 'pending' AND (lease_until IS NULL OR lease_until <= statement_timestamp())
RETURNING attempts
"""
_PG_OUTBOX_SENT = numbered(OUTBOX_SENT)
_PG_SET_ADDRESS = numbered(SET_ADDRESS)
_PG_CONVERSATION_FOR_KEY = numbered(CONVERSATION_FOR_KEY)
_PG_ADDRESS = numbered(ADDRESS)
_PG_INSERT_CUSTOMER = numbered(INSERT_CUSTOMER)
_PG_INSERT_INBOX = numbered(INSERT_INBOX)
_PG_SET_INBOX_STATUS = numbered(SET_INBOX_STATUS)
_PG_INSERT_TOKEN = numbered(INSERT_TOKEN)
_PG_TOKEN_CONVERSATION = numbered(TOKEN_CONVERSATION)
