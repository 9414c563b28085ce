"""Schema migrations: Alembic, driven from code against the scripts shipped inside the package.

``supportbot db upgrade`` calls ``upgrade``; ``SQLStore.open`` creates a new database with it
and refuses one whose schema is behind (``check_schema``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from supportbot.errors import StorageError
from supportbot.store._engine import is_memory_sqlite, make_engine, masked, parse_url, storage_error

__all__ = ["check_schema", "current_revision", "database_file", "head_revision", "upgrade"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Two processes starting on one new PostgreSQL database must not both create the tables.
_PG_MIGRATION_LOCK_KEY = 0x5375_7070_6F72_7401  # "Support\x01"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` built in code: no alembic.ini, scripts found next to this module."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser would read '%' in a URL-encoded password as interpolation.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@functools.cache
def head_revision() -> str:
    """The newest revision this supportbot's migrations know."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships its migrations
        raise StorageError(f"no migration scripts found in {MIGRATIONS_DIR}; reinstall supportbot")
    return head


@functools.cache
def _known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions())


def _current_sync(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade_sync(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade_engine(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database behind an open engine to ``revision``, in one transaction."""
    async with engine.begin() as connection:
        # Take the database's write lock first: a second process migrating at the same time waits,
        # then finds the schema current; the DDL runs in this one transaction on both databases.
        if engine.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY})
        else:
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
        await connection.run_sync(_upgrade_sync, revision)


async def current_revision_engine(engine: AsyncEngine) -> str | None:
    """The revision the database behind ``engine`` is at; None for a database without supportbot's schema."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current_sync)


async def check_schema(engine: AsyncEngine, *, create: bool) -> None:
    """Make sure the database has the schema this supportbot needs.

    A database without any revision is created at head when ``create`` is true.

    Raises:
        StorageError: the database has no schema (and ``create`` is false), is behind, or is at
            a revision this supportbot does not know (written by a newer version).
    """
    url = masked(engine.url)
    try:
        current = await current_revision_engine(engine)
        head = head_revision()
        if current == head:
            return
        if current is None:
            if not create:
                raise StorageError(f"database at {url} has no supportbot schema; run `supportbot db upgrade`")
            await upgrade_engine(engine, head)
            return
    except SQLAlchemyError as exc:
        raise storage_error(exc, engine.url, "checking the schema") from exc
    except OSError as exc:
        raise storage_error(exc, engine.url, "connecting") from exc
    if current in _known_revisions():
        raise StorageError(
            f"database at {url} is at revision {current} but this supportbot needs {head}; run `supportbot db upgrade`"
        )
    raise StorageError(
        f"database at {url} is at revision {current}, which this supportbot does not know (it needs {head}); "
        "the database was probably migrated by a newer supportbot: upgrade supportbot"
    )


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (default: the newest).

    Raises:
        StorageError: the database cannot be reached or a migration failed.
    """
    engine = make_engine(parse_url(url))
    try:
        await upgrade_engine(engine, revision)
    except (SQLAlchemyError, OSError) as exc:
        raise storage_error(exc, url, f"upgrading the schema to {revision}") from exc
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at; None when it has no supportbot schema yet.

    Raises:
        StorageError: the database cannot be reached.
    """
    engine = make_engine(parse_url(url))
    try:
        return await current_revision_engine(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise storage_error(exc, url, "reading the schema revision") from exc
    finally:
        await engine.dispose()


def database_file(url: str) -> Path | None:
    """The file of a SQLite database URL, as SQLite opens it (a relative one from the working directory).

    Returns:
        The absolute path; None for an in-memory SQLite database, a ``file:`` URI or a server database.

    Raises:
        StorageError: the URL is malformed or names a database supportbot does not support.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite" or is_memory_sqlite(parsed) or str(parsed.database).startswith("file:"):
        return None
    return Path(str(parsed.database)).absolute()
