"""supportbot: an LLM customer-support agent with YAML flows, Python tools and real persistence.

What users import lives here; everything else is internal and may change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from supportbot._version import __version__

if TYPE_CHECKING:
    from supportbot.config import Config, load_config
    from supportbot.engine import Engine
    from supportbot.errors import (
        ConfigError,
        ConnectorError,
        LLMConnectionError,
        LLMError,
        LLMHTTPError,
        LLMProtocolError,
        LLMTimeout,
        StorageError,
        SupportbotError,
        ToolRetry,
    )
    from supportbot.events import Event
    from supportbot.flows import Flow, Flows, load_flows
    from supportbot.llm.base import LLM, LLMRequest
    from supportbot.llm.client import OpenAICompatibleLLM
    from supportbot.messages import ChatMessage, ImagePart, ToolCall, Usage
    from supportbot.runtime import Runtime, open_runtime
    from supportbot.store.base import Customer, Store
    from supportbot.tools import Tool, ToolContext, ToolRegistry, ToolResult, default_registry, tool

# Each public name is imported on its first use (PEP 562): `import supportbot` and the CLI start
# fast, and `from supportbot import tool` works as usual.
_LAZY = {
    "Config": "supportbot.config",
    "load_config": "supportbot.config",
    "Engine": "supportbot.engine",
    "ConfigError": "supportbot.errors",
    "ConnectorError": "supportbot.errors",
    "LLMConnectionError": "supportbot.errors",
    "LLMError": "supportbot.errors",
    "LLMHTTPError": "supportbot.errors",
    "LLMProtocolError": "supportbot.errors",
    "LLMTimeout": "supportbot.errors",
    "StorageError": "supportbot.errors",
    "SupportbotError": "supportbot.errors",
    "ToolRetry": "supportbot.errors",
    "Event": "supportbot.events",
    "Flow": "supportbot.flows",
    "Flows": "supportbot.flows",
    "load_flows": "supportbot.flows",
    "LLM": "supportbot.llm.base",
    "LLMRequest": "supportbot.llm.base",
    "OpenAICompatibleLLM": "supportbot.llm.client",
    "ChatMessage": "supportbot.messages",
    "ImagePart": "supportbot.messages",
    "ToolCall": "supportbot.messages",
    "Usage": "supportbot.messages",
    "Runtime": "supportbot.runtime",
    "open_runtime": "supportbot.runtime",
    "Customer": "supportbot.store.base",
    "Store": "supportbot.store.base",
    "Tool": "supportbot.tools",
    "ToolContext": "supportbot.tools",
    "ToolRegistry": "supportbot.tools",
    "ToolResult": "supportbot.tools",
    "default_registry": "supportbot.tools",
    "tool": "supportbot.tools",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'supportbot' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "LLM",
    "ChatMessage",
    "Config",
    "ConfigError",
    "ConnectorError",
    "Customer",
    "Engine",
    "Event",
    "Flow",
    "Flows",
    "ImagePart",
    "LLMConnectionError",
    "LLMError",
    "LLMHTTPError",
    "LLMProtocolError",
    "LLMRequest",
    "LLMTimeout",
    "OpenAICompatibleLLM",
    "Runtime",
    "StorageError",
    "Store",
    "SupportbotError",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolRegistry",
    "ToolResult",
    "ToolRetry",
    "Usage",
    "__version__",
    "default_registry",
    "load_config",
    "load_flows",
    "open_runtime",
    "tool",
]
