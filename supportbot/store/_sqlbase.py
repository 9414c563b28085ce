"""What every part of ``SQLStore`` shares: the engine and the error-translating transaction."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection, StaticPool
from sqlalchemy.util import greenlet_spawn

from supportbot.store._engine import storage_error
from supportbot.store.postgres import PostgresBackend
from supportbot.store.sqlite import SQLiteBackend

try:  # the errors the drivers raise on the hot path (which bypasses SQLAlchemy's wrapping)
    import asyncpg

    _DRIVER_ERRORS: tuple[type[BaseException], ...] = (
        sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
    )  # fmt: skip
    # After these the connection is fine (a refused statement); after the others it may be dead.
    _KEEP_AFTER: tuple[type[BaseException], ...] = (sqlite3.Error, asyncpg.IntegrityConstraintViolationError)
except ImportError:  # pragma: no cover - asyncpg is a dependency, but SQLite works without it
    _DRIVER_ERRORS = (sqlite3.Error, OSError)
    _KEEP_AFTER = (sqlite3.Error,)

__all__ = ["HotPool", "SQLBase", "now"]


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class SQLBase:
    """Holds the engine; ``_begin`` opens a transaction whose database errors become ``StorageError``."""

    def __init__(self, engine: AsyncEngine, url: URL) -> None:
        self._engine = engine
        self._url = url
        # An in-memory SQLite database is one shared connection: transactions must take turns on it.
        self._serial = asyncio.Lock() if isinstance(engine.pool, StaticPool) else None
        # Each dialect's backend owns its SQL: the hot path on the driver, and its part of the SQLAlchemy
        # transactions (locking rows, ``INSERT … ON CONFLICT``, days).
        kind = PostgresBackend if engine.dialect.name == "postgresql" else SQLiteBackend
        self._hot_pool = HotPool(engine, kind.hot_connections, discard_broken=kind.discard_broken)
        self._backend: SQLiteBackend | PostgresBackend = (
            PostgresBackend(url) if kind is PostgresBackend else SQLiteBackend(self._hot_pool)
        )
        self._insert: Callable[..., Any] = self._backend.insert
        self._ticket_opened: list[Callable[[int], None]] = []  # see ``TicketMixin.on_ticket_opened``

    @asynccontextmanager
    async def _begin(self, doing: str, *, write_first: bool = False) -> AsyncIterator[AsyncConnection]:
        """A transaction; a database error inside becomes ``StorageError`` naming ``doing``.

        ``write_first`` is for transactions that read and then write: SQLite then takes the write
        lock up front (``BEGIN IMMEDIATE``) instead of failing with "database is locked" when it
        would have to upgrade a read snapshot that another writer has meanwhile changed.
        """
        try:
            async with self._serial or nullcontext(), self._engine.begin() as connection:
                if write_first:
                    await self._backend.begin_write(connection)
                yield connection
        except (SQLAlchemyError, OSError) as exc:
            raise storage_error(exc, self._url, doing) from exc

    def _driver(self, doing: str) -> _DriverUse:
        """A driver connection (aiosqlite or asyncpg) for the backend's hot path; errors become ``StorageError``."""
        return _DriverUse(self, doing)


class _DriverUse:
    """``SQLBase._driver``: a class rather than a generator, as it wraps every hot-path call (~4 a turn).

    Entering takes the serial lock (an in-memory database) and a pool connection; leaving gives the
    connection back, discarded when the call failed in a way that may have left it broken
    (cancelled mid-call, or a driver error other than a refused statement), and turns a driver
    error into ``StorageError`` naming ``doing``.
    """

    __slots__ = ("_base", "_connection", "_doing", "_serial")

    def __init__(self, base: SQLBase, doing: str) -> None:
        self._base = base
        self._doing = doing
        self._serial = base._serial
        self._connection: Any = None

    async def __aenter__(self) -> Any:
        serial = self._serial
        if serial is not None:
            await serial.acquire()
        try:
            self._connection = await self._base._hot_pool.acquire(self._doing)
        except BaseException:
            if serial is not None:
                serial.release()
            raise
        return self._connection

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        base = self._base
        # Cancelled mid-call (not an ``Exception``): the connection's state is unknown.
        broken = exc is not None and (
            (isinstance(exc, _DRIVER_ERRORS) and not isinstance(exc, _KEEP_AFTER)) or not isinstance(exc, Exception)
        )
        try:
            await base._hot_pool.release(self._connection, broken=broken)
        finally:
            if self._serial is not None:
                self._serial.release()
        if isinstance(exc, _DRIVER_ERRORS):
            raise storage_error(exc, base._url, self._doing) from exc


class HotPool:
    """A few driver connections held out of SQLAlchemy's pool for the hot path.

    Taking one is a list pop instead of two greenlet round trips through SQLAlchemy's pool.
    SQLite gets one connection (its worker thread runs one transaction at a time anyway);
    PostgreSQL up to ``size``. A connection that failed is given back to SQLAlchemy to close.
    """

    def __init__(self, engine: AsyncEngine, size: int, *, discard_broken: bool) -> None:
        self._engine = engine
        self._free: list[PoolProxiedConnection] = []
        self._held: dict[int, PoolProxiedConnection] = {}
        self._slots = asyncio.Semaphore(size)
        self._discard_broken = discard_broken

    async def acquire(self, doing: str) -> Any:
        await self._slots.acquire()
        try:
            proxied = self._free.pop() if self._free else await self._engine.raw_connection()
            while _is_closed(proxied.driver_connection):  # the server restarted while it was idle
                await greenlet_spawn(proxied.invalidate)
                proxied = self._free.pop() if self._free else await self._engine.raw_connection()
        except BaseException as exc:
            self._slots.release()
            if isinstance(exc, SQLAlchemyError | OSError):
                raise storage_error(exc, self._engine.url, doing) from exc
            raise
        driver = proxied.driver_connection
        self._held[id(driver)] = proxied
        return driver

    async def release(self, driver: Any, *, broken: bool) -> None:
        proxied = self._held.pop(id(driver), None)
        if proxied is None:
            return  # cancelled while lent (see ``lent``): it is back in the pool already
        try:
            if broken and self._discard_broken:
                await greenlet_spawn(proxied.invalidate)
                await greenlet_spawn(proxied.close)
            else:
                self._free.append(proxied)
        finally:
            self._slots.release()

    @asynccontextmanager
    async def lent(self, driver: Any) -> AsyncIterator[None]:
        """Put a held connection back in the pool for the duration, then take that same one again.

        For a call that must wait (the SQLite hot path sleeping on another connection's write
        lock) and should not make every other call wait with it. The connection must be idle (no
        open transaction). Only for a one-connection pool: with more, another call may hold this
        connection when the slot comes back.
        """
        proxied = self._held.pop(id(driver))
        self._free.append(proxied)
        self._slots.release()
        try:
            yield
        finally:
            # Cancelled while waiting for the slot: the caller holds nothing, and ``release`` knows it.
            await self._slots.acquire()
            self._free.remove(proxied)
            self._held[id(driver)] = proxied

    async def close(self) -> None:
        """Give every idle connection back to SQLAlchemy's pool (call before disposing the engine)."""
        free, self._free = self._free, []
        for proxied in free:
            await greenlet_spawn(proxied.close)


def _is_closed(driver: Any) -> bool:
    """True for an asyncpg connection that noticed its server went away (no round trip)."""
    is_closed = getattr(driver, "is_closed", None)
    return bool(is_closed()) if callable(is_closed) else False
