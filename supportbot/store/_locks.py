"""Per-conversation locks: in-process asyncio locks, and PostgreSQL advisory locks across workers."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from supportbot.store._engine import storage_error

__all__ = ["KeyedLocks", "advisory_key", "pg_advisory_lock"]

logger = logging.getLogger("supportbot.store")


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class KeyedLocks:
    """One ``asyncio.Lock`` per key, created on demand and dropped when nobody holds or waits for it.

    Waiters get the lock in arrival order (``asyncio.Lock`` is FIFO), so a conversation's turns
    run in the order their messages came in. Memory stays flat however many keys pass through.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``, the same in every process and Python version."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


@asynccontextmanager
async def pg_advisory_lock(engine: AsyncEngine, name: str) -> AsyncIterator[None]:
    """Hold a session-level advisory lock on a connection of ``engine`` for the duration.

    The statements go straight to asyncpg in autocommit mode (one round trip each, and the
    session never sits "idle in transaction" while a turn streams). If locking or unlocking
    fails or is cancelled, the connection is closed instead of pooled: PostgreSQL releases a
    session's locks when it ends, so no lock is ever left behind in the pool.
    """
    key = advisory_key(name)
    try:
        proxied = await engine.raw_connection()
    except (SQLAlchemyError, OSError) as exc:
        raise storage_error(exc, engine.url, "taking a connection for a conversation lock") from exc
    driver: Any = proxied.driver_connection
    healthy = False
    try:
        try:
            await driver.execute("SELECT pg_advisory_lock($1)", key)
        except Exception as exc:
            raise storage_error(exc, engine.url, f"locking conversation {name}") from exc
        try:
            yield
        finally:
            try:
                await driver.execute("SELECT pg_advisory_unlock($1)", key)
                healthy = True
            except Exception:
                # The turn itself is done; closing the session releases the lock just as well.
                logger.warning("unlocking conversation %s failed; closing its connection instead", name, exc_info=True)
    finally:
        if not healthy:
            await greenlet_spawn(proxied.invalidate)
        await greenlet_spawn(proxied.close)
