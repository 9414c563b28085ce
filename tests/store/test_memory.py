"""MemoryStore keeps the Store contract that the engine relies on (it backs benchmarks and embedding)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import pytest

from supportbot.errors import StorageError
from supportbot.messages import ImagePart, ToolCall, Usage
from supportbot.store.base import Conversation, NewMessage, Outgoing
from supportbot.store.memory import MemoryStore


async def test_verified_and_unverified_identities_never_share_a_record() -> None:
    store = MemoryStore()
    verified = await store.get_or_create_customer(email="ana@example.com", verified=True)
    claimed = await store.get_or_create_customer(email="ANA@example.com ", verified=False)
    assert claimed.id != verified.id and not claimed.verified
    assert (await store.get_or_create_customer(email="ana@example.com", verified=True)).id == verified.id


async def test_begin_turn_counts_the_turn_and_returns_what_came_before() -> None:
    store = MemoryStore()
    customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
    conversation = await store.create_conversation(customer_id=customer.id, channel="test", flow="general")
    await store.add_messages(conversation.id, [
        NewMessage(role="assistant", tool_calls=(ToolCall(id="c1", name="t", arguments="{}"),),
                   usage=Usage(input_tokens=10, output_tokens=2), cost_usd=0.5),
    ])  # fmt: skip
    # A memory store has no inbox: an inbox id is accepted and ignored.
    start = await store.begin_turn(conversation.id, NewMessage(role="user", content="hi"), history=10, inbox_id=7)
    assert [m.role for m in start.history] == ["assistant"] and start.message.content == "hi"
    assert start.conversation.turns == 1 and start.conversation.cost_usd == 0.5
    assert start.customer == customer
    with pytest.raises(StorageError):
        await store.begin_turn("missing", NewMessage(role="user", content="x"), history=10)


async def test_claims_tickets_and_locks() -> None:
    store = MemoryStore()
    assert await store.claim_tool_run("c", "call") and not await store.claim_tool_run("c", "call")
    assert await store.approve_tool_calls(0, "c", ["call", "other"]) == {"other"}
    ticket = await store.create_ticket(subject="s", conversation_id="c")
    await store.update_ticket(ticket.id, actor="ops", status="solved", note="done")
    assert [e.action for e in await store.ticket_events(ticket.id)] == ["created", "status", "note"]
    assert await store.list_tickets(status="open") == []

    order: list[str] = []
    inside = asyncio.Event()

    async def first() -> None:
        async with store.lock("c"):
            inside.set()
            await asyncio.sleep(0)
            order.append("first")

    async def second() -> None:
        await inside.wait()
        async with store.lock("c"):
            order.append("second")

    await asyncio.gather(first(), second())
    assert order == ["first", "second"] and len(store._locks) == 0


async def test_add_messages_keeps_every_field() -> None:
    # add_messages copies fields one by one (for speed): a field added to the dataclasses must be copied too.
    store = MemoryStore()
    customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
    conversation = await store.create_conversation(customer_id=customer.id, channel="test", flow="general")
    before = Conversation(
        id=conversation.id, customer_id=customer.id, channel="web", flow="returns", status="human", turns=3,
        input_tokens=5, output_tokens=6, cost_usd=0.25, created_at=datetime(2024, 1, 2, tzinfo=UTC),
        updated_at=datetime(2024, 1, 3, tzinfo=UTC),
    )  # fmt: skip
    blank = Conversation(id="", customer_id="", channel="", flow="")
    unset = [f.name for f in dataclasses.fields(Conversation) if getattr(before, f.name) == getattr(blank, f.name)]
    assert not unset, f"give these fields a non-default value here: {unset}"
    store._conversations[conversation.id] = before
    message = NewMessage(
        role="assistant", content="hi", images=(ImagePart(url="https://x/y.png"),),
        tool_calls=(ToolCall(id="c1", name="t", arguments="{}"),), tool_call_id="c0", tool_name="t0",
        extra={"k": 1}, kind="notice", status="pending", flow="returns", model="m",
        usage=Usage(input_tokens=10, output_tokens=2), cost_usd=0.5, latency_ms=7.0, author="agent",
    )  # fmt: skip
    defaults = NewMessage(role="user")
    unset = [f.name for f in dataclasses.fields(NewMessage) if getattr(message, f.name) == getattr(defaults, f.name)]
    assert not unset, f"give these fields a non-default value here: {unset}"
    (stored,) = await store.add_messages(conversation.id, [message])
    assert {f.name: getattr(stored, f.name) for f in dataclasses.fields(NewMessage)} == {
        f.name: getattr(message, f.name) for f in dataclasses.fields(NewMessage)
    }
    after = await store.get_conversation(conversation.id)
    assert after is not None and after.updated_at is not None and after.updated_at > before.updated_at  # type: ignore[operator]
    assert dataclasses.replace(after, updated_at=before.updated_at) == dataclasses.replace(
        before, input_tokens=15, output_tokens=8, cost_usd=0.75
    )


async def test_outgoing_replies_are_kept_in_the_outbox_list() -> None:
    store = MemoryStore()
    customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
    conversation = await store.create_conversation(customer_id=customer.id, channel="slack", flow="general")
    await store.add_messages(conversation.id, [NewMessage(role="user", content="hi")])
    payload = {"kind": "answer", "text": "Hello!", "turn": 1, "author": None}
    _, last = await store.add_messages(
        conversation.id,
        [NewMessage(role="assistant", content=None), NewMessage(role="assistant", content="Hello!")],
        outgoing=Outgoing(channel="slack", payload=payload),
    )
    assert store.outbox == [("slack", conversation.id, last.id, payload)]
    with pytest.raises(StorageError):
        await store.add_messages("missing", [NewMessage(role="assistant")], outgoing=Outgoing(channel="x", payload={}))
    assert len(store.outbox) == 1


async def test_a_conversation_is_created_with_its_first_messages() -> None:
    store = MemoryStore()
    customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
    opening = [NewMessage(role="user", content="hello", usage=Usage(input_tokens=3, output_tokens=4), cost_usd=0.5)]
    created = await store.create_conversation(
        customer_id=customer.id, channel="test", flow="general", conversation_id="c1", messages=opening
    )
    assert (created.id, created.turns, created.input_tokens, created.cost_usd) == ("c1", 1, 3, 0.5)
    assert [m.content for m in await store.list_messages("c1")] == ["hello"]
