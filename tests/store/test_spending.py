"""Daily spending for the cost caps: one contract over SQLite, PostgreSQL and the memory store."""

from __future__ import annotations

import asyncio
from datetime import date

from supportbot.store.base import Store
from supportbot.store.spending import SpendingStore, Spent
from supportbot.store.sql import SQLStore

TODAY = date(2026, 12, 4)


def spending(store: Store) -> SpendingStore:
    assert isinstance(store, SpendingStore)
    return store


async def test_nothing_spent_reads_as_zero(any_store: Store) -> None:
    assert await spending(any_store).spending("c1", day=TODAY) == Spent(customer=0.0, everyone=0.0)


async def test_costs_add_up_per_customer_day_and_in_all(any_store: Store) -> None:
    store = spending(any_store)
    await store.add_spending("c1", 0.25, day=TODAY)
    await store.add_spending("c1", 0.5, day=TODAY)
    await store.add_spending("c2", 1.0, day=TODAY)
    await store.add_spending("c1", 4.0, day=date(2026, 12, 5))  # another day: its own sums
    assert await store.spending("c1", day=TODAY) == Spent(customer=0.75, everyone=1.75)
    assert await store.spending("c2", day=TODAY) == Spent(customer=1.0, everyone=1.75)
    assert await store.spending("c1", day=date(2026, 12, 5)) == Spent(customer=4.0, everyone=4.0)


async def test_concurrent_additions_are_never_lost(any_store: Store) -> None:
    store = spending(any_store)
    # 0.125 is exact in binary floating point: the sums must match to the last bit.
    await asyncio.gather(*(store.add_spending(f"c{i % 3}", 0.125, day=TODAY) for i in range(24)))
    totals = [await store.spending(f"c{i}", day=TODAY) for i in range(3)]
    assert totals == [Spent(customer=1.0, everyone=3.0)] * 3


async def test_two_stores_on_one_database_add_up(store: SQLStore) -> None:
    """Two workers (two engines, two connection pools) adding at once to the same rows."""
    other = await SQLStore.open(store._url.render_as_string(hide_password=False))
    try:
        await asyncio.gather(*(s.add_spending("c1", 0.125, day=TODAY) for _ in range(8) for s in (store, other)))
        assert await other.spending("c1", day=TODAY) == Spent(customer=2.0, everyone=2.0)
    finally:
        await other.close()
