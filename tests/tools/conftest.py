"""Fixtures for the tool tests: a shared HTTP session, an in-memory order source, a ToolContext factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from supportbot.config import Config
from supportbot.store.base import Conversation, Customer, Store
from supportbot.tools import ToolContext
from supportbot.tools.orders import OrderSource

ALICE = Customer(id="cust-alice", email="Alice@Example.com", name="Alice Doe", verified=True)
BOB = Customer(id="cust-bob", email="bob@example.com", name="Bob Roe", verified=True)


class DictOrders:
    """An order source over a dict, keyed by the normalised order id; counts its lookups."""

    def __init__(self, orders: dict[str, dict[str, Any]] | None = None) -> None:
        self.orders = orders or {}
        self.lookups: list[str] = []

    async def get(self, order_id: str) -> dict[str, Any] | None:
        self.lookups.append(order_id)
        order = self.orders.get(order_id)
        return dict(order) if order is not None else None

    async def aclose(self) -> None:
        return None


@pytest.fixture
def alice() -> Customer:
    return ALICE


@pytest.fixture
def bob() -> Customer:
    return BOB


@pytest.fixture
def dict_orders() -> type[DictOrders]:
    return DictOrders


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


MakeContext = Callable[..., ToolContext]


@pytest.fixture
def make_ctx(http: aiohttp.ClientSession) -> MakeContext:
    """Build a ToolContext; only what a test passes matters, the rest is filled with harmless values."""

    def make(
        *,
        customer: Customer = ALICE,
        conversation: Conversation | None = None,
        store: Store | None = None,
        orders: OrderSource | None = None,
        channel: str = "web",
        flow: str = "order_status",
        tool_call_id: str = "call_1",
    ) -> ToolContext:
        if conversation is None:
            conversation = Conversation(id="conv-1", customer_id=customer.id, channel=channel, flow=flow)
        return ToolContext(
            customer=customer,
            conversation=conversation,
            channel=channel,
            flow=flow,
            store=store,  # type: ignore[arg-type]  # tests that don't touch the store pass none
            config=Config(),
            http=http,
            orders=orders if orders is not None else DictOrders(),
            tool_call_id=tool_call_id,
        )

    return make
