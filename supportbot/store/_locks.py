"""Per-conversation locks: in-process asyncio locks, and PostgreSQL advisory locks across workers."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from supportbot.store._engine import storage_error

__all__ = ["KeyedLocks", "SharedAdvisoryLocks", "advisory_key"]

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


class SharedAdvisoryLocks:
    """Every conversation lock of this process, held as advisory locks on one PostgreSQL session.

    A session may hold any number of advisory locks, so one connection serves all the turns a
    worker runs at once (``KeyedLocks`` already queues the turns of one conversation inside the
    process). When another worker holds a conversation, ``pg_try_advisory_lock`` answers false
    and the turn tries again after a short, growing pause (50 ms up to 1 s): that contention is
    rare, since a conversation's messages usually reach one worker.

    The statements go straight to asyncpg in autocommit mode, one at a time on the session. If
    the session breaks, PostgreSQL releases its locks; the connection is replaced on next use
    and a warning is logged, since turns already running have lost their cross-worker lock.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._proxied: Any = None
        self._io = asyncio.Lock()  # one statement at a time on the session

    async def close(self) -> None:
        await self._drop(broken=False)
        await self._engine.dispose()

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        key = advisory_key(name)
        pause = 0.05
        while not await self._call("SELECT pg_try_advisory_lock($1)", key, f"locking conversation {name}"):
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
        try:
            yield
        finally:
            try:
                await self._call("SELECT pg_advisory_unlock($1)", key, f"unlocking conversation {name}")
            except Exception:
                # The turn is done; a broken session released the lock with everything else.
                logger.warning("unlocking conversation %s failed", name, exc_info=True)

    async def _call(self, sql: str, key: int, doing: str) -> bool:
        async with self._io:
            try:
                if self._proxied is not None and self._proxied.driver_connection.is_closed():
                    # The server restarted while the session was idle; its locks went with it.
                    await self._drop(broken=True)
                if self._proxied is None:
                    self._proxied = await self._engine.raw_connection()
                return bool(await self._proxied.driver_connection.fetchval(sql, key))
            except BaseException as exc:
                # Cancelled or failed mid-statement: the session's state is unknown, so end it
                # (which releases every lock it held) rather than reuse it.
                await self._drop(broken=True)
                if isinstance(exc, Exception):
                    raise storage_error(exc, self._engine.url, doing) from exc
                raise

    async def _drop(self, *, broken: bool) -> None:
        proxied, self._proxied = self._proxied, None
        if proxied is not None:
            if broken:
                logger.warning("the conversation-lock session failed; closing it releases the locks it held")
            await greenlet_spawn(proxied.invalidate)
