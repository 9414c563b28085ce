"""SQLStore on SQLite and PostgreSQL (each test runs on both through the ``store`` fixture)."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from supportbot.errors import StorageError
from supportbot.messages import ImagePart, ToolCall, Usage
from supportbot.store import _mailbox, _tokens
from supportbot.store import sql as sql_module
from supportbot.store.base import NewMessage
from supportbot.store.models import conversation_tokens, customers, inbox
from supportbot.store.sql import SQLStore
from tests.store.conftest import raw_row, sqlalchemy_insert

# A Gemini-style thought signature: nested, non-ASCII, odd key order; must come back exactly.
SIGNATURE_EXTRA = {
    "extra_content": {"google": {"thought_signature": "CiQBVKhc7z+/AAEC\u00e9\U0001f600==", "z": [1, 2.5, None]}},
    "a": {"nested": [{"k": "v"}, True, False]},
}


async def _conversation(store: SQLStore, email: str = "ana@example.com") -> str:
    customer = await store.get_or_create_customer(email=email, verified=True)
    return (await store.create_conversation(customer_id=customer.id, channel="web", flow="general")).id


# -- customers --------------------------------------------------------------------------------


async def test_customer_is_found_by_email_case_insensitively(store: SQLStore) -> None:
    first = await store.get_or_create_customer(email="Ana@Example.COM", name="Ana Lima", verified=True)
    again = await store.get_or_create_customer(email=" ana@example.com", verified=True)
    assert again.id == first.id
    assert again.email == "ana@example.com"
    assert again.name == "Ana Lima"
    assert again.created_at is not None and again.created_at.tzinfo is UTC
    assert await store.get_customer(first.id) == first


async def test_customer_is_found_by_external_id_and_missing_fields_are_filled(store: SQLStore) -> None:
    first = await store.get_or_create_customer(external_id="slack:T1:U1", verified=True)
    again = await store.get_or_create_customer(
        external_id="slack:T1:U1", email="Ben@Example.com", name="Ben", verified=True
    )
    assert again.id == first.id
    assert (again.email, again.name, again.external_id) == ("ben@example.com", "Ben", "slack:T1:U1")
    assert (await store.get_or_create_customer(email="ben@example.com", verified=True)).id == first.id


async def test_unverified_identity_never_gets_the_verified_record(store: SQLStore) -> None:
    verified = await store.get_or_create_customer(email="ana@example.com", verified=True)
    claimed = await store.get_or_create_customer(email="ANA@example.com", verified=False)
    assert claimed.id != verified.id
    assert claimed.verified is False
    assert (await store.get_or_create_customer(email="ana@example.com", verified=False)).id == claimed.id
    assert (await store.get_or_create_customer(email="ana@example.com", verified=True)).id == verified.id


async def test_concurrent_get_or_create_makes_one_customer(store: SQLStore) -> None:
    found = await asyncio.gather(
        *(store.get_or_create_customer(email="c@example.com", verified=True) for _ in range(5))
    )
    assert len({c.id for c in found}) == 1


async def test_missing_customer_is_none(store: SQLStore) -> None:
    assert await store.get_customer("nope") is None


# -- conversations ----------------------------------------------------------------------------


async def test_conversation_create_get_update_list(store: SQLStore) -> None:
    customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
    other = await store.get_or_create_customer(email="ben@example.com", verified=True)
    created = await store.create_conversation(customer_id=customer.id, channel="web", flow="general")
    assert (created.status, created.turns, created.cost_usd) == ("bot", 0, 0.0)
    assert await store.get_conversation(created.id) == created

    updated = await store.update_conversation(created.id, flow="returns", status="human", count_turn=True)
    assert (updated.flow, updated.status, updated.turns) == ("returns", "human", 1)
    assert updated.updated_at is not None and created.updated_at is not None
    assert updated.updated_at >= created.updated_at
    unchanged = await store.update_conversation(created.id)
    assert (unchanged.flow, unchanged.status, unchanged.turns) == ("returns", "human", 1)

    second = await store.create_conversation(customer_id=customer.id, channel="email", flow="general")
    await store.create_conversation(customer_id=other.id, channel="web", flow="general")
    listed = await store.list_conversations(customer_id=customer.id)
    assert [c.id for c in listed] == [second.id, created.id]  # most recently updated first
    assert len(await store.list_conversations()) == 3
    assert len(await store.list_conversations(limit=1)) == 1
    assert await store.get_conversation("missing") is None


async def test_conversation_errors_name_the_problem(store: SQLStore) -> None:
    with pytest.raises(StorageError, match="no conversation 'missing'"):
        await store.update_conversation("missing", status="closed")
    with pytest.raises(StorageError, match="no such customer"):
        await store.create_conversation(customer_id="ghost", channel="web", flow="general")
    greeting = NewMessage(role="assistant", content="Hi!", kind="greeting")
    with pytest.raises(StorageError, match="no such customer"):
        await store.create_conversation(customer_id="ghost", channel="web", flow="general", messages=[greeting])
    with pytest.raises(StorageError, match="no such conversation"):
        await store.add_messages("missing", [NewMessage(role="user", content="hi")])


async def test_a_conversation_is_created_with_its_first_messages(store: SQLStore) -> None:
    customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
    opening = [
        NewMessage(role="assistant", content="Hi\x00 there", kind="greeting", flow="general"),
        NewMessage(role="user", content="hello", usage=Usage(input_tokens=3, output_tokens=4), cost_usd=0.5),
    ]
    created = await store.create_conversation(
        customer_id=customer.id, channel="web", flow="general", conversation_id="c" * 32, messages=opening
    )
    assert created.id == "c" * 32
    stored = await store.get_conversation(created.id)
    assert stored == created
    assert (created.turns, created.input_tokens, created.output_tokens, created.cost_usd) == (1, 3, 4, 0.5)
    messages = await store.list_messages(created.id)
    assert [(m.role, m.content, m.kind) for m in messages] == [
        ("assistant", "Hi there", "greeting"),
        ("user", "hello", "normal"),
    ]
    assert messages[0].id < messages[1].id


# -- messages ---------------------------------------------------------------------------------


async def test_messages_round_trip_with_tool_calls_images_and_extras(store: SQLStore) -> None:
    cid = await _conversation(store)
    call = ToolCall(id="call_1", name="lookup_order", arguments='{"order_id": "A1001"}', extra=SIGNATURE_EXTRA)
    sent = [
        NewMessage(role="user", content="Where is A1001? 🙂", images=(
            ImagePart(url="data:image/png;base64,iVBORw0KGgo=", detail="low"), ImagePart(url="https://x.test/a.png"))),
        NewMessage(role="assistant", tool_calls=(call, ToolCall(id="call_2", name="noop", arguments="")),
                   extra={"extra_content": {"google": {"thought_signature": "abc"}}}, model="gemini", flow="general",
                   usage=Usage(input_tokens=1200, output_tokens=40, audio_input_tokens=3, reasoning_tokens=25),
                   cost_usd=0.00108, latency_ms=812.5),
        NewMessage(role="tool", content='{"status": "shipped"}', tool_call_id="call_1", tool_name="lookup_order",
                   status="error", latency_ms=3.25),
        NewMessage(role="assistant", content="It ships today.", kind="human", author="agent@acme.example"),
    ]  # fmt: skip
    stored = await store.add_messages(cid, sent)
    assert [m.id for m in stored] == sorted(m.id for m in stored)
    listed = await store.list_messages(cid)
    assert listed == stored
    for before, after in zip(sent, listed, strict=True):
        assert after.conversation_id == cid
        assert after.created_at.tzinfo is UTC
        for field in ("role", "content", "images", "tool_calls", "tool_call_id", "tool_name", "extra", "kind",
                      "status", "model", "usage", "cost_usd", "latency_ms", "author"):  # fmt: skip
            assert getattr(after, field) == getattr(before, field), field
    extra = listed[1].tool_calls[0].extra
    assert json.dumps(extra) == json.dumps(SIGNATURE_EXTRA)  # same keys, same order, same values
    assert listed[0].usage is None and listed[1].tool_calls[1].extra == {}


async def test_usage_and_cost_add_up_on_the_conversation(store: SQLStore) -> None:
    cid = await _conversation(store)
    await store.add_messages(cid, [NewMessage(role="user", content="hi")])
    await store.add_messages(cid, [
        NewMessage(role="assistant", content="a", usage=Usage(input_tokens=100, output_tokens=10), cost_usd=0.25),
        NewMessage(role="assistant", content="b", usage=Usage(input_tokens=200, output_tokens=20), cost_usd=0.5),
    ])  # fmt: skip
    await store.add_messages(cid, [NewMessage(role="user", content="again")])
    conversation = await store.get_conversation(cid)
    assert conversation is not None
    assert (conversation.turns, conversation.input_tokens, conversation.output_tokens) == (2, 300, 30)
    assert conversation.cost_usd == pytest.approx(0.75)
    assert await store.add_messages(cid, []) == []


async def test_last_n_returns_the_newest_in_chronological_order(store: SQLStore) -> None:
    cid = await _conversation(store)
    other = await _conversation(store, "ben@example.com")
    for i in range(6):
        await store.add_messages(cid, [NewMessage(role="user", content=f"m{i}")])
        await store.add_messages(other, [NewMessage(role="user", content=f"other{i}")])
    assert [m.content for m in await store.list_messages(cid, last=3)] == ["m3", "m4", "m5"]
    assert [m.content for m in await store.list_messages(cid, last=100)] == [f"m{i}" for i in range(6)]
    assert await store.list_messages(cid, last=0) == []
    assert await store.list_messages("missing") == []


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
    cid = await _conversation(store)
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


async def test_begin_turn_stores_the_message_and_reads_what_came_before(store: SQLStore) -> None:
    cid = await _conversation(store)
    older = [NewMessage(role="user", content=f"q{i}") for i in range(5)]
    await store.add_messages(cid, older)
    start = await store.begin_turn(cid, NewMessage(role="user", content="now\x00"), history=3)
    assert [m.content for m in start.history] == ["q2", "q3", "q4"]
    assert start.message.content == "now" and start.message.id > start.history[-1].id
    assert start.conversation.id == cid and start.conversation.turns == 6
    assert start.customer.email == "ana@example.com" and start.customer.id == start.conversation.customer_id
    assert (await store.list_messages(cid, last=1))[0].id == start.message.id
    with pytest.raises(StorageError, match="no such conversation"):
        await store.begin_turn("missing", NewMessage(role="user", content="x"), history=3)


async def test_set_message_status(store: SQLStore) -> None:
    cid = await _conversation(store)
    (message,) = await store.add_messages(cid, [NewMessage(role="assistant", content="ok?", status="pending")])
    await store.set_message_status(message.id, "declined")
    assert (await store.list_messages(cid))[0].status == "declined"


async def test_tool_run_is_claimed_once(store: SQLStore) -> None:
    cid = await _conversation(store)
    assert await store.claim_tool_run(cid, "call_1") is True
    assert await store.claim_tool_run(cid, "call_1") is False
    assert await store.claim_tool_run(cid, "call_2") is True
    claims = await asyncio.gather(*(store.claim_tool_run(cid, "call_3") for _ in range(5)))
    assert claims.count(True) == 1


async def test_approving_tool_calls_marks_the_message_and_claims_its_calls_at_once(store: SQLStore) -> None:
    cid = await _conversation(store)
    calls = (ToolCall(id="call_a", name="refund", arguments="{}"), ToolCall(id="call_b", name="refund", arguments="{}"))
    (pending,) = await store.add_messages(cid, [NewMessage(role="assistant", tool_calls=calls, status="pending")])
    assert await store.claim_tool_run(cid, "call_b") is True  # run before (a crash after it ran)

    assert await store.approve_tool_calls(pending.id, cid, ["call_a", "call_b"]) == {"call_a"}

    assert [m.status for m in await store.list_messages(cid)] == ["ok"]
    assert await store.claim_tool_run(cid, "call_a") is False
    assert await store.approve_tool_calls(pending.id, cid, ["call_a", "call_b"]) == set()


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


async def test_lock_does_not_block_other_conversations(store: SQLStore) -> None:
    inside_b = asyncio.Event()
    async with store.lock("conv-a"):

        async def other() -> None:
            async with store.lock("conv-b"):
                inside_b.set()

        await asyncio.wait_for(asyncio.create_task(other()), 10)
    assert inside_b.is_set()


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


async def test_ticket_lifecycle_with_events(store: SQLStore) -> None:
    cid = await _conversation(store)
    ticket = await store.create_ticket(
        subject="Parcel lost",
        description="A1001 never came",
        kind="handoff",
        priority="high",
        conversation_id=cid,
        channel="web",
        flow="general",
    )
    assert (ticket.id, ticket.status, ticket.priority, ticket.kind) == (ticket.id, "open", "high", "handoff")
    assert ticket.created_at is not None and ticket.created_at.tzinfo is UTC
    assert await store.get_ticket(ticket.id) == ticket

    updated = await store.update_ticket(
        ticket.id,
        actor="ops@acme.example",
        status="pending",
        assignee="ops",
        priority="high",
        note="called the carrier",
    )
    assert (updated.status, updated.assignee, updated.priority) == ("pending", "ops", "high")
    events = await store.ticket_events(ticket.id)
    assert [(e.action, e.detail, e.actor) for e in events] == [
        ("created", "handoff", "bot"),
        ("status", "pending", "ops@acme.example"),
        ("assignee", "ops", "ops@acme.example"),
        ("note", "called the carrier", "ops@acme.example"),
    ]
    assert all(e.ticket_id == ticket.id for e in events)
    same = await store.update_ticket(ticket.id, actor="ops", status="pending")
    assert same == updated and len(await store.ticket_events(ticket.id)) == 4

    with pytest.raises(StorageError, match="no ticket #999999"):
        await store.update_ticket(999999, actor="ops", status="closed")
    assert await store.get_ticket(999999) is None


async def test_list_tickets_filters_by_status_and_conversation(store: SQLStore) -> None:
    cid = await _conversation(store)
    first = await store.create_ticket(subject="one", conversation_id=cid)
    second = await store.create_ticket(subject="two")
    third = await store.create_ticket(subject="three", conversation_id=cid)
    await store.update_ticket(third.id, actor="ops", status="solved")
    assert [t.id for t in await store.list_tickets()] == [third.id, second.id, first.id]
    assert [t.id for t in await store.list_tickets(status="open")] == [second.id, first.id]
    assert [t.id for t in await store.list_tickets(conversation_id=cid)] == [third.id, first.id]
    assert [t.id for t in await store.list_tickets(conversation_id=cid, status="open")] == [first.id]
    assert len(await store.list_tickets(limit=1)) == 1


# -- inbox and outbox ------------------------------------------------------------------------


async def test_inbox_stores_each_channel_message_once(store: SQLStore) -> None:
    payload = {"text": "hi", "user": "U1", "nested": [1, {"a": None}]}
    first = await store.inbox_add("slack", "Ev123", payload)
    assert isinstance(first, int)
    assert await store.inbox_add("slack", "Ev123", {"text": "retry"}) is None
    assert isinstance(await store.inbox_add("email", "Ev123", payload), int)  # another channel, another message
    pending = await store.inbox_pending("slack")
    assert [(i.id, i.external_id, i.payload, i.status) for i in pending] == [(first, "Ev123", payload, "received")]

    cid = await _conversation(store)
    await store.inbox_set_status(first, "done", conversation_id=cid)
    assert await store.inbox_pending("slack") == []
    assert [i.channel for i in await store.inbox_pending()] == ["email"]


# The hot path writes with the drivers' own SQL; these compare its rows, as stored, with SQLAlchemy's.
AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


async def test_inbox_rows_of_the_hot_path_are_those_sqlalchemy_writes(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_mailbox, "now", lambda: AT)
    cid = await _conversation(store)
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
    cid = await _conversation(store)
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
    cid = await _conversation(store)
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
    cid = await _conversation(store)
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
        cid = await _conversation(store)
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

    cid = await _conversation(store)
    call = ToolCall(id="c1", name="t", arguments="{}", extra=SIGNATURE_EXTRA)
    (stored,) = await store.add_messages(cid, [NewMessage(role="assistant", tool_calls=(call,), cost_usd=0.5)])
    async with store.engine.connect() as connection:
        row = (await connection.execute(select(messages).where(messages.c.id == stored.id))).one()
        conv = (await connection.execute(select(conversations).where(conversations.c.id == cid))).one()
    assert row.created_at == stored.created_at
    assert row.tool_calls == [{"id": "c1", "name": "t", "arguments": "{}", "extra": SIGNATURE_EXTRA}]
    assert conv.updated_at == stored.created_at and conv.cost_usd == 0.5
