"""What is particular to SQLStore, on SQLite and PostgreSQL (each test runs on both through the ``store``
fixture). The contract every store keeps is in ``test_conversations.py``, ``test_customers.py`` and
``test_tickets.py``."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from supportbot.errors import StorageError
from supportbot.messages import ToolCall
from supportbot.store import _mailbox, _tokens
from supportbot.store import sql as sql_module
from supportbot.store.base import NewMessage
from supportbot.store.models import conversation_tokens, customers, inbox
from supportbot.store.sql import SQLStore
from tests.store.conftest import new_conversation, raw_row, sqlalchemy_insert

# A Gemini-style thought signature: nested, non-ASCII, odd key order; must come back exactly.
SIGNATURE_EXTRA = {
    "extra_content": {"google": {"thought_signature": "CiQBVKhc7z+/AAEC\u00e9\U0001f600==", "z": [1, 2.5, None]}},
    "a": {"nested": [{"k": "v"}, True, False]},
}


# -- customers --------------------------------------------------------------------------------


# -- conversations ----------------------------------------------------------------------------


# -- messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\x00b", "ab"),
        ("lone \ud800 high", "lone \ufffd high"),
        ("\udc00", "\ufffd"),
        ("pair \ud83d\ude00", "pair 😀"),
    ],
)
async def test_nul_bytes_and_lone_surrogates_never_fail_a_write(store: SQLStore, text: str, expected: str) -> None:
    cid = await new_conversation(store)
    call = ToolCall(id="c", name="t", arguments=text, extra={"sig": text, text: 1})
    stored = await store.add_messages(cid, [
        NewMessage(role="user", content=text, author=text),
        NewMessage(role="assistant", tool_calls=(call,), extra={"k": [text]}),
    ])  # fmt: skip
    assert stored[0].content == expected
    user, assistant = await store.list_messages(cid)
    assert (user.content, user.author) == (expected, expected)
    assert assistant.tool_calls[0].arguments == expected
    assert assistant.tool_calls[0].extra == {"sig": expected, expected: 1}
    assert assistant.extra == {"k": [expected]}
    ticket = await store.create_ticket(subject=text, description=text, actor=text)
    assert (ticket.subject, ticket.description) == (expected, expected)
    customer = await store.get_or_create_customer(name=text, external_id=text)
    assert (customer.name, customer.external_id) == (expected, expected)
    assert await store.get_customer(customer.id) == customer


# -- locks ------------------------------------------------------------------------------------


async def test_lock_serialises_holders_of_the_same_conversation(store: SQLStore) -> None:
    order: list[str] = []
    first_in = asyncio.Event()
    second_queued = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> None:
        async with store.lock("conv-a"):
            order.append("first in")
            first_in.set()
            await release_first.wait()
            order.append("first out")

    async def second() -> None:
        await first_in.wait()
        second_queued.set()  # nothing awaits between here and queueing on the lock
        async with store.lock("conv-a"):
            order.append("second in")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await second_queued.wait()
    assert store._backend._locks._entries["conv-a"].users == 2
    assert order == ["first in"]
    release_first.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == ["first in", "first out", "second in"]
    assert len(store._backend._locks) == 0


async def test_lock_table_stays_empty_after_many_conversations(store: SQLStore) -> None:
    for i in range(200):
        async with store.lock(f"conv-{i}"):
            pass
    assert len(store._backend._locks) == 0


@pytest.mark.postgres
async def test_postgres_lock_serialises_two_workers(pg_url: str) -> None:
    worker_a = await SQLStore.open(pg_url)
    worker_b = await SQLStore.open(pg_url)
    try:
        b_inside = asyncio.Event()

        async def b_turn() -> None:
            async with worker_b.lock("shared-conv"):
                b_inside.set()

        async with worker_a.lock("shared-conv"):
            task = asyncio.create_task(b_turn())
            # Worker B keeps trying and failing while A holds the conversation (bounded wait:
            # that nothing happens has no event to wait on).
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 0.3)
            assert not b_inside.is_set()
            async with worker_b.lock("other-conv"):  # a different conversation is not blocked
                pass
        await asyncio.wait_for(task, 10)
        assert b_inside.is_set()
    finally:
        await worker_a.close()
        await worker_b.close()


@pytest.mark.postgres
async def test_one_worker_holds_many_conversations_on_one_session(pg_url: str) -> None:
    from contextlib import AsyncExitStack

    from sqlalchemy import text

    store = await SQLStore.open(pg_url)
    try:
        async with AsyncExitStack() as stack:
            await asyncio.wait_for(
                asyncio.gather(*(stack.enter_async_context(store.lock(f"conv-{i}")) for i in range(100))), 10
            )
            async with store.engine.connect() as connection:
                per_session = (await connection.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted GROUP BY pid"
                ))).scalars().all()  # fmt: skip
            # All 100 on one session (other test runs on the same database may hold locks of their own).
            assert 100 in per_session
    finally:
        await store.close()


# -- tickets ----------------------------------------------------------------------------------


# -- inbox and outbox ------------------------------------------------------------------------


async def test_inbox_stores_each_channel_message_once(store: SQLStore) -> None:
    payload = {"text": "hi", "user": "U1", "nested": [1, {"a": None}]}
    first = await store.inbox_add("slack", "Ev123", payload)
    assert isinstance(first, int)
    assert await store.inbox_add("slack", "Ev123", {"text": "retry"}) is None
    assert isinstance(await store.inbox_add("email", "Ev123", payload), int)  # another channel, another message
    pending = await store.inbox_pending("slack")
    assert [(i.id, i.external_id, i.payload, i.status) for i in pending] == [(first, "Ev123", payload, "received")]

    cid = await new_conversation(store)
    await store.inbox_set_status(first, "done", conversation_id=cid)
    assert await store.inbox_pending("slack") == []
    assert [i.channel for i in await store.inbox_pending()] == ["email"]


# The hot path writes with the drivers' own SQL; these compare its rows, as stored, with SQLAlchemy's.
AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


async def test_inbox_rows_of_the_hot_path_are_those_sqlalchemy_writes(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_mailbox, "now", lambda: AT)
    cid = await new_conversation(store)
    payload = {"text": "olá \U0001f600", "images": [], "n": [1, 2.5, None, True]}
    hot = await store.inbox_add("web", "hot", payload, conversation_id=cid)
    assert hot is not None
    await sqlalchemy_insert(store, inbox, {"channel": "web", "external_id": "orm", "conversation_id": cid,
                                            "payload": payload, "status": "received", "created_at": AT})  # fmt: skip
    rows = [await raw_row(store, inbox, "external_id", e) for e in ("hot", "orm")]
    for row in rows:
        del row["id"], row["external_id"]
    assert rows[0] == rows[1]
    # ... and reads back through SQLAlchemy as it was given
    (item,) = [i for i in await store.inbox_pending("web") if i.id == hot]
    assert (item.payload, item.conversation_id, item.created_at) == (payload, cid, AT)

    # A status change keeps the conversation unless given one.
    other = await store.inbox_add("web", "other", ["a list"])
    assert other is not None
    await store.inbox_set_status(other, "stored")
    await store.inbox_set_status(hot, "failed")
    changed = await store.inbox_pending("web", statuses=("stored", "failed"))
    assert [(i.id, i.status, i.conversation_id, i.payload) for i in changed] == [
        (hot, "failed", cid, payload),
        (other, "stored", None, ["a list"]),
    ]
    await store.inbox_set_status(other, "done", conversation_id=cid)
    assert (await raw_row(store, inbox, "id", other))["conversation_id"] == cid


async def test_customer_rows_of_the_hot_path_are_those_sqlalchemy_writes(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_module, "_now", lambda: AT.astimezone(timezone(timedelta(hours=2))))
    created = await store.get_or_create_customer(email="Zoë@Example.com", name="Zoë\x00", external_id="x1",
                                                 verified=True)  # fmt: skip
    await sqlalchemy_insert(store, customers, {"id": "orm", "email": "zoë@example.com", "name": "Zoë",
                                                "external_id": "x1", "verified": False, "created_at": AT})  # fmt: skip
    hot, orm = await raw_row(store, customers, "id", created.id), await raw_row(store, customers, "id", "orm")
    assert {k: v for k, v in hot.items() if k not in ("id", "verified")} == {
        k: v for k, v in orm.items() if k not in ("id", "verified")
    }
    assert hot["verified"] != orm["verified"] and hot["verified:type"] == orm["verified:type"]
    assert await store.get_customer(created.id) == created
    assert created.created_at == AT


async def test_conversation_tokens(store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tokens, "now", lambda: AT)
    cid = await new_conversation(store)
    await store.add_conversation_token(cid, "a" * 64)
    assert await store.conversation_for_token("a" * 64) == cid
    assert await store.conversation_for_token("b" * 64) is None
    with pytest.raises(StorageError, match="storing a conversation token"):
        await store.add_conversation_token(cid, "a" * 64)  # a hash opens one conversation only
    with pytest.raises(StorageError):
        await store.add_conversation_token("missing", "c" * 64)
    await sqlalchemy_insert(store, conversation_tokens, {"token_hash": "d" * 64, "conversation_id": cid,
                                                          "created_at": AT})  # fmt: skip
    assert await store.conversation_for_token("d" * 64) == cid
    hot, orm = (
        await raw_row(store, conversation_tokens, "token_hash", "a" * 64),
        await raw_row(store, conversation_tokens, "token_hash", "d" * 64),
    )
    del hot["token_hash"], orm["token_hash"]
    assert hot == orm


async def test_begin_turn_marks_the_inbox_row_stored_in_the_same_transaction(store: SQLStore) -> None:
    cid = await new_conversation(store)
    inbox_id = await store.inbox_add("web", "m1", {"text": "hi"}, conversation_id=cid)
    other = await store.inbox_add("web", "m2", {"text": "later"}, conversation_id=cid)
    assert inbox_id is not None and other is not None
    start = await store.begin_turn(cid, NewMessage(role="user", content="hi"), history=5, inbox_id=inbox_id)
    assert start.message.content == "hi"
    pending = await store.inbox_pending("web", statuses=("received", "stored"))
    assert [(i.id, i.status) for i in pending] == [(inbox_id, "stored"), (other, "received")]
    # No conversation, no message: the row stays as it was.
    with pytest.raises(StorageError, match="no such conversation"):
        await store.begin_turn("missing", NewMessage(role="user", content="x"), history=5, inbox_id=other)
    assert [i.id for i in await store.inbox_pending("web")] == [other]


async def test_outbox_lifecycle(store: SQLStore) -> None:
    cid = await new_conversation(store)
    (message,) = await store.add_messages(cid, [NewMessage(role="assistant", content="Your parcel ships today.")])
    first = await store.outbox_add(
        "email", {"to": "ana@example.com", "text": message.content}, conversation_id=cid, message_id=message.id
    )
    second = await store.outbox_add("email", {"to": "ben@example.com"})
    await store.outbox_add("slack", {"channel": "C1"})

    pending = await store.outbox_pending("email")
    assert [(o.id, o.status, o.attempts, o.message_id) for o in pending] == [
        (first, "pending", 0, message.id),
        (second, "pending", 0, None),
    ]
    assert pending[0].payload == {"to": "ana@example.com", "text": "Your parcel ships today."}

    assert await store.outbox_attempt(first) == 1
    await store.outbox_mark_failed(first, error="421 try again later")
    assert await store.outbox_attempt(first) == 2
    assert await store.outbox_mark_sent(first, external_id="<m1@acme.example>") is True
    assert await store.outbox_mark_sent(first, external_id="<m1@acme.example>") is False  # exactly once
    await store.outbox_mark_failed(second, error="550 no such user", give_up=True)
    assert await store.outbox_pending("email") == []
    assert len(await store.outbox_pending("slack", limit=5)) == 1
    sent, given_up = await store.outbox_get(first), await store.outbox_get(second)
    assert sent is not None and (sent.status, sent.attempts, sent.last_error) == ("sent", 2, "421 try again later")
    assert given_up is not None and (given_up.status, given_up.attempts) == ("failed", 0)
    assert await store.outbox_failed() == [given_up]
    with pytest.raises(StorageError, match="not pending"):
        await store.outbox_mark_failed(first, error="late")


# -- connection handling ------------------------------------------------------------------------


async def test_in_memory_sqlite_serves_concurrent_callers() -> None:
    store = await SQLStore.open("sqlite+aiosqlite:///:memory:")
    try:
        cid = await new_conversation(store)
        await asyncio.gather(*(store.add_messages(cid, [NewMessage(role="user", content=str(i))]) for i in range(20)))
        assert len(await store.list_messages(cid)) == 20
        assert store.dialect == "sqlite"
    finally:
        await store.close()


async def test_unreachable_postgres_is_a_storage_error_without_the_password() -> None:
    with pytest.raises(StorageError) as caught:
        await SQLStore.open("postgresql+asyncpg://bot:s3cret@127.0.0.1:1/supportbot")
    message = str(caught.value)
    assert "s3cret" not in message
    assert "127.0.0.1:1" in message and "PostgreSQL is running" in message


async def test_unwritable_sqlite_path_is_a_storage_error(tmp_path: object) -> None:
    with pytest.raises(StorageError, match="directory exists"):
        await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/x.db")
    # aiosqlite stops a connection that failed to open without awaiting it; wait for its thread to
    # end so it does not report to this test's event loop after the loop has closed.
    workers = [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]
    await asyncio.to_thread(lambda: [t.join(10) for t in workers])
    await asyncio.sleep(0)


async def test_unsupported_url_is_refused() -> None:
    with pytest.raises(StorageError, match="does not support"):
        await SQLStore.open("mysql://u:pw@127.0.0.1/db")


async def test_url_and_dialect(store: SQLStore, db_url: str) -> None:
    assert store.dialect in ("sqlite", "postgresql")
    assert store.url.split("?")[0] == db_url.split("?")[0]


async def test_rows_of_the_fast_path_read_back_through_sqlalchemy(store: SQLStore) -> None:
    from sqlalchemy import select

    from supportbot.store.models import conversations, messages

    cid = await new_conversation(store)
    call = ToolCall(id="c1", name="t", arguments="{}", extra=SIGNATURE_EXTRA)
    (stored,) = await store.add_messages(cid, [NewMessage(role="assistant", tool_calls=(call,), cost_usd=0.5)])
    async with store.engine.connect() as connection:
        row = (await connection.execute(select(messages).where(messages.c.id == stored.id))).one()
        conv = (await connection.execute(select(conversations).where(conversations.c.id == cid))).one()
    assert row.created_at == stored.created_at
    assert row.tool_calls == [{"id": "c1", "name": "t", "arguments": "{}", "extra": SIGNATURE_EXTRA}]
    assert conv.updated_at == stored.created_at and conv.cost_usd == 0.5
