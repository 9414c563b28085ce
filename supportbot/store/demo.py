"""Demo orders: a small built-in data set and a way to load orders into the ``orders`` table.

``supportbot serve --demo`` seeds ``demo_orders()`` so ``lookup_order`` has something to find;
tests and demos can seed their own lists with ``seed_demo_orders``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from supportbot.errors import ConfigError
from supportbot.store._engine import storage_error
from supportbot.store.models import orders as _orders
from supportbot.store.sql import SQLStore

__all__ = ["DEMO_CUSTOMERS", "demo_orders", "seed_demo_orders"]

DEMO_CUSTOMERS = ("ana@example.com", "ben@example.com", "chloe@example.com")
"""The customers the demo orders belong to."""

_COLUMNS = ("order_id", "customer_email", "status", "items", "total", "currency", "placed_at", "eta", "carrier",
            "tracking_url")  # fmt: skip


def demo_orders(today: date | None = None) -> list[dict[str, Any]]:
    """Seven orders of three customers (``DEMO_CUSTOMERS``), dated relative to ``today`` so they always look current.

    Order ids look like ``A1001``; statuses cover processing, shipped, delivered, delayed and cancelled.
    """
    day = today or datetime.now(UTC).date()

    def placed(days_ago: int) -> datetime:
        return datetime.combine(day - timedelta(days=days_ago), time(10, 30), tzinfo=UTC)

    def item(sku: str, name: str, qty: int, price: float) -> dict[str, Any]:
        return {"sku": sku, "name": name, "qty": qty, "price": price}

    ana, ben, chloe = DEMO_CUSTOMERS
    return [
        {"order_id": "A1001", "customer_email": ana, "status": "shipped", "currency": "EUR",
         "items": [item("TNT-2P", "Trailhead 2-person tent", 1, 189.0), item("STK-AL", "Tent stakes", 2, 9.5)],
         "total": 208.0, "placed_at": placed(4), "eta": day + timedelta(days=2), "carrier": "DHL",
         "tracking_url": "https://tracking.example/dhl/JD014600003828"},
        {"order_id": "A1002", "customer_email": ana, "status": "delivered", "currency": "EUR",
         "items": [item("BTL-1L", "Insulated bottle 1 l", 1, 34.9)],
         "total": 34.9, "placed_at": placed(21), "eta": day - timedelta(days=16), "carrier": "DPD",
         "tracking_url": "https://tracking.example/dpd/01505012345678"},
        {"order_id": "A1003", "customer_email": ben, "status": "processing", "currency": "EUR",
         "items": [item("BOOT-M44", "Ridge hiking boots, size 44", 1, 149.0)],
         "total": 149.0, "placed_at": placed(1), "eta": day + timedelta(days=5), "carrier": None,
         "tracking_url": None},
        {"order_id": "A1004", "customer_email": ben, "status": "delayed", "currency": "EUR",
         "items": [item("JKT-L", "Storm rain jacket, L", 1, 219.0), item("GLV-M", "Fleece gloves, M", 1, 24.0)],
         "total": 243.0, "placed_at": placed(9), "eta": day + timedelta(days=4), "carrier": "UPS",
         "tracking_url": "https://tracking.example/ups/1Z999AA10123456784",
         "note": "held at the sorting centre after a weather delay"},
        {"order_id": "A1005", "customer_email": ben, "status": "cancelled", "currency": "EUR",
         "items": [item("PACK-45", "Summit 45 l backpack", 1, 129.0)],
         "total": 129.0, "placed_at": placed(30), "eta": None, "carrier": None, "tracking_url": None,
         "refund": "refunded to the original card"},
        {"order_id": "A1006", "customer_email": chloe, "status": "shipped", "currency": "EUR",
         "items": [item("SBAG-3S", "Three-season sleeping bag", 1, 119.0), item("PAD-R", "Air sleeping pad", 1, 79.0)],
         "total": 198.0, "placed_at": placed(3), "eta": day + timedelta(days=1), "carrier": "GLS",
         "tracking_url": "https://tracking.example/gls/ZX5U7PQ1"},
        {"order_id": "A1007", "customer_email": chloe, "status": "delivered", "currency": "EUR",
         "items": [item("LAMP-H", "Rechargeable head lamp", 2, 39.0)],
         "total": 78.0, "placed_at": placed(45), "eta": day - timedelta(days=40), "carrier": "DHL",
         "tracking_url": "https://tracking.example/dhl/JD014600009911"},
    ]  # fmt: skip


def _when(value: Any, index: int, key: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=UTC)
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(
            f"orders[{index}].{key}: {value!r} is not a date-time; use ISO 8601 like 2025-11-03T10:30:00Z"
        ) from None


def _day(value: Any, index: int, key: str) -> date | None:
    if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
        return value
    if isinstance(value, datetime):
        return value.date()
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ConfigError(f"orders[{index}].{key}: {value!r} is not a date; use ISO 8601 like 2025-11-03") from None


def _row(order: Mapping[str, Any], index: int) -> dict[str, Any]:
    for key in ("order_id", "customer_email", "status"):
        if not order.get(key):
            raise ConfigError(
                f"orders[{index}]: missing {key!r}; every order needs order_id, customer_email and status"
            )
    total = order.get("total")
    return {
        "order_id": str(order["order_id"]).strip(),
        "customer_email": str(order["customer_email"]).strip().lower(),
        "status": str(order["status"]),
        "items": list(order.get("items") or []),
        "total": None if total is None else float(total),
        "currency": order.get("currency"),
        "placed_at": _when(order.get("placed_at"), index, "placed_at"),
        "eta": _day(order.get("eta"), index, "eta"),
        "carrier": order.get("carrier"),
        "tracking_url": order.get("tracking_url"),
        # Whatever else the shop knows about the order travels along untouched.
        "data": {k: v for k, v in order.items() if k not in _COLUMNS} or None,
    }


async def seed_demo_orders(store_or_engine: SQLStore | AsyncEngine, orders: Sequence[Mapping[str, Any]]) -> int:
    """Insert orders into the ``orders`` table, replacing orders with the same ``order_id``.

    Args:
        store_or_engine: an open ``SQLStore`` or its engine.
        orders: dicts with ``order_id``, ``customer_email`` and ``status``; optional ``items``,
            ``total``, ``currency``, ``placed_at``, ``eta``, ``carrier``, ``tracking_url``. Other
            keys are kept in the ``data`` column.

    Returns:
        How many orders were written.

    Raises:
        ConfigError: an order misses a required field or has a malformed date.
        StorageError: the database refused the write.
    """
    engine = store_or_engine.engine if isinstance(store_or_engine, SQLStore) else store_or_engine
    rows = [_row(order, index) for index, order in enumerate(orders)]
    if not rows:
        return 0
    insert = (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(_orders)
    statement = insert.on_conflict_do_update(
        index_elements=[_orders.c.order_id],
        set_={name: insert.excluded[name] for name in (*_COLUMNS[1:], "data")},
    )
    try:
        async with engine.begin() as connection:
            await connection.execute(statement, rows)
    except (SQLAlchemyError, OSError) as exc:
        raise storage_error(exc, engine.url, "seeding orders") from exc
    return len(rows)
