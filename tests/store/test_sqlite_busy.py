"""SQLite held by another connection: the store's writes wait for its write lock, then succeed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from supportbot.store.sql import SQLStore

HOLD_S = 2.0


def _hold_write_lock(path: Path, held: threading.Event, seconds: float) -> None:
    """Another writer (as another process would be): ``BEGIN IMMEDIATE``, a write, commit after ``seconds``."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE customers SET name = 'held' WHERE 0")
        held.set()
        time.sleep(seconds)
        db.execute("COMMIT")
    finally:
        db.close()


async def test_writes_wait_for_another_connections_write_lock_then_succeed(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    store = await SQLStore.open(f"sqlite+aiosqlite:///{path}")
    try:
        customer = await store.get_or_create_customer(email="ana@example.com")
        held = threading.Event()
        holder = asyncio.create_task(asyncio.to_thread(_hold_write_lock, path, held, HOLD_S))
        await asyncio.to_thread(held.wait, 10)
        started = time.monotonic()
        # Both write paths: the hot path (raw aiosqlite) and a SQLAlchemy transaction.
        conversation = await store.create_conversation(customer_id=customer.id, channel="web", flow="general")
        other = await store.get_or_create_customer(email="bo@example.com")
        waited = time.monotonic() - started
        await holder
        assert waited >= HOLD_S * 0.8, f"the writes did not wait for the lock ({waited:.2f} s)"
        assert (await store.get_conversation(conversation.id)) is not None
        assert other.id != customer.id
    finally:
        await store.close()
