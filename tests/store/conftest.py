"""Fixtures of the store tests: one contract, every kind of store."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
