"""Daily model spending (the cost caps in ``limits``), as a part of ``SQLStore``.

Each model call's cost is added with one ``INSERT ... ON CONFLICT DO UPDATE SET cost_usd =
cost_usd + excluded.cost_usd`` over both scopes (the customer's and ``all``), which both SQLite
and PostgreSQL apply atomically: concurrent turns on any number of workers never lose an
addition.
"""

from __future__ import annotations

from datetime import date
from typing import cast

from sqlalchemy import Table, select

from supportbot.store._sqlbase import SQLBase
from supportbot.store.models import SpendingRow
from supportbot.store.spending import ALL, Spent, customer_scope

__all__ = ["SpendingMixin"]

_s = cast(Table, SpendingRow.__table__)


class SpendingMixin(SQLBase):
    """``add_spending`` and ``spending`` (``supportbot.store.spending.SpendingStore``)."""

    async def add_spending(self, customer_id: str, cost_usd: float, *, day: date) -> None:
        """Add ``cost_usd`` to the customer's and everyone's spending of ``day`` in one atomic upsert."""
        insert = self._insert(_s).values(
            [
                {"scope": customer_scope(customer_id), "day": day, "cost_usd": cost_usd},
                {"scope": ALL, "day": day, "cost_usd": cost_usd},
            ]
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[_s.c.scope, _s.c.day], set_={"cost_usd": _s.c.cost_usd + insert.excluded.cost_usd}
        )
        async with self._begin("adding to the daily spending") as connection:
            await connection.execute(upsert)

    async def spending(self, customer_id: str, *, day: date) -> Spent:
        """What the customer and everyone spent on ``day``; 0 for a scope with no row."""
        scope = customer_scope(customer_id)
        query = select(_s.c.scope, _s.c.cost_usd).where(_s.c.day == day, _s.c.scope.in_([scope, ALL]))
        async with self._begin("reading the daily spending") as connection:
            rows = {row.scope: row.cost_usd for row in await connection.execute(query)}
        return Spent(customer=rows.get(scope, 0.0), everyone=rows.get(ALL, 0.0))
