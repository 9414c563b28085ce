"""``ToolContext``: what a tool gets besides the model's arguments.

A parameter annotated ``ToolContext`` (any name) is filled in by the registry and never shown
to the model, so a tool can never be told *who* the customer is by the model: it reads the
verified identity from ``ctx.customer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp

from supportbot._frozen import fast_init
from supportbot.config import Config
from supportbot.store.base import Conversation, Customer, Store
from supportbot.tools.orders import OrderSource


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class ToolContext:
    """The turn a tool call belongs to.

    Attributes:
        customer: the customer as the channel verified them (``verified`` false for self-asserted identities).
        conversation: the conversation the call was made in.
        channel: ``web``, ``slack``, ``email``, ``terminal`` (``supportbot chat``)...
        flow: the name of the flow that offered the tool.
        store: persistence (tickets, conversations).
        config: the whole configuration.
        http: a shared HTTP client session; do not close it.
        orders: the configured order source.
        tool_call_id: the provider's id of this call (stable across retries; usable as an idempotency key).
        now: the current time (timezone-aware) as the engine's clock gives it: read the time from here, not
            from ``datetime.now()``, and a flow test's ``now:`` reaches the tool too.
    """

    customer: Customer
    conversation: Conversation
    channel: str
    flow: str
    store: Store
    config: Config
    http: aiohttp.ClientSession
    orders: OrderSource
    tool_call_id: str
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
