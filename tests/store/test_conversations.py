"""Conversations, messages and turns: one contract for SQLite, PostgreSQL and the memory store (``any_store``).

What is particular to the SQL store (its URL, rows as the database holds them, the inbox and outbox) is in
``test_sql.py``.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC

import pytest

from supportbot.errors import StorageError
from supportbot.messages import ImagePart, ToolCall, Usage
from supportbot.store.base import NewMessage, Store
from tests.store.conftest import new_conversation

# A Gemini-style thought signature: nested, non-ASCII, odd key order; must come back exactly.
SIGNATURE_EXTRA = {
    "extra_content": {"google": {"thought_signature": "CiQBVKhc7z+/AAEC\u00e9\U0001f600==", "z": [1, 2.5, None]}},
    "a": {"nested": [{"k": "v"}, True, False]},
}


async def test_conversation_create_get_update_list(any_store: Store) -> None:
    customer = await any_store.get_or_create_customer(email="ana@example.com", verified=True)
    other = await any_store.get_or_create_customer(email="ben@example.com", verified=True)
    created = await any_store.create_conversation(customer_id=customer.id, channel="web", flow="general")
    assert (created.status, created.turns, created.cost_usd) == ("bot", 0, 0.0)
    assert await any_store.get_conversation(created.id) == created

    updated = await any_store.update_conversation(created.id, flow="returns", status="human", count_turn=True)
    assert (updated.flow, updated.status, updated.turns) == ("returns", "human", 1)
    assert updated.updated_at is not None and created.updated_at is not None
    assert updated.updated_at >= created.updated_at
    unchanged = await any_store.update_conversation(created.id)
    assert (unchanged.flow, unchanged.status, unchanged.turns) == ("returns", "human", 1)

    second = await any_store.create_conversation(customer_id=customer.id, channel="email", flow="general")
    await any_store.create_conversation(customer_id=other.id, channel="web", flow="general")
    listed = await any_store.list_conversations(customer_id=customer.id)
    assert [c.id for c in listed] == [second.id, created.id]  # most recently updated first
    assert len(await any_store.list_conversations()) == 3
    assert len(await any_store.list_conversations(limit=1)) == 1
    assert await any_store.get_conversation("missing") is None


async def test_conversation_errors_name_the_problem(any_store: Store) -> None:
    with pytest.raises(StorageError, match="no conversation 'missing'"):
        await any_store.update_conversation("missing", status="closed")
    with pytest.raises(StorageError, match="no such customer"):
        await any_store.create_conversation(customer_id="ghost", channel="web", flow="general")
    greeting = NewMessage(role="assistant", content="Hi!", kind="greeting")
    with pytest.raises(StorageError, match="no such customer"):
        await any_store.create_conversation(customer_id="ghost", channel="web", flow="general", messages=[greeting])
    with pytest.raises(StorageError, match="no such conversation"):
        await any_store.add_messages("missing", [NewMessage(role="user", content="hi")])


async def test_a_conversation_is_created_with_its_first_messages(any_store: Store) -> None:
    customer = await any_store.get_or_create_customer(email="ana@example.com", verified=True)
    opening = [
        NewMessage(role="assistant", content="Hi\x00 there", kind="greeting", flow="general"),
        NewMessage(role="user", content="hello", usage=Usage(input_tokens=3, output_tokens=4), cost_usd=0.5),
    ]
    created = await any_store.create_conversation(
        customer_id=customer.id, channel="web", flow="general", conversation_id="c" * 32, messages=opening
    )
    assert created.id == "c" * 32
    stored = await any_store.get_conversation(created.id)
    assert stored == created
    assert (created.turns, created.input_tokens, created.output_tokens, created.cost_usd) == (1, 3, 4, 0.5)
    messages = await any_store.list_messages(created.id)
    assert [(m.role, m.content, m.kind) for m in messages] == [
        ("assistant", "Hi there", "greeting"),
        ("user", "hello", "normal"),
    ]
    assert messages[0].id < messages[1].id


async def test_messages_round_trip_with_tool_calls_images_and_extras(any_store: Store) -> None:
    cid = await new_conversation(any_store)
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
    stored = await any_store.add_messages(cid, sent)
    assert [m.id for m in stored] == sorted(m.id for m in stored)
    listed = await any_store.list_messages(cid)
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


async def test_usage_and_cost_add_up_on_the_conversation(any_store: Store) -> None:
    cid = await new_conversation(any_store)
    await any_store.add_messages(cid, [NewMessage(role="user", content="hi")])
    await any_store.add_messages(cid, [
        NewMessage(role="assistant", content="a", usage=Usage(input_tokens=100, output_tokens=10), cost_usd=0.25),
        NewMessage(role="assistant", content="b", usage=Usage(input_tokens=200, output_tokens=20), cost_usd=0.5),
    ])  # fmt: skip
    await any_store.add_messages(cid, [NewMessage(role="user", content="again")])
    conversation = await any_store.get_conversation(cid)
    assert conversation is not None
    assert (conversation.turns, conversation.input_tokens, conversation.output_tokens) == (2, 300, 30)
    assert conversation.cost_usd == pytest.approx(0.75)
    assert await any_store.add_messages(cid, []) == []


async def test_last_n_returns_the_newest_in_chronological_order(any_store: Store) -> None:
    cid = await new_conversation(any_store)
    other = await new_conversation(any_store, "ben@example.com")
    for i in range(6):
        await any_store.add_messages(cid, [NewMessage(role="user", content=f"m{i}")])
        await any_store.add_messages(other, [NewMessage(role="user", content=f"other{i}")])
    assert [m.content for m in await any_store.list_messages(cid, last=3)] == ["m3", "m4", "m5"]
    assert [m.content for m in await any_store.list_messages(cid, last=100)] == [f"m{i}" for i in range(6)]
    assert await any_store.list_messages(cid, last=0) == []
    assert await any_store.list_messages("missing") == []


async def test_begin_turn_stores_the_message_and_reads_what_came_before(any_store: Store) -> None:
    cid = await new_conversation(any_store)
    older = [NewMessage(role="user", content=f"q{i}") for i in range(5)]
    await any_store.add_messages(cid, older)
    start = await any_store.begin_turn(cid, NewMessage(role="user", content="now\x00"), history=3)
    assert [m.content for m in start.history] == ["q2", "q3", "q4"]
    assert start.message.content == "now" and start.message.id > start.history[-1].id
    assert start.conversation.id == cid and start.conversation.turns == 6
    assert start.customer.email == "ana@example.com" and start.customer.id == start.conversation.customer_id
    assert (await any_store.list_messages(cid, last=1))[0].id == start.message.id
    with pytest.raises(StorageError, match="no such conversation"):
        await any_store.begin_turn("missing", NewMessage(role="user", content="x"), history=3)


async def test_set_message_status(any_store: Store) -> None:
    cid = await new_conversation(any_store)
    (message,) = await any_store.add_messages(cid, [NewMessage(role="assistant", content="ok?", status="pending")])
    await any_store.set_message_status(message.id, "declined")
    assert (await any_store.list_messages(cid))[0].status == "declined"


async def test_tool_run_is_claimed_once(any_store: Store) -> None:
    cid = await new_conversation(any_store)
    assert await any_store.claim_tool_run(cid, "call_1") is True
    assert await any_store.claim_tool_run(cid, "call_1") is False
    assert await any_store.claim_tool_run(cid, "call_2") is True
    claims = await asyncio.gather(*(any_store.claim_tool_run(cid, "call_3") for _ in range(5)))
    assert claims.count(True) == 1


async def test_approving_tool_calls_marks_the_message_and_claims_its_calls_at_once(any_store: Store) -> None:
    cid = await new_conversation(any_store)
    calls = (ToolCall(id="call_a", name="refund", arguments="{}"), ToolCall(id="call_b", name="refund", arguments="{}"))
    (pending,) = await any_store.add_messages(cid, [NewMessage(role="assistant", tool_calls=calls, status="pending")])
    assert await any_store.claim_tool_run(cid, "call_b") is True  # run before (a crash after it ran)

    assert await any_store.approve_tool_calls(pending.id, cid, ["call_a", "call_b"]) == {"call_a"}

    assert [m.status for m in await any_store.list_messages(cid)] == ["ok"]
    assert await any_store.claim_tool_run(cid, "call_a") is False
    assert await any_store.approve_tool_calls(pending.id, cid, ["call_a", "call_b"]) == set()


async def test_a_turn_after_an_approval_sees_the_approved_message(any_store: Store) -> None:
    cid = await new_conversation(any_store)
    calls = (ToolCall(id="call_a", name="refund", arguments="{}"),)
    await any_store.begin_turn(cid, NewMessage(role="user", content="refund please"), history=50)
    (pending,) = await any_store.add_messages(cid, [NewMessage(role="assistant", tool_calls=calls, status="pending")])
    await any_store.begin_turn(cid, NewMessage(role="user", content="wait"), history=50)  # history read (and kept)
    await any_store.approve_tool_calls(pending.id, cid, ["call_a"])
    start = await any_store.begin_turn(cid, NewMessage(role="user", content="yes"), history=50)
    assert [(m.content, m.status) for m in start.history] == [("refund please", "ok"), (None, "ok"), ("wait", "ok")]


async def test_lock_does_not_block_other_conversations(any_store: Store) -> None:
    inside_b = asyncio.Event()
    async with any_store.lock("conv-a"):

        async def other() -> None:
            async with any_store.lock("conv-b"):
                inside_b.set()

        await asyncio.wait_for(asyncio.create_task(other()), 10)
    assert inside_b.is_set()
