"""Fixtures of the store tests: one contract, every kind of store."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, text

from supportbot.store.base import Store
from supportbot.store.memory import MemoryStore
from supportbot.store.sql import SQLStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The SQL store on SQLite and on PostgreSQL, and the memory store."""
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), tmp_path / "supportbot.db")
        url = f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    opened = await SQLStore.open(url)
    try:
        yield opened
    finally:
        await opened.close()


async def new_conversation(store: Store, email: str = "ana@example.com") -> str:
    """A new conversation of a new (verified) customer; its id."""
    customer = await store.get_or_create_customer(email=email, verified=True)
    return (await store.create_conversation(customer_id=customer.id, channel="web", flow="general")).id


# The backends write with the drivers' own SQL; tests compare their rows, as stored, with SQLAlchemy's.


async def raw_row(store: SQLStore, table: Table, key: str, value: object) -> dict[str, Any]:
    """A row as the database stores it (text of each column, and SQLite's storage class)."""
    if store.dialect == "sqlite":
        columns = ", ".join(f"{c.name}, typeof({c.name})" for c in table.columns)
    else:
        columns = ", ".join(f"{c.name}::text, pg_typeof({c.name})::text" for c in table.columns)
    async with store._begin("reading a raw row") as connection:
        row = (
            await connection.execute(text(f"SELECT {columns} FROM {table.name} WHERE {key} = :v"), {"v": value})
        ).one()
    names = [n for c in table.columns for n in (c.name, f"{c.name}:type")]
    return dict(zip(names, row, strict=True))


async def sqlalchemy_insert(store: SQLStore, table: Table, values: dict[str, Any]) -> None:
    """Insert a row the way the store's SQLAlchemy statements do (its column types encode the values)."""
    async with store._begin("inserting through SQLAlchemy") as connection:
        await connection.execute(table.insert(), values)
