"""Tools: typed Python functions the model may call.

``@tool`` turns a function into a ``Tool``; a ``ToolRegistry`` holds a deployment's tools,
gives a flow's allowlist as OpenAI definitions and runs calls safely; ``default_registry()``
starts with the built-ins (``lookup_order``, ``create_ticket``, ``handoff_to_human``).
"""

from __future__ import annotations

from supportbot.errors import ToolRetry
from supportbot.tools.context import ToolContext
from supportbot.tools.decorator import Tool, tool
from supportbot.tools.orders import OrderSource, OrderSourceError, make_order_source, normalize_order_id
from supportbot.tools.registry import ToolRegistry, default_registry
from supportbot.tools.result import Handoff, ToolResult

__all__ = [
    "Handoff",
    "OrderSource",
    "OrderSourceError",
    "Tool",
    "ToolContext",
    "ToolRegistry",
    "ToolResult",
    "ToolRetry",
    "default_registry",
    "make_order_source",
    "normalize_order_id",
    "tool",
]
