"""This project's own tools: plain Python functions the model may call.

supportbot imports this module because config.yaml names it (`tools: {modules: [tools]}`), and every
function decorated with `@tool` here becomes a tool. A flow offers a tool to the model only when it
lists it under `tools:`; flows/general.yaml lists `shipping_cost`. After a change, run
`supportbot validate` (it imports this file and checks every flow's tools) and `supportbot test`.

How a function becomes a tool:
- its name is the tool's name;
- its docstring is what the model reads to decide when and how to call it: the first paragraph says
  what the tool does, `Args:` describes each argument (so write them for the model, with examples);
- its type hints become the JSON schema of the arguments: `Literal[...]` is a fixed set of values,
  an argument with a default is optional, and arguments are checked before the function runs;
- a parameter annotated `ToolContext` is filled in by supportbot and never shown to the model:
  the customer as the channel verified them (`ctx.customer`), the channel, this configuration
  (`ctx.config`), a shared HTTP session (`ctx.http`), the order source and the database;
- what it returns (a dict, a list, a string) goes back to the model as JSON. An exception goes back as
  an error the model can explain to the customer; `raise ToolRetry("...")` tells the model how to
  call again.

A tool that waits on the network or a database should be `async def` and use `ctx.http`; a plain `def`
like the one below runs in a worker thread. A tool that shows or changes a customer's own data (orders,
addresses) takes `@tool(requires_verified=True)` and checks `ctx.customer.verified`; one that changes
something (a refund, a cancellation) is listed under a flow's `confirm:` so the customer says yes first.
One that only looks things up, like this one, can take `read_only=True`: its calls are then stored with
the answer that follows them, one database write fewer per turn.
"""

from __future__ import annotations

from typing import Any, Literal

from supportbot import ToolContext, tool

# The countries we ship to. As a Literal they are an enum in the tool's schema: the model can only
# pick one of these codes, and the demo rules in flows/general.yaml map "Canada" to "CA".
Country = Literal["US", "CA", "MX"]

# Standard shipping per country: the name the customer reads, the price in US dollars, business days.
RATES: dict[str, tuple[str, float, str]] = {
    "US": ("the United States", 6.95, "3-5"),
    "CA": ("Canada", 14.95, "5-8"),
    "MX": ("Mexico", 19.95, "7-12"),
}


@tool(timeout=5, read_only=True)  # seconds; a slower call is stopped and the model is told it timed out
def shipping_cost(ctx: ToolContext, country: Country, order_total: float | None = None) -> dict[str, Any]:
    """Work out the cost and delivery time of standard shipping to a country.

    Args:
        country: Where the parcel goes: US (United States), CA (Canada) or MX (Mexico).
        order_total: What the items cost in US dollars, if the customer said it, e.g. 120.
            Orders worth at least the free-shipping threshold ship free.
    """
    destination, price, days = RATES[country]
    # Settings the shop changes belong in config.yaml, not in code: `company` reaches tools as it is.
    free_over = float(ctx.config.company.get("free_shipping_over", 100))
    free = order_total is not None and order_total >= free_over
    return {
        "destination": destination,
        "cost": "free" if free else f"${price:.2f}",
        "delivery_days": days,
        "free_shipping_over": f"${free_over:.2f}",
    }
