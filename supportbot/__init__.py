"""supportbot: an LLM customer-support agent with YAML flows, Python tools and real persistence.

What users import lives here; everything else is internal and may change.
"""

from __future__ import annotations

from supportbot._version import __version__
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
