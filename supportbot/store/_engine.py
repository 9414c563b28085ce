"""Creating SQLAlchemy engines the way supportbot needs them, and turning driver errors into ``StorageError``.

Shared by the store, the migration runner and Alembic's ``env.py`` so all three talk to the
database with the same settings.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from supportbot.errors import StorageError
from supportbot.store.models import json_dumps

__all__ = ["is_memory_sqlite", "make_engine", "masked", "parse_url", "storage_error"]

SQLITE_BUSY_TIMEOUT_MS = 5000
_SUPPORTED = "sqlite+aiosqlite:///supportbot.db or postgresql+asyncpg://user:password@host/dbname"


def masked(url: str | URL) -> str:
    """The URL as text with its password replaced by ``***`` (safe for logs and error messages)."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except ArgumentError:
        return "<unparsable database url>"
    return parsed.render_as_string(hide_password=True)


def parse_url(url: str) -> URL:
    """Parse a database URL, adding the async driver when only the database is named.

    ``sqlite:///x.db`` becomes ``sqlite+aiosqlite:///x.db`` and ``postgresql://…`` (or
    ``postgres://…``) becomes ``postgresql+asyncpg://…``.

    Raises:
        StorageError: the URL is malformed or names a database supportbot does not support.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StorageError(f"database url {url!r} is not a valid URL ({exc}); use e.g. {_SUPPORTED}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "aiosqlite"):
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres") and driver in ("", "asyncpg"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise StorageError(
        f"database url {masked(parsed)} names {parsed.drivername!r}, which supportbot does not support; "
        f"use e.g. {_SUPPORTED}"
    )


def is_memory_sqlite(url: URL) -> bool:
    """True for an in-memory SQLite database (each connection would see its own empty database)."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def make_engine(
    url: str | URL, *, echo: bool = False, pool_size: int = 5, max_overflow: int = 15, pool_timeout: float = 30.0
) -> AsyncEngine:
    """Create an engine for a supportbot database.

    SQLite connections get WAL, ``synchronous=NORMAL``, a busy timeout and foreign keys; an
    in-memory database keeps one connection (``StaticPool``). For PostgreSQL, a ``search_path``
    query parameter in the URL (``…/db?search_path=tenant1``) is sent as a server setting,
    since asyncpg takes no such connect argument.

    Args:
        url: the database URL.
        echo: log every SQL statement.
        pool_size, max_overflow, pool_timeout: PostgreSQL pool settings.
    """
    parsed = url if isinstance(url, URL) else parse_url(url)
    options: dict[str, Any] = {"echo": echo, "json_serializer": json_dumps}
    if parsed.get_backend_name() == "sqlite":
        memory = is_memory_sqlite(parsed)
        if memory:
            options["poolclass"] = StaticPool
        # No rollback when a connection goes back to the pool: with aiosqlite it costs a thread hop
        # on every checkout, and nothing needs it: SQLAlchemy connections roll back their own open
        # transactions on close, and the backend's hot path (``sqlite.py``) commits or rolls back in its thread.
        # The store's hot path runs short transactions on the event loop's thread, on a connection
        # aiosqlite opened in its own thread (see ``sqlite.SQLiteBackend``); it never uses one
        # connection from two threads at once.
        options["connect_args"] = {"check_same_thread": False}
        engine = create_async_engine(parsed, pool_reset_on_return=None, **options)
        _configure_sqlite(engine, wal=not memory)
        return engine
    server_settings = {"application_name": "supportbot"}
    query = dict(parsed.query)
    search_path = query.pop("search_path", None)
    if search_path:
        server_settings["search_path"] = search_path if isinstance(search_path, str) else ",".join(search_path)
    parsed = parsed.set(query=query)
    return create_async_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
        # After a PostgreSQL restart every pooled connection is dead; a ping on checkout replaces
        # it instead of failing the caller's statement (the hot path checks ``is_closed`` instead).
        pool_pre_ping=True,
        connect_args={"server_settings": server_settings},
        **options,
    )


def _configure_sqlite(engine: AsyncEngine, *, wal: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode")
            if wal and str(cursor.fetchone()[0]).lower() != "wal":
                # WAL lets readers run while one writer writes. The mode is stored in the file, so
                # when another connection holds the lock right now (it is switching the mode
                # itself, or migrating), the file already is or is about to be in WAL mode.
                try:
                    cursor.execute("PRAGMA journal_mode=WAL")
                except Exception as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
            # NORMAL is durable across application crashes (only a power cut may lose the last
            # commits) and saves an fsync per commit.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()


def _is_connection_trouble(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError | sqlite3.OperationalError | OperationalError | InterfaceError):
        return True
    if isinstance(exc, SATimeoutError):  # no free pooled connection in time
        return True
    # asyncpg's own errors (raised on the hot path, which bypasses SQLAlchemy's wrapping)
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"InterfaceError", "PostgresConnectionError", "CannotConnectNowError"})


def storage_error(exc: BaseException, url: str | URL, doing: str) -> StorageError:
    """A ``StorageError`` for a failed database operation naming the database (password masked) and a fix.

    Only the first line of the driver's message is kept: later lines may quote the values of the
    statement, i.e. customer data, which must not reach logs.
    """
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip()
    reason = text.splitlines()[0] if text else type(cause).__name__
    target = masked(url)
    if not _is_connection_trouble(exc) and not _is_connection_trouble(cause):
        hint = "the database refused the change; if the schema may be out of date, run `supportbot db upgrade`"
    elif target.startswith("sqlite"):
        hint = "check that the file's directory exists and is writable, and that no other program holds a lock"
    else:
        hint = "check that PostgreSQL is running and reachable, and the user, password and database name in the URL"
    return StorageError(f"database at {target}: {doing} failed: {reason}; {hint}")
