"""``SQLStore``: the store's protocols on SQLite or PostgreSQL.

Every turn reads its conversation and history and stores its messages, so those calls
(``begin_turn``, ``get_conversation``, ``get_customer``, ``list_messages``, ``add_messages``,
``update_conversation``, ``claim_tool_run``) run on the drivers directly, inline on SQLite or one
round trip on PostgreSQL, through the dialect's backend (``sqlite.py``, ``postgres.py``, each owning
its SQL); so do the channels' per-message and per-connection calls
(``inbox_add``, ``inbox_set_status``, ``conversation_for_token``, ``conversation_for_key``,
``set_conversation_address``, ``conversation_address``, ``outbox_attempt``, ``outbox_mark_sent``)
and what opening a conversation writes (the customer, the conversation, its greeting and token).
``add_messages(outgoing=…)`` queues its outbox row in the messages' own transaction (still one
statement on PostgreSQL). On SQLite a
SQLAlchemy write holds the database's one write lock across several event-loop rounds, so hot
calls that meet it must wait: the fewer of those on a busy path, the better. Everything else uses
prebuilt SQLAlchemy Core statements on short transactions. Text is cleaned on the way in (see ``models.clean_text``).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from supportbot.errors import StorageError, TurnTaken
from supportbot.store._common import conversation as _conversation
from supportbot.store._common import customer as _customer
from supportbot.store._common import totals
from supportbot.store._engine import make_engine, masked, parse_url
from supportbot.store._leases import LeaseMixin
from supportbot.store._mailbox import MailboxMixin
from supportbot.store._review import ReviewMixin
from supportbot.store._spending import SpendingMixin
from supportbot.store._sqlbase import now as _now
from supportbot.store._tickets import TicketMixin
from supportbot.store._tokens import TokenMixin
from supportbot.store.base import (
    Conversation,
    ConversationStatus,
    Customer,
    MessageStatus,
    NewMessage,
    Outgoing,
    StoredMessage,
    TurnStart,
)
from supportbot.store.migrate import check_schema
from supportbot.store.models import clean_text
from supportbot.store.models import conversations as _co
from supportbot.store.models import customers as _cu
from supportbot.store.models import messages as _m
from supportbot.store.models import orders as _o

__all__ = ["SQLStore"]

# -- prebuilt statements (compiled once per engine, then served from SQLAlchemy's cache) ---------

_CUSTOMER_COLS = (_cu.c.id, _cu.c.email, _cu.c.name, _cu.c.external_id, _cu.c.verified, _cu.c.created_at)
_CUSTOMER_BY_ID = select(*_CUSTOMER_COLS).where(_cu.c.id == bindparam("id"))
_CUSTOMER_FILL = (
    update(_cu)
    .where(_cu.c.id == bindparam("cid"))
    .values(
        email=func.coalesce(_cu.c.email, bindparam("new_email", type_=_cu.c.email.type)),
        external_id=func.coalesce(_cu.c.external_id, bindparam("new_external_id", type_=_cu.c.external_id.type)),
        name=func.coalesce(_cu.c.name, bindparam("new_name", type_=_cu.c.name.type)),
    )
)
_CUSTOMER_PROVE_EMAIL = (
    update(_cu)
    .where(_cu.c.id == bindparam("cid"))
    .values(
        email=bindparam("new_email", type_=_cu.c.email.type),
        name=func.coalesce(_cu.c.name, bindparam("new_name", type_=_cu.c.name.type)),
    )
)

_CONV_COLS = (
    _co.c.id, _co.c.customer_id, _co.c.channel, _co.c.flow, _co.c.status, _co.c.turns, _co.c.input_tokens,
    _co.c.output_tokens, _co.c.cost_usd, _co.c.created_at, _co.c.updated_at,
)  # fmt: skip
_MSG_SET_STATUS = update(_m).where(_m.c.id == bindparam("mid")).values(status=bindparam("new_status"))
_ORDER_BY_ID = select(_o).where(_o.c.order_id == bindparam("order_id"))


def _clean(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


def _is_integrity_error(exc: BaseException | None) -> bool:
    """A constraint refused the write (SQLite's IntegrityError, asyncpg's integrity violations)."""
    return isinstance(exc, IntegrityError | sqlite3.IntegrityError) or type(exc).__name__.endswith("ViolationError")


class SQLStore(TicketMixin, MailboxMixin, LeaseMixin, TokenMixin, ReviewMixin, SpendingMixin):
    """Persistence on SQLite (one process) or PostgreSQL (any number of workers).

    Create with ``await SQLStore.open(url)`` and ``await store.close()`` when done. All methods
    raise ``StorageError`` when the database cannot be reached or refuses an operation.
    """

    def __init__(self, engine: AsyncEngine, url: URL) -> None:
        """Wrap an engine made by ``make_engine``; use ``SQLStore.open`` instead."""
        super().__init__(engine, url)

    @classmethod
    async def open(
        cls, url: str, *, create: bool = True, echo: bool = False, pool_size: int = 5, max_overflow: int = 5
    ) -> SQLStore:
        """Connect to the database at ``url``, creating the schema when the database is new.

        Args:
            url: ``sqlite+aiosqlite:///path.db`` (relative paths as given) or
                ``postgresql+asyncpg://user:password@host/db``.
            create: create the schema in a database that has none; when false such a database
                is refused.
            echo: log every SQL statement.
            pool_size, max_overflow: PostgreSQL connections kept, and opened on top at busy times, for all but
                the per-message path (which keeps 4 of its own).

        Raises:
            StorageError: the database is unreachable, or its schema is behind or unknown (the
                message says to run ``supportbot db upgrade``).
        """
        parsed = parse_url(url)
        engine = make_engine(parsed, echo=echo, pool_size=pool_size, max_overflow=max_overflow)
        try:
            await check_schema(engine, create=create)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, parsed)

    async def close(self) -> None:
        """Close every connection. The store cannot be used afterwards."""
        await self._backend.close()
        await self._hot_pool.close()
        await self._engine.dispose()
        await self.close_renewals()

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return masked(self._url)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine, for components that keep their own tables in the same database (orders)."""
        return self._engine

    # -- customers -------------------------------------------------------------------------------

    async def get_or_create_customer(
        self,
        *,
        email: str | None = None,
        external_id: str | None = None,
        name: str | None = None,
        verified: bool = False,
    ) -> Customer:
        """Find a customer by ``external_id``, then by email (case-insensitive), or create one.

        Verified and unverified identities are kept apart: an unverified call never returns (and
        so never unlocks) the record of a customer whose identity a channel proved, and a proven
        identity never inherits a record someone merely claimed. Missing fields of a found record
        (email, external id, name) are filled in. A verified call's email is what the channel
        proved now: it replaces an older one on the record found by external id, or, when another
        verified record holds it, that record is the customer (and the older email leaves the first).
        """
        if email:
            email = clean_text(email).strip().lower() or None
        external_id, name = _clean(external_id), _clean(name)
        for attempt in range(2):
            found = await self._find_customer(email, external_id, verified)
            if found is not None:
                if verified and email and found.email != email:
                    return await self._prove_email(found, email, name)
                if (email and not found.email) or (external_id and not found.external_id) or (name and not found.name):
                    return await self._fill_customer(found, email, external_id, name)
                return found
            customer = Customer(id=uuid.uuid4().hex, email=email, external_id=external_id, name=name,
                                verified=verified, created_at=_now())  # fmt: skip
            try:
                async with self._driver("creating a customer") as driver:
                    await self._backend.create_customer(driver, customer)
                return customer
            except StorageError as exc:
                # Another request created the same customer a moment ago: find that one.
                if attempt or not _is_integrity_error(exc.__cause__):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _find_customer(self, email: str | None, external_id: str | None, verified: bool) -> Customer | None:
        async with self._driver("looking up a customer") as driver:
            return await self._backend.find_customer(driver, email, external_id, verified)

    async def _fill_customer(
        self, found: Customer, email: str | None, external_id: str | None, name: str | None
    ) -> Customer:
        try:
            async with self._begin("updating a customer") as connection:
                await connection.execute(
                    _CUSTOMER_FILL,
                    {"cid": found.id, "new_email": email, "new_external_id": external_id, "new_name": name},
                )
                row = (await connection.execute(_CUSTOMER_BY_ID, {"id": found.id})).one()
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return found  # the email or external id belongs to another record: keep this one as it is
            raise
        return _customer(row)

    async def _prove_email(self, found: Customer, email: str, name: str | None) -> Customer:
        """The channel proved ``email`` for ``found``'s external id: never keep serving a stale email."""
        try:
            async with self._begin("updating a customer's email") as connection:
                await connection.execute(_CUSTOMER_PROVE_EMAIL, {"cid": found.id, "new_email": email, "new_name": name})
                row = (await connection.execute(_CUSTOMER_BY_ID, {"id": found.id})).one()
            return _customer(row)
        except StorageError as exc:
            if not _is_integrity_error(exc.__cause__):
                raise
        # Another verified record holds the proven email: its owner is who this is, and the old
        # email, no longer proven for this external id, leaves its record.
        async with self._begin("updating a customer's email") as connection:
            await connection.execute(_CUSTOMER_PROVE_EMAIL, {"cid": found.id, "new_email": None, "new_name": name})
        owner = await self._find_customer(email, None, True)
        if owner is None:  # pragma: no cover - customers are never deleted
            raise StorageError(f"the customer with the email {email!r} vanished while it was being looked up")
        return owner

    async def get_customer(self, customer_id: str) -> Customer | None:
        """The customer with this id, or None."""
        async with self._driver("reading a customer") as driver:
            return await self._backend.get_customer(driver, customer_id)

    # -- conversations ---------------------------------------------------------------------------

    async def create_conversation(
        self,
        *,
        customer_id: str,
        channel: str,
        flow: str,
        conversation_id: str | None = None,
        messages: Sequence[NewMessage] = (),
    ) -> Conversation:
        """Open a conversation and store ``messages`` (its greeting) in the same transaction."""
        now = _now()
        turns, input_tokens, output_tokens, cost = totals(messages)
        conversation = Conversation(
            id=conversation_id or uuid.uuid4().hex, customer_id=customer_id, channel=channel, flow=flow,
            turns=turns, input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost,
            created_at=now, updated_at=now,
        )  # fmt: skip
        try:
            async with self._driver("creating a conversation") as driver:
                await self._backend.create_conversation(driver, conversation, messages)
        except StorageError as exc:
            if _is_integrity_error(exc.__cause__):
                raise StorageError(
                    f"cannot create a conversation for customer {customer_id!r}: no such customer; "
                    "create it with get_or_create_customer first"
                ) from exc
            raise
        return conversation

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        """The conversation with this id, or None."""
        async with self._driver("reading a conversation") as driver:
            return await self._backend.get_conversation(driver, conversation_id)

    async def update_conversation(
        self,
        conversation_id: str,
        *,
        flow: str | None = None,
        status: ConversationStatus | None = None,
        count_turn: bool = False,
    ) -> Conversation:
        """Change the flow and/or status (None keeps them), count a turn if asked, and bump ``updated_at``."""
        async with self._driver("updating a conversation") as driver:
            updated = await self._backend.update_conversation(
                driver, conversation_id, flow, status, int(count_turn), _now()
            )
        if updated is None:
            raise StorageError(f"no conversation {conversation_id!r} to update; create it with create_conversation")
        return updated

    async def list_conversations(self, *, customer_id: str | None = None, limit: int = 50) -> list[Conversation]:
        query = select(*_CONV_COLS).order_by(_co.c.updated_at.desc(), _co.c.id).limit(limit)
        if customer_id is not None:
            query = query.where(_co.c.customer_id == customer_id)
        async with self._begin("listing conversations") as connection:
            rows = (await connection.execute(query)).all()
        return [_conversation(row) for row in rows]

    # -- messages --------------------------------------------------------------------------------

    async def add_messages(
        self, conversation_id: str, messages: Sequence[NewMessage], *, outgoing: Outgoing | None = None
    ) -> list[StoredMessage]:
        """Store messages and, in the same transaction, add their tokens and cost to the conversation.

        Each user message counts as a turn. Text is cleaned (see ``models.clean_text``), and the
        returned records carry the text as stored. With ``outgoing``, the same transaction queues a
        pending outbox row for the last of ``messages`` (see ``outbox_pending``).

        Raises:
            StorageError: the conversation does not exist, or the database refused the write
                (then nothing was stored, and nothing queued).
            ValueError: ``outgoing`` without messages (it names the last of them).
        """
        if not messages:
            if outgoing is not None:
                raise ValueError("add_messages: outgoing names the last of the messages, but there are none")
            return []
        now = _now()
        async with self._driver("storing messages") as driver:
            saved = await self._backend.add_messages(driver, conversation_id, messages, now, outgoing)
        if saved is None:
            raise StorageError(f"cannot store messages in conversation {conversation_id!r}: no such conversation")
        return saved

    async def begin_turn(
        self, conversation_id: str, message: NewMessage, *, history: int, inbox_id: int | None = None
    ) -> TurnStart:
        """Store the customer's message and read the conversation, customer and history, in one call.

        With ``inbox_id``, that inbox row's status becomes ``stored`` in the same transaction, if it was
        ``received``.

        Raises:
            TurnTaken: the inbox row is no longer ``received`` (another worker took the turn); nothing is stored.
            StorageError: the conversation does not exist, or the database refused the write.
        """
        now = _now()
        async with self._driver("starting a turn") as driver:
            found = await self._backend.begin_turn(driver, conversation_id, message, history, now, inbox_id)
        if isinstance(found, str):  # TAKEN
            raise TurnTaken(f"inbox row {inbox_id} was taken by another worker; this one answers nothing")
        if found is None:
            raise StorageError(f"cannot store a message in conversation {conversation_id!r}: no such conversation")
        saved, conversation, customer, messages = found
        return TurnStart(conversation=conversation, customer=customer, history=messages, message=saved)

    async def list_messages(self, conversation_id: str, *, last: int | None = None) -> list[StoredMessage]:
        """The conversation's messages in the order they were stored; with ``last``, only the newest ``last``."""
        if last is not None and last <= 0:
            return []
        async with self._driver("reading messages") as driver:
            return await self._backend.list_messages(driver, conversation_id, last)

    async def set_message_status(self, message_id: int, status: MessageStatus) -> None:
        async with self._begin("updating a message") as connection:
            await connection.execute(_MSG_SET_STATUS, {"mid": message_id, "new_status": status})

    async def claim_tool_run(self, conversation_id: str, tool_call_id: str) -> bool:
        """Record that a tool call is about to run; False if it was claimed before (never run it twice)."""
        async with self._driver("claiming a tool run") as driver:
            return bool(await self._backend.claim_tool_runs(driver, conversation_id, (tool_call_id,), _now(), None))

    async def approve_tool_calls(self, message_id: int, conversation_id: str, tool_call_ids: Sequence[str]) -> set[str]:
        """Mark the pending tool-call message ``ok`` and claim its calls, in one transaction; the ids claimed now."""
        calls = list(dict.fromkeys(tool_call_ids))
        async with self._driver("approving tool calls") as driver:
            return await self._backend.claim_tool_runs(driver, conversation_id, calls, _now(), message_id)

    def lock(self, conversation_id: str) -> AbstractAsyncContextManager[None]:
        """Hold while a turn runs: one turn at a time per conversation (across workers on PostgreSQL)."""
        return self._backend.lock(conversation_id)

    # -- orders ----------------------------------------------------------------------------------

    async def get_order(self, order_id: str) -> dict[str, Any] | None:
        """An order of the built-in ``orders`` table as a dict of its columns, or None."""
        async with self._begin("reading an order") as connection:
            row = (await connection.execute(_ORDER_BY_ID, {"order_id": order_id})).first()
        return None if row is None else dict(row._mapping)
