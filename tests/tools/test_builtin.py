from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from supportbot.config import Config, LimitSettings
from supportbot.messages import ToolCall
from supportbot.store.base import Conversation, Customer, Store
from supportbot.store.demo import demo_orders, seed_demo_orders
from supportbot.store.sql import SQLStore
from supportbot.tools import ToolContext, ToolRegistry, ToolResult, default_registry
from supportbot.tools.builtin import lookup_order
from supportbot.tools.orders import FileOrderSource, SqlOrderSource

MakeContext = Callable[..., ToolContext]

ORDERS = {
    "A1001": {
        "order_id": "A1001",
        "customer_email": "alice@example.com",
        "status": "shipped",
        "items": '[{"sku": "TENT-2", "qty": 1}]',
        "eta": "2026-12-03",
        "carrier": "DHL",
        "tracking_url": "https://track.example/1",
        "total": 199.5,
        "currency": "EUR",
        "placed_at": "2026-11-28T10:00:00Z",
        "shipping_address": "1 Secret Lane",
        "internal_note": "VIP",
    },
    "A1002": {"order_id": "A1002", "customer_email": "bob@example.com", "status": "processing"},
}


@pytest.fixture
def registry() -> ToolRegistry:
    return default_registry()


async def run(registry: ToolRegistry, ctx: ToolContext, name: str, **arguments: Any) -> ToolResult:
    return await registry.call(ToolCall(id=ctx.tool_call_id, name=name, arguments=json.dumps(arguments)), ctx)


def comparable(result: ToolResult) -> tuple[Any, ...]:
    return (result.content, result.is_error, result.handoff, result.data)


# -- lookup_order ----------------------------------------------------------------------------------


async def test_own_order_is_shown_without_private_fields(
    registry: ToolRegistry, make_ctx: MakeContext, dict_orders: Any
) -> None:
    ctx = make_ctx(orders=dict_orders(ORDERS))  # Alice's email on file is "Alice@Example.com"

    result = await run(registry, ctx, "lookup_order", order_id="A1001")

    assert not result.is_error
    assert result.data == {
        "order_id": "A1001",
        "status": "shipped",
        "items": [{"sku": "TENT-2", "qty": 1}],
        "eta": "2026-12-03",
        "carrier": "DHL",
        "tracking_url": "https://track.example/1",
        "placed_at": "2026-11-28T10:00:00Z",
        "total": 199.5,
        "currency": "EUR",
    }
    for private in ("alice@example.com", "Secret Lane", "VIP"):
        assert private not in result.content


async def test_another_customers_order_looks_exactly_like_a_missing_one(
    registry: ToolRegistry, make_ctx: MakeContext, dict_orders: Any
) -> None:
    ctx = make_ctx(orders=dict_orders(ORDERS))

    bobs = await run(registry, ctx, "lookup_order", order_id="A1002")
    ctx_missing = make_ctx(orders=dict_orders({k: v for k, v in ORDERS.items() if k != "A1002"}))
    missing = await run(registry, ctx_missing, "lookup_order", order_id="A1002")

    assert comparable(bobs) == comparable(missing)
    assert bobs.content == "no order A1002 found for this customer"
    assert not bobs.is_error


@pytest.mark.parametrize(
    "customer",
    [
        Customer(id="c1", email="alice@example.com", verified=False),
        Customer(id="c2", email=None, verified=True),
        Customer(id="c3", external_id="U123", verified=True),
    ],
    ids=["unverified", "verified-without-email", "slack-user-without-email"],
)
async def test_unverified_customer_is_refused_without_a_lookup(
    make_ctx: MakeContext, dict_orders: Any, customer: Customer
) -> None:
    orders = dict_orders(ORDERS)

    # The tool itself, as when called directly: the registry refuses unverified customers before it runs.
    result = await lookup_order(make_ctx(customer=customer, orders=orders), order_id="A1001")

    assert isinstance(result, str)
    if customer.verified:  # signed in by id alone: the email, which orders belong to, is what is missing
        assert result.startswith("The customer is signed in, but their email address is not verified")
    else:
        assert result.startswith("The customer's identity is not verified, so no order details can be shared.")
    assert "ticket" in result
    assert orders.lookups == []


async def test_lookup_order_requires_a_verified_customer_and_the_registry_refuses_it_before_it_runs(
    registry: ToolRegistry, make_ctx: MakeContext, dict_orders: Any
) -> None:
    assert lookup_order.requires_verified
    orders = dict_orders(ORDERS)
    stranger = Customer(id="c1", email="alice@example.com", verified=False)

    result = await run(registry, make_ctx(customer=stranger, orders=orders), "lookup_order", order_id="A1001")

    assert result.is_error and result.content.startswith(
        "'lookup_order' was not run: the customer's identity is not verified"
    )
    assert orders.lookups == []
    assert [s["function"]["name"] for s in registry.schemas(["lookup_order", "create_ticket"], verified=False)] == [
        "create_ticket"
    ]


@pytest.mark.parametrize(
    "typed", ["А1001", "a1001", "#A1001", "Ａ１００１"], ids=["cyrillic", "lower", "hash", "fullwidth"]
)
async def test_order_number_is_normalised(
    registry: ToolRegistry, make_ctx: MakeContext, dict_orders: Any, typed: str
) -> None:
    orders = dict_orders(ORDERS)

    result = await run(registry, make_ctx(orders=orders), "lookup_order", order_id=typed)

    assert result.data["status"] == "shipped"
    assert orders.lookups == ["A1001"]


@pytest.mark.parametrize("typed", ["my order", "A1001' OR '1'='1", "Ж1001", ""])
async def test_malformed_order_number_asks_the_model_to_retry(
    registry: ToolRegistry, make_ctx: MakeContext, dict_orders: Any, typed: str
) -> None:
    orders = dict_orders(ORDERS)

    result = await run(registry, make_ctx(orders=orders), "lookup_order", order_id=typed)

    assert (result.content, result.is_error) == ("order numbers look like A1001", True)
    assert orders.lookups == []


async def test_lookup_order_against_a_yaml_file(registry: ToolRegistry, make_ctx: MakeContext, tmp_path: Path) -> None:
    path = tmp_path / "orders.yaml"
    path.write_text(
        "- {order_id: A1001, customer_email: ALICE@example.com, status: shipped, items: [Tent]}\n"
        "- {order_id: A1002, customer_email: bob@example.com, status: processing}\n",
        encoding="utf-8",
    )
    ctx = make_ctx(orders=FileOrderSource(path=path))

    own = await run(registry, ctx, "lookup_order", order_id="a1001")
    other = await run(registry, ctx, "lookup_order", order_id="A1002")

    assert own.content == '{"order_id":"A1001","status":"shipped","items":["Tent"]}'
    assert other.content == "no order A1002 found for this customer"


# -- create_ticket and handoff_to_human (real store) -----------------------------------------------


@pytest.fixture
async def conversation(store: Store) -> tuple[Customer, Conversation]:
    customer = await store.get_or_create_customer(email="alice@example.com", name="Alice Doe", verified=True)
    conversation = await store.create_conversation(customer_id=customer.id, channel="web", flow="order_status")
    return customer, conversation


async def test_create_ticket(
    registry: ToolRegistry, make_ctx: MakeContext, store: Store, conversation: tuple[Customer, Conversation]
) -> None:
    customer, conv = conversation
    ctx = make_ctx(customer=customer, conversation=conv, store=store, channel="web", flow="order_status")

    result = await run(
        registry, ctx, "create_ticket", subject=" Broken pole ", description="Pole snapped on day 1.", priority="high"
    )

    assert not result.is_error, result.content
    ticket_id = result.data["ticket_id"]
    assert json.loads(result.content) == {"ticket_id": ticket_id, "status": "open"}
    ticket = await store.get_ticket(ticket_id)
    assert ticket is not None
    assert (ticket.subject, ticket.description, ticket.priority, ticket.kind, ticket.status) == (
        "Broken pole",
        "Pole snapped on day 1.",
        "high",
        "request",
        "open",
    )
    assert (ticket.conversation_id, ticket.customer_id, ticket.channel, ticket.flow) == (
        conv.id,
        customer.id,
        "web",
        "order_status",
    )
    [event] = await store.ticket_events(ticket_id)
    assert event.actor == "bot"


async def test_create_ticket_is_capped_per_customer_over_all_their_conversations(
    registry: ToolRegistry, make_ctx: MakeContext, store: Store, conversation: tuple[Customer, Conversation]
) -> None:
    customer, first = conversation
    second = await store.create_conversation(customer_id=customer.id, channel="web", flow="order_status")
    contexts = [make_ctx(customer=customer, conversation=c, store=store) for c in (first, second, first)]
    ids = []
    for n, ctx in enumerate(contexts):
        made = await run(registry, ctx, "create_ticket", subject=f"Issue {n}", description="details")
        ids.append(made.data["ticket_id"])

    refused = await run(registry, make_ctx(customer=customer, conversation=second, store=store), "create_ticket",
                        subject="Issue again", description="details")  # fmt: skip

    assert refused.is_error
    assert refused.content.startswith("no ticket was opened: this customer already has the most tickets")
    assert f"their latest is #{ids[-1]} (open)" in refused.content
    assert len(await store.list_tickets()) == 3
    other = await store.get_or_create_customer(email="bob@example.com", verified=True)
    theirs = await store.create_conversation(customer_id=other.id, channel="web", flow="order_status")
    made = await run(registry, make_ctx(customer=other, conversation=theirs, store=store), "create_ticket",
                     subject="Bob's issue", description="details")  # fmt: skip
    assert not made.is_error, made.content


async def test_the_ticket_cap_comes_from_the_config(
    registry: ToolRegistry, make_ctx: MakeContext, store: Store, conversation: tuple[Customer, Conversation]
) -> None:
    customer, conv = conversation
    config = Config(limits=LimitSettings(tickets_per_customer_per_day=1))
    ctx = dataclasses.replace(make_ctx(customer=customer, conversation=conv, store=store), config=config)

    made = await run(registry, ctx, "create_ticket", subject="One", description="details")
    refused = await run(registry, ctx, "create_ticket", subject="Two", description="details")

    assert not made.is_error and refused.is_error
    assert [t.subject for t in await store.list_tickets()] == ["One"]


async def test_fifty_parallel_create_ticket_calls_open_three_tickets(
    registry: ToolRegistry, make_ctx: MakeContext, store: Store, conversation: tuple[Customer, Conversation]
) -> None:
    customer, conv = conversation
    contexts = [make_ctx(customer=customer, conversation=conv, store=store, tool_call_id=f"c{n}") for n in range(50)]

    results = await asyncio.gather(
        *(run(registry, ctx, "create_ticket", subject=f"Issue {n}", description="d") for n, ctx in enumerate(contexts))
    )

    assert sum(not r.is_error for r in results) == 3, [r.content for r in results if r.is_error][:1]
    assert all(r.content.startswith("no ticket was opened") for r in results if r.is_error)
    assert len(await store.list_tickets()) == 3


async def test_fifty_parallel_handoffs_open_one_ticket(
    registry: ToolRegistry, make_ctx: MakeContext, store: Store, conversation: tuple[Customer, Conversation]
) -> None:
    customer, conv = conversation
    contexts = [make_ctx(customer=customer, conversation=conv, store=store, tool_call_id=f"c{n}") for n in range(50)]

    results = await asyncio.gather(
        *(run(registry, ctx, "handoff_to_human", reason=f"Reason {n}") for n, ctx in enumerate(contexts))
    )

    assert not any(r.is_error for r in results), [r.content for r in results if r.is_error][:1]
    tickets = await store.list_tickets(conversation_id=conv.id)
    assert [t.kind for t in tickets] == ["handoff"]
    assert {r.data["ticket_id"] for r in results} == {tickets[0].id}
    notes = [e for e in await store.ticket_events(tickets[0].id) if e.action == "note"]
    assert len(notes) == 49 and all(e.detail.startswith("handoff requested again: Reason ") for e in notes)


async def test_create_ticket_validates_priority(
    registry: ToolRegistry, make_ctx: MakeContext, store: Store, conversation: tuple[Customer, Conversation]
) -> None:
    customer, conv = conversation
    ctx = make_ctx(customer=customer, conversation=conv, store=store)

    result = await run(registry, ctx, "create_ticket", subject="x", description="y", priority="asap")

    assert result.content == (
        "invalid arguments for 'create_ticket': priority: input should be 'low', 'normal', 'high' or 'urgent'"
    )
    assert await store.list_tickets(conversation_id=conv.id) == []


async def test_handoff_to_human_creates_a_ticket_and_pauses_the_bot(
    registry: ToolRegistry, make_ctx: MakeContext, store: Store, conversation: tuple[Customer, Conversation]
) -> None:
    customer, conv = conversation
    ctx = make_ctx(customer=customer, conversation=conv, store=store)

    result = await run(registry, ctx, "handoff_to_human", reason="Customer asks for a person about a refund.")

    assert (result.handoff, result.is_error) == ("human", False)
    ticket_id = result.data["ticket_id"]
    assert result.data == {"ticket_id": ticket_id, "reason": "Customer asks for a person about a refund."}
    assert f"ticket #{ticket_id}" in result.content
    ticket = await store.get_ticket(ticket_id)
    assert ticket is not None
    assert (ticket.kind, ticket.status, ticket.conversation_id) == ("handoff", "open", conv.id)
    assert ticket.subject == "Handoff: Customer asks for a person about a refund."
    updated = await store.get_conversation(conv.id)
    assert updated is not None and updated.status == "human"


async def test_handoff_twice_reuses_the_open_ticket(
    registry: ToolRegistry, make_ctx: MakeContext, store: Store, conversation: tuple[Customer, Conversation]
) -> None:
    customer, conv = conversation
    ctx = make_ctx(customer=customer, conversation=conv, store=store)

    first = await run(registry, ctx, "handoff_to_human", reason="Wants a person.")
    second = await run(registry, ctx, "handoff_to_human", reason="Still wants a person.")

    assert first.data["ticket_id"] == second.data["ticket_id"]
    tickets = await store.list_tickets(conversation_id=conv.id)
    assert [t.kind for t in tickets] == ["handoff"]
    events = await store.ticket_events(first.data["ticket_id"])
    assert any("Still wants a person." in event.detail for event in events)


async def test_lookup_order_against_the_stores_orders_table(
    registry: ToolRegistry, make_ctx: MakeContext, store: SQLStore, db_url: str
) -> None:
    await seed_demo_orders(store, demo_orders(date(2026, 12, 1)))
    ana = await store.get_or_create_customer(email="ana@example.com", verified=True)
    orders = SqlOrderSource(url=db_url, table="orders")
    try:
        ctx = make_ctx(customer=ana, orders=orders)
        own = await run(registry, ctx, "lookup_order", order_id="a1001")
        bens = await run(registry, ctx, "lookup_order", order_id="A1003")
        missing = await run(registry, ctx, "lookup_order", order_id="A9999")
    finally:
        await orders.aclose()

    shown = json.loads(own.content)
    assert (shown["order_id"], shown["status"], shown["eta"], shown["carrier"]) == (
        "A1001",
        "shipped",
        "2026-12-03",
        "DHL",
    )
    assert "ana@example.com" not in own.content
    assert bens.content == "no order A1003 found for this customer"
    assert missing.content == "no order A9999 found for this customer"
    assert (bens.is_error, bens.handoff) == (missing.is_error, missing.handoff) == (False, None)


async def test_unverified_visitors_claiming_one_email_do_not_use_up_each_others_tickets(
    registry: ToolRegistry, make_ctx: MakeContext, store: Store
) -> None:
    claimed = await store.get_or_create_customer(email="ana@example.com", verified=False)
    first, second = [
        await store.create_conversation(customer_id=claimed.id, channel="web", flow="order_status") for _ in range(2)
    ]
    for n in range(3):
        made = await run(registry, make_ctx(customer=claimed, conversation=first, store=store), "create_ticket",
                         subject=f"Spam {n}", description="details")  # fmt: skip
        assert not made.is_error, made.content
    refused = await run(registry, make_ctx(customer=claimed, conversation=first, store=store), "create_ticket",
                        subject="Spam again", description="details")  # fmt: skip
    assert refused.is_error

    theirs = await run(registry, make_ctx(customer=claimed, conversation=second, store=store), "create_ticket",
                       subject="My real problem", description="details")  # fmt: skip

    assert not theirs.is_error, theirs.content
