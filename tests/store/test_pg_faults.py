"""PostgreSQL restarted under a running store: the store reconnects by itself, without a restart."""

from __future__ import annotations

import pytest

from supportbot.errors import StorageError
from supportbot.store.sql import SQLStore
from tests.pgcluster import PgCluster, pg_cluster

__all__ = ["pg_cluster"]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_store_recovers_after_postgres_restart(pg_cluster: PgCluster, mode: str) -> None:
    url = pg_cluster.create_database("faults")
    store = await SQLStore.open(url)
    try:
        customer = await store.get_or_create_customer(email="c1@example.com")
        conv = await store.create_conversation(customer_id=customer.id, channel="web", flow="main")
        async with store.lock(conv.id):  # the advisory-lock session is open now
            pass
        pg_cluster.stop(mode)
        with pytest.raises(StorageError, match="check that PostgreSQL is running"):
            await store.get_conversation(conv.id)
        pg_cluster.start()
        # Every operation succeeds on its first try: no stale pooled or hot connection surfaces.
        assert (await store.get_conversation(conv.id)) is not None
        for _ in range(10):
            assert (await store.get_conversation(conv.id)) is not None
            await store.create_conversation(customer_id=customer.id, channel="web", flow="main")
        async with store.lock(conv.id):
            pass
    finally:
        await store.close()
