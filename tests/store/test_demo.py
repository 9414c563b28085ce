"""Demo orders in the orders table."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from supportbot.errors import ConfigError
from supportbot.store.demo import DEMO_CUSTOMERS, demo_orders, seed_demo_orders
from supportbot.store.sql import SQLStore


async def test_demo_orders_are_seeded_and_found(store: SQLStore) -> None:
    orders = demo_orders(today=date(2025, 11, 3))
    assert 6 <= len(orders) <= 8
    assert {o["customer_email"] for o in orders} == set(DEMO_CUSTOMERS)
    assert await seed_demo_orders(store, orders) == len(orders)
    assert await seed_demo_orders(store, orders) == len(orders)  # seeding again replaces, never duplicates

    order = await store.get_order("A1001")
    assert order is not None
    assert order["customer_email"] == "ana@example.com"
    assert order["status"] == "shipped"
    assert order["eta"] == date(2025, 11, 5)
    assert order["placed_at"] == datetime(2025, 10, 30, 10, 30, tzinfo=UTC)
    assert order["items"][0]["name"] == "Trailhead 2-person tent"
    assert order["total"] == pytest.approx(208.0)
    delayed = await store.get_order("A1004")
    assert delayed is not None and delayed["data"] == {"note": "held at the sorting centre after a weather delay"}
    assert await store.get_order("A9999") is None


async def test_seeding_custom_orders_through_the_engine(store: SQLStore) -> None:
    written = await seed_demo_orders(store.engine, [
        {"order_id": "B1", "customer_email": "Zoe@Example.com", "status": "shipped", "eta": "2025-12-01",
         "placed_at": "2025-11-20T08:00:00Z", "gift": True},
    ])  # fmt: skip
    assert written == 1
    order = await store.get_order("B1")
    assert order is not None
    assert (order["customer_email"], order["eta"], order["data"]) == (
        "zoe@example.com",
        date(2025, 12, 1),
        {"gift": True},
    )
    assert order["placed_at"] == datetime(2025, 11, 20, 8, tzinfo=UTC)
    assert await seed_demo_orders(store, []) == 0


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ({"customer_email": "a@b.c", "status": "x"}, r"orders\[0\]: missing 'order_id'"),
        ({"order_id": "A1", "customer_email": "a@b.c", "status": "x", "eta": "soon"}, r"orders\[0\]\.eta: 'soon'"),
        ({"order_id": "A1", "customer_email": "a@b.c", "status": "x", "placed_at": "?"}, r"orders\[0\]\.placed_at"),
    ],
)
async def test_bad_orders_are_refused_with_their_index(store: SQLStore, order: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        await seed_demo_orders(store, [order])
