"""What the engine needs of a store for the daily cost caps (``limits.max_cost_usd_per_customer_per_day``,
``limits.max_cost_usd_per_day``): add what a model call cost, read what was spent today."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Protocol, runtime_checkable

__all__ = ["ALL", "SpendingStore", "Spent", "customer_scope"]

ALL = "all"
"""The scope of everyone's spending together."""


def customer_scope(customer_id: str) -> str:
    """The scope of one customer's spending."""
    return f"customer:{customer_id}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Spent:
    """US dollars spent on model calls on one UTC day.

    Attributes:
        customer: by one customer, in all their conversations.
        everyone: by all customers together.
    """

    customer: float
    everyone: float


@runtime_checkable
class SpendingStore(Protocol):
    """Daily spending per customer and in all; ``SQLStore`` and ``MemoryStore`` have it."""

    async def add_spending(self, customer_id: str, cost_usd: float, *, day: date) -> None:
        """Add ``cost_usd`` to the customer's and everyone's spending of ``day``, atomically (concurrent
        calls from any number of workers all count)."""
        ...

    async def spending(self, customer_id: str, *, day: date) -> Spent:
        """What the customer and everyone spent on ``day``."""
        ...
