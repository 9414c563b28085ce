"""The built-in tools: ``lookup_order``, ``create_ticket`` and ``handoff_to_human``.

Their docstrings are what the model reads. Authorisation never depends on the model: the
customer is ``ctx.customer`` as the channel verified them, and another customer's order gives
exactly the answer a missing one gives, so order numbers can't be probed.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field

from supportbot.errors import ToolRetry
from supportbot.tools.context import ToolContext
from supportbot.tools.decorator import Tool, tool
from supportbot.tools.orders import normalize_order_id
from supportbot.tools.result import Handoff

ORDER_FIELDS = (
    "order_id", "status", "items", "eta", "carrier", "tracking_url", "placed_at", "shipped_at", "delivered_at",
    "total", "currency",
)  # fmt: skip
"""What ``lookup_order`` shows the model; everything else in the order (email, address) stays out."""


@tool(timeout=10, requires_verified=True, read_only=True)
async def lookup_order(ctx: ToolContext, order_id: str) -> dict[str, Any] | str:
    """Look up one of the customer's orders: its status, items, delivery estimate and tracking link.

    Only works for a customer whose identity and email address are verified; the result says so
    otherwise. Use the order number exactly as the customer gave it.

    Args:
        order_id: The order number, e.g. A1001.
    """
    customer = ctx.customer
    if not customer.verified:
        return (
            "The customer's identity is not verified, so no order details can be shared. Ask them to sign in "
            "(or write from the email address they ordered with), or offer to create a ticket for the team."
        )
    if not customer.email:
        # Orders belong to an email address; a sign-in that proved only a user id does not prove one.
        return (
            "The customer is signed in, but their email address is not verified, so no order details can be "
            "shared. Offer to create a ticket for the team, who can check the order with them."
        )
    normalized = normalize_order_id(order_id)
    if normalized is None:
        raise ToolRetry("order numbers look like A1001")
    order = await ctx.orders.get(normalized)
    owner = str((order or {}).get("customer_email") or "").strip().casefold()
    if order is None or owner != customer.email.strip().casefold():
        # The same words for "missing" and "someone else's": nothing to learn from trying numbers.
        return f"no order {normalized} found for this customer"
    shown = {key: _decode_json_text(order[key]) for key in ORDER_FIELDS if order.get(key) is not None}
    shown["order_id"] = normalized
    return shown


@tool(confirm="Shall I open a ticket “{subject}” for the team?")
async def create_ticket(
    ctx: ToolContext,
    subject: Annotated[str, Field(min_length=1, max_length=200)],
    description: Annotated[str, Field(min_length=1, max_length=5000)],
    priority: Literal["low", "normal", "high", "urgent"] = "normal",
) -> dict[str, Any]:
    """Open a support ticket so a person from the team follows up with the customer.

    Use it when you cannot solve the request yourself (refunds, damaged goods, account changes)
    and the customer agrees. One ticket per problem: do not open another for the same request.

    Args:
        subject: A short summary, e.g. "Damaged tent pole, order A1001".
        description: What the customer needs and every detail they gave (order numbers, dates, what was tried).
        priority: "urgent" only for safety issues or an event about to be missed; usually "normal".
    """
    # The cap (limits.tickets_per_customer_per_day) is per customer, over all their conversations; more
    # is a model in a loop, not a customer need. An unverified customer's record is whoever claimed that
    # email or id, so there one visitor must not use up another's tickets: the cap counts the conversation.
    # The store counts and opens in one atomic step.
    opened = await ctx.store.create_ticket_capped(
        per="customer" if ctx.customer.verified else "conversation",
        cap=ctx.config.limits.tickets_per_customer_per_day,
        subject=subject.strip(),
        description=description.strip(),
        kind="request",
        priority=priority,
        conversation_id=ctx.conversation.id,
        customer_id=ctx.customer.id,
        channel=ctx.channel,
        flow=ctx.flow,
        actor="bot",
    )
    latest = opened.ticket
    if not opened.created:
        raise ToolRetry(
            f"no ticket was opened: this customer already has the most tickets that can be opened in a day; "
            f"their latest is #{latest.id} ({latest.status}), so tell the customer their request is recorded "
            f"under #{latest.id}"
        )
    return {"ticket_id": latest.id, "status": latest.status}


@tool
async def handoff_to_human(ctx: ToolContext, reason: Annotated[str, Field(min_length=1, max_length=2000)]) -> Handoff:
    """Hand the conversation to a human support agent; the assistant stops answering in it.

    Use it when the customer asks for a person, is upset, or needs something only staff can do.
    Afterwards, tell the customer a person will reply here.

    Args:
        reason: Why a person is needed, in one or two sentences, for the agent who takes over.
    """
    conversation = ctx.conversation
    # One open handoff ticket per conversation, however many calls race: the store opens it or adds the note.
    opened = await ctx.store.open_handoff_ticket(
        subject=f"Handoff: {_shorten(reason, 80)}",
        description=reason,
        note=f"handoff requested again: {reason}",
        conversation_id=conversation.id,
        customer_id=ctx.customer.id,
        channel=ctx.channel,
        flow=ctx.flow,
        actor="bot",
    )
    ticket = opened.ticket
    await ctx.store.update_conversation(conversation.id, status="human")
    return Handoff(
        target="human",
        message=(
            f"The conversation was handed to a human agent (ticket #{ticket.id}). Tell the customer that a person "
            "will reply here; do not try to solve the request yourself any more."
        ),
        data={"ticket_id": ticket.id, "reason": reason},
    )


BUILTIN_TOOLS: tuple[Tool[..., Any], ...] = (lookup_order, create_ticket, handoff_to_human)


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _decode_json_text(value: Any) -> Any:
    """A column that stores JSON as text (``items`` in a plain SQL table) decoded; anything else as is."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
