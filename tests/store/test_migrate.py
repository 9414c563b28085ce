"""Schema migrations on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from supportbot.errors import StorageError
from supportbot.store import migrate
from supportbot.store._engine import make_engine
from supportbot.store.models import Base
from supportbot.store.sql import SQLStore


async def test_new_database_is_created_at_head(db_url: str) -> None:
    assert await migrate.current_revision(db_url) is None
    store = await SQLStore.open(db_url)
    await store.close()
    assert await migrate.current_revision(db_url) == migrate.head_revision() == "0007"


async def test_upgrade_is_idempotent(db_url: str) -> None:
    await migrate.upgrade(db_url)
    await migrate.upgrade(db_url)
    assert await migrate.current_revision(db_url) == migrate.head_revision()
    store = await SQLStore.open(db_url, create=False)
    await store.close()


async def test_two_processes_creating_one_database_do_not_collide(db_url: str) -> None:
    stores = await asyncio.gather(SQLStore.open(db_url), SQLStore.open(db_url))
    for store in stores:
        await store.close()
    assert await migrate.current_revision(db_url) == migrate.head_revision()


async def test_database_without_schema_is_refused_when_not_creating(db_url: str) -> None:
    with pytest.raises(StorageError, match=r"has no supportbot schema; run `supportbot db upgrade`"):
        await SQLStore.open(db_url, create=False)


async def test_database_behind_is_refused_with_the_fix(db_url: str) -> None:
    await migrate.upgrade(db_url, "0001")  # as left by an older supportbot
    with pytest.raises(StorageError) as caught:
        await SQLStore.open(db_url, create=False)
    assert "is at revision 0001 but this supportbot needs 0007; run `supportbot db upgrade`" in str(caught.value)


async def test_database_from_a_newer_supportbot_is_refused(db_url: str) -> None:
    await migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    finally:
        await engine.dispose()
    with pytest.raises(StorageError, match="f00d, which this supportbot does not know"):
        await SQLStore.open(db_url)


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migration_matches_the_models(db_url: str) -> None:
    await migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_unreachable_database_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match=r"127\.0\.0\.1:1"):
        await migrate.current_revision("postgresql+asyncpg://u:pw@127.0.0.1:1/x")
    with pytest.raises(StorageError, match="upgrading the schema"):
        await migrate.upgrade("postgresql+asyncpg://u:pw@127.0.0.1:1/x")


async def test_0004_closes_all_but_the_oldest_open_handoff_ticket_of_a_conversation(db_url: str) -> None:
    from supportbot.store.models import conversations, customers, tickets

    await migrate.upgrade(db_url, "0003")  # as left by the racing handoffs of an older supportbot
    at = datetime.now(UTC)
    ticket = {"description": "", "priority": "normal", "customer_id": "c1", "created_at": at, "updated_at": at}
    engine = make_engine(db_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(customers.insert(), [{"id": "c1", "verified": True, "created_at": at}])
            await connection.execute(conversations.insert(), [
                {"id": conv, "customer_id": "c1", "channel": "web", "flow": "general", "status": "human",
                 "turns": 1, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "created_at": at, "updated_at": at}
                for conv in ("a", "b")
            ])  # fmt: skip
            await connection.execute(tickets.insert(), [
                ticket | {"id": 1, "subject": "solved", "kind": "handoff", "status": "solved", "conversation_id": "a"},
                ticket | {"id": 2, "subject": "kept", "kind": "handoff", "status": "pending", "conversation_id": "a"},
                ticket | {"id": 3, "subject": "dup", "kind": "handoff", "status": "open", "conversation_id": "a"},
                ticket | {"id": 4, "subject": "request", "kind": "request", "status": "open", "conversation_id": "a"},
                ticket | {"id": 5, "subject": "dup", "kind": "handoff", "status": "open", "conversation_id": "a"},
                ticket | {"id": 6, "subject": "other", "kind": "handoff", "status": "open", "conversation_id": "b"},
            ])  # fmt: skip
    finally:
        await engine.dispose()

    await migrate.upgrade(db_url)

    store = await SQLStore.open(db_url, create=False)
    try:
        statuses = {t.id: t.status for t in await store.list_tickets()}
        assert statuses == {1: "solved", 2: "pending", 3: "closed", 4: "open", 5: "closed", 6: "open"}
        events = await store.ticket_events(3)
        assert [(e.actor, e.action) for e in events] == [("migration", "note"), ("migration", "status")]
        assert events[0].detail == "closed: a second open handoff ticket of its conversation; the handoff is #2"
        assert await store.ticket_events(2) == []
        again = await store.open_handoff_ticket(subject="x", note="requested again", conversation_id="a")
        assert (again.created, again.ticket.id) == (False, 2)
    finally:
        await store.close()


async def test_0005_keeps_the_outbox_rows_and_leaves_their_last_error_empty(db_url: str) -> None:
    from sqlalchemy import JSON, DateTime, column, table

    await migrate.upgrade(db_url, "0004")
    # The outbox as 0004 left it (the model has columns it had not yet).
    old_outbox = table("outbox", column("id"), column("channel"), column("payload", JSON()), column("status"),
                       column("attempts"), column("created_at", DateTime(timezone=True)))  # fmt: skip
    at = datetime.now(UTC)
    engine = make_engine(db_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(old_outbox.insert(), [
                {"id": 1, "channel": "email", "payload": {"text": "hi"}, "status": "failed", "attempts": 5,
                 "created_at": at.replace(tzinfo=None) if db_url.startswith("sqlite") else at},
            ])  # fmt: skip
    finally:
        await engine.dispose()

    await migrate.upgrade(db_url)

    store = await SQLStore.open(db_url, create=False)
    try:
        (row,) = await store.outbox_failed()
        assert (row.id, row.payload, row.attempts, row.last_error) == (1, {"text": "hi"}, 5, None)
    finally:
        await store.close()
