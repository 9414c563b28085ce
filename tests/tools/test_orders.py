from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web

from supportbot.config import FileOrders, HttpOrders, SqlOrders
from supportbot.errors import ConfigError
from supportbot.store._engine import make_engine
from supportbot.store.demo import demo_orders, seed_demo_orders
from supportbot.store.sql import SQLStore
from supportbot.tools.orders import (
    FileOrderSource,
    HttpOrderSource,
    OrderSourceError,
    SqlOrderSource,
    make_order_source,
    normalize_order_id,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A1001", "A1001"),
        ("a1001", "A1001"),
        ("  #a1001 ", "A1001"),
        ("Ａ１００１", "A1001"),  # full-width, NFKC
        ("А1001", "A1001"),  # Cyrillic capital A
        ("ВЕ-42", "BE-42"),  # Cyrillic look-alikes
        ("A\u200b1001", "A1001"),  # zero-width space
        ("A–1001", "A-1001"),  # en dash
        ("10002", "10002"),
        ("A" * 40, "A" * 40),
        ("A" * 41, None),
        ("", None),
        ("A 1001", None),
        ("A1001; DROP TABLE orders", None),
        ("../A1001", None),
        ("Ж1001", None),  # Cyrillic without a Latin twin
    ],
)
def test_normalize_order_id(raw: str, expected: str | None) -> None:
    assert normalize_order_id(raw) == expected


# -- file ------------------------------------------------------------------------------------------

CSV = """order_id,customer_email,status,eta,items
A1001,alice@example.com,shipped,2026-12-03,Tent
a1002,bob@example.com,processing,,
"""

YAML_LIST = """
- order_id: A1001
  customer_email: alice@example.com
  status: shipped
  items: [Tent, Stove]
- order_id: A1002
  customer_email: bob@example.com
  status: processing
"""

YAML_MAPPING = """
A1001: {customer_email: alice@example.com, status: shipped, items: [Tent, Stove]}
A1002: {customer_email: bob@example.com, status: processing}
"""

YAML_WRAPPED = "orders:\n" + "".join(f"  {line}\n" for line in YAML_LIST.strip().splitlines())


async def test_file_source_csv(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(CSV, encoding="utf-8")
    source = FileOrderSource(path=path)

    assert await source.get("A1001") == {
        "order_id": "A1001",
        "customer_email": "alice@example.com",
        "status": "shipped",
        "eta": "2026-12-03",
        "items": "Tent",
    }
    assert await source.get("A1002") == {
        "order_id": "a1002",
        "customer_email": "bob@example.com",
        "status": "processing",
        "eta": None,
        "items": None,
    }
    assert await source.get("A9999") is None


@pytest.mark.parametrize("text", [YAML_LIST, YAML_MAPPING, YAML_WRAPPED], ids=["list", "mapping", "orders-key"])
async def test_file_source_yaml_shapes(tmp_path: Path, text: str) -> None:
    path = tmp_path / "orders.yaml"
    path.write_text(text, encoding="utf-8")
    source = FileOrderSource(path=path)

    order = await source.get("A1001")
    assert order == {
        "order_id": "A1001",
        "customer_email": "alice@example.com",
        "status": "shipped",
        "items": ["Tent", "Stove"],
    }


async def test_file_source_custom_fields(tmp_path: Path) -> None:
    path = tmp_path / "orders.yml"
    path.write_text("- {number: X-1, email: c@example.com, status: new}\n", encoding="utf-8")
    source = FileOrderSource(path=path, id_field="number", email_field="email")

    assert await source.get("X-1") == {"order_id": "X-1", "customer_email": "c@example.com", "status": "new"}


async def test_file_source_reloads_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "orders.yaml"
    path.write_text(YAML_LIST, encoding="utf-8")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    source = FileOrderSource(path=path, recheck_s=0)
    assert (await source.get("A1001") or {})["status"] == "shipped"

    path.write_text(YAML_LIST.replace("shipped", "delivered"), encoding="utf-8")
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))

    assert (await source.get("A1001") or {})["status"] == "delivered"


async def test_file_source_looks_at_the_file_at_most_once_per_recheck(tmp_path: Path) -> None:
    path = tmp_path / "orders.yaml"
    path.write_text(YAML_LIST, encoding="utf-8")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    source = FileOrderSource(path=path, recheck_s=3600)
    assert (await source.get("A1001") or {})["status"] == "shipped"

    path.write_text(YAML_LIST.replace("shipped", "delivered"), encoding="utf-8")
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))

    assert (await source.get("A1001") or {})["status"] == "shipped"  # not looked at again within the hour


async def test_file_source_missing_or_bad_file(tmp_path: Path) -> None:
    with pytest.raises(OrderSourceError, match=r"orders.path: cannot read .*missing.yaml"):
        await FileOrderSource(path=tmp_path / "missing.yaml").get("A1")

    bad = tmp_path / "bad.yaml"
    bad.write_text("- [unclosed\n", encoding="utf-8")
    with pytest.raises(OrderSourceError, match=r"is not valid YAML"):
        await FileOrderSource(path=bad).get("A1")

    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n", encoding="utf-8")
    with pytest.raises(OrderSourceError, match=r"must hold a list of orders or a mapping"):
        await FileOrderSource(path=scalar).get("A1")

    with pytest.raises(ConfigError, match=r"is neither .csv nor .yaml"):
        FileOrderSource(path=tmp_path / "orders.json")


# -- HTTP ------------------------------------------------------------------------------------------

ServerFactory = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    """Start an aiohttp app on 127.0.0.1 and return its base URL; stopped after the test."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def shop(serve: ServerFactory) -> tuple[str, list[str]]:
    """A fake shop API: GET /api/orders/{id} with a Bearer token; records the raw paths it saw."""
    seen: list[str] = []

    async def order(request: web.Request) -> web.StreamResponse:
        seen.append(request.raw_path)
        if request.headers.get("Authorization") != "Bearer s3cret":
            return web.json_response({"error": "unauthorised"}, status=401)
        order_id = request.match_info["order_id"]
        if order_id == "A1001":
            return web.json_response({"id": "A1001", "email": "alice@example.com", "status": "shipped"})
        if order_id == "BROKEN":
            return web.Response(status=502, text="bad gateway")
        if order_id == "HTML":
            return web.Response(text="<html>maintenance</html>", content_type="text/html")
        if order_id == "LIST":
            return web.json_response([1, 2])
        return web.json_response({"error": "not found"}, status=404)

    app = web.Application()
    app.router.add_get("/api/orders/{order_id}", order)
    return await serve(app), seen


async def test_http_source_finds_an_order_with_the_auth_header(
    shop: tuple[str, list[str]], http: aiohttp.ClientSession
) -> None:
    base, seen = shop
    source = make_order_source(
        HttpOrders(
            source="http",
            url_template=base + "/api/orders/{order_id}",
            headers={"Authorization": "Bearer s3cret"},
            email_field="email",
        ),
        database_url="sqlite+aiosqlite:///unused.db",
        http=http,
    )

    assert await source.get("A1001") == {
        "id": "A1001",
        "order_id": "A1001",
        "customer_email": "alice@example.com",
        "status": "shipped",
    }
    assert await source.get("A404") is None
    assert seen == ["/api/orders/A1001", "/api/orders/A404"]
    await source.aclose()
    assert not http.closed  # the session belongs to the caller


async def test_http_source_quotes_the_order_id(shop: tuple[str, list[str]], http: aiohttp.ClientSession) -> None:
    base, seen = shop
    source = HttpOrderSource(
        url_template=base + "/api/orders/{order_id}?expand=items",
        headers={"Authorization": "Bearer s3cret"},
        http=http,
    )

    assert await source.get("A/1 2?x=#") is None
    [raw] = seen
    path, query = raw.split("?", 1)
    segment = path.removeprefix("/api/orders/")
    assert "/" not in segment and "#" not in raw
    assert unquote(segment) == "A/1 2?x=#"
    assert query == "expand=items"


@pytest.mark.parametrize(
    ("order_id", "headers", "message"),
    [
        ("A1001", {}, r"the order service at 127.0.0.1:\d+ answered HTTP 401"),
        ("BROKEN", {"Authorization": "Bearer s3cret"}, r"answered HTTP 502"),
        ("HTML", {"Authorization": "Bearer s3cret"}, r"did not answer with JSON"),
        ("LIST", {"Authorization": "Bearer s3cret"}, r"answered a JSON list, not an order object"),
    ],
)
async def test_http_source_errors_raise(
    shop: tuple[str, list[str]], http: aiohttp.ClientSession, order_id: str, headers: dict[str, str], message: str
) -> None:
    base, _ = shop
    source = HttpOrderSource(url_template=base + "/api/orders/{order_id}?key=SECRETKEY", headers=headers, http=http)

    with pytest.raises(OrderSourceError, match=message) as caught:
        await source.get(order_id)
    assert "SECRETKEY" not in str(caught.value)


async def test_http_source_unreachable(http: aiohttp.ClientSession) -> None:
    source = HttpOrderSource(url_template="http://127.0.0.1:1/orders/{order_id}", http=http)

    with pytest.raises(OrderSourceError, match=r"could not reach the order service at 127.0.0.1:1"):
        await source.get("A1")


def test_http_source_needs_the_placeholder(http: aiohttp.ClientSession) -> None:
    with pytest.raises(ConfigError, match=r"has no '\{order_id\}' placeholder"):
        HttpOrderSource(url_template="https://shop.example/orders/{id}", http=http)


# -- SQL -------------------------------------------------------------------------------------------


def make_shop_db(path: Path, ddl: str, rows: list[tuple[Any, ...]]) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute(ddl)
        placeholders = ",".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO shop_orders VALUES ({placeholders})", rows)
    conn.close()
    return f"sqlite+aiosqlite:///{path}"


async def test_sql_source_reads_a_real_sqlite_table(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    url = make_shop_db(
        tmp_path / "shop.db",
        "CREATE TABLE shop_orders (number TEXT PRIMARY KEY, email TEXT, status TEXT, items TEXT, total REAL)",
        [
            ("A1001", "alice@example.com", "shipped", '["Tent"]', 199.5),
            ("A1002'; DROP TABLE shop_orders; --", "x@example.com", "new", "[]", 1.0),
        ],
    )
    source = make_order_source(
        SqlOrders(source="sql", table="shop_orders", id_column="number", email_column="email"),
        database_url=url,
        http=http,
    )
    try:
        assert await source.get("A1001") == {
            "order_id": "A1001",
            "customer_email": "alice@example.com",
            "status": "shipped",
            "items": '["Tent"]',
            "total": 199.5,
        }
        assert await source.get("A404") is None
        assert await source.get("A1002'; DROP TABLE shop_orders; --") is not None  # a bound parameter, not SQL
        assert await source.get("A1001") is not None
    finally:
        await source.aclose()


async def test_sql_source_missing_table_or_column(tmp_path: Path) -> None:
    url = make_shop_db(tmp_path / "shop.db", "CREATE TABLE shop_orders (ref TEXT)", [("A1",)])
    missing_table = SqlOrderSource(url=url, table="orders")
    missing_column = SqlOrderSource(url=url, table="shop_orders")
    try:
        with pytest.raises(OrderSourceError, match=r"there is no table 'orders' in sqlite\+aiosqlite:///"):
            await missing_table.get("A1")
        with pytest.raises(OrderSourceError, match=r"has no column 'order_id'; its columns are ref"):
            await missing_column.get("A1")
    finally:
        await missing_table.aclose()
        await missing_column.aclose()


async def test_make_order_source_file(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    path = tmp_path / "orders.yaml"
    path.write_text(YAML_LIST, encoding="utf-8")
    source = make_order_source(FileOrders(source="file", path=path), database_url="unused", http=http)

    assert isinstance(source, FileOrderSource)
    assert (await source.get("a1002") or {})["status"] == "processing"
    await source.aclose()


async def test_sql_source_reads_the_stores_own_orders_table(store: SQLStore, db_url: str) -> None:
    await seed_demo_orders(store, demo_orders(date(2026, 12, 1)))
    source = make_order_source(SqlOrders(source="sql"), database_url=db_url, http=None)  # type: ignore[arg-type]
    try:
        order = await source.get("A1001")
        assert order is not None
        assert (order["order_id"], order["customer_email"], order["status"], order["carrier"]) == (
            "A1001",
            "ana@example.com",
            "shipped",
            "DHL",
        )
        assert order["items"][0]["sku"] == "TNT-2P"
        assert order["eta"] == date(2026, 12, 3)
        assert await source.get("A9999") is None
    finally:
        await source.aclose()


async def test_sql_source_integer_ids_on_every_database(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("CREATE TABLE shop_orders (order_id INTEGER PRIMARY KEY, customer_email TEXT, status TEXT)")
            )
            await conn.execute(
                sa.text("INSERT INTO shop_orders VALUES (:id, :email, :status)"),
                {"id": 10002, "email": "bob@example.com", "status": "delivered"},
            )
    finally:
        await engine.dispose()
    source = SqlOrderSource(url=db_url, table="shop_orders")
    try:
        assert await source.get("10002") == {
            "order_id": "10002",
            "customer_email": "bob@example.com",
            "status": "delivered",
        }
        assert await source.get("A10002") is None  # never sent to an integer column
    finally:
        await source.aclose()


async def test_sql_source_unreachable_database_names_it_without_password() -> None:
    source = SqlOrderSource(url="postgresql+asyncpg://shop:hunter2@127.0.0.1:1/shop", table="orders")
    try:
        with pytest.raises(OrderSourceError, match=r"orders database at postgresql\+asyncpg://shop:\*\*\*@127.0.0.1:1"):
            await source.get("A1")
    finally:
        await source.aclose()
