"""``ToolRegistry``: the tools a deployment has, their schemas, and running one call safely.

A call never raises for what the model or the tool did wrong: an unknown tool, invalid JSON,
bad arguments, a timeout, ``ToolRetry`` or any exception in the tool become an error
``ToolResult`` the model reads and can react to. Only ``asyncio.CancelledError`` (the turn is
being cancelled) goes through.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from supportbot._json import loads
from supportbot.errors import ConfigError, ToolRetry
from supportbot.messages import ToolCall
from supportbot.tools.builtin import BUILTIN_TOOLS
from supportbot.tools.context import ToolContext
from supportbot.tools.decorator import RESERVED_PREFIX, Tool, describe, make_tool
from supportbot.tools.result import Handoff, ToolResult, to_content
from supportbot.tools.schema import format_validation_error

logger = logging.getLogger("supportbot.tools")

DEFAULT_TIMEOUT_S = 15.0
LOCAL_PACKAGE = "supportbot_local_tools"
"""Files of a tools directory are imported as ``supportbot_local_tools.<stem>``."""


class ToolRegistry:
    """The tools known to one deployment.

    Args:
        tools: tools (or plain functions, wrapped with ``@tool``) to register right away.
        default_timeout: seconds a call may take when neither the tool nor the caller says.
    """

    def __init__(
        self, tools: Iterable[Tool[..., Any] | Callable[..., Any]] = (), *, default_timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self._tools: dict[str, Tool[..., Any]] = {}
        self._schemas: dict[tuple[tuple[str, ...], bool], list[dict[str, Any]]] = {}
        self.default_timeout = default_timeout
        for item in tools:
            self.register(item)

    def register(self, tool_or_function: Tool[..., Any] | Callable[..., Any]) -> Tool[..., Any]:
        """Add a tool; a plain function is made a tool first. Registering the same tool twice is a no-op.

        Raises:
            ConfigError: another tool already has the name, or the name is reserved.
        """
        item = tool_or_function if isinstance(tool_or_function, Tool) else make_tool(tool_or_function)
        existing = self._tools.get(item.name)
        if existing is item:
            return item
        if existing is not None:
            raise ConfigError(
                f"tool {describe(item.function)}: the name '{item.name}' is already used by "
                f"{describe(existing.function)}; rename one of them with @tool(name=...)"
            )
        if item.name.startswith(RESERVED_PREFIX):
            raise ConfigError(f"tool {describe(item.function)}: names starting with '{RESERVED_PREFIX}' are reserved")
        self._tools[item.name] = item
        self._schemas.clear()
        return item

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._tools)

    def get(self, name: str) -> Tool[..., Any] | None:
        """The tool called ``name``, or None."""
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool[..., Any]]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def schemas(self, names: Iterable[str], *, verified: bool = True) -> list[dict[str, Any]]:
        """The OpenAI tool definitions of ``names`` (a flow's allowlist), in that order.

        With ``verified=False`` (the customer's identity is not verified) the tools declared
        ``@tool(requires_verified=True)`` are left out: the model is never offered them.
        Cached per tuple of names and ``verified``: this runs on every model request. Treat the
        dicts as read-only.

        Raises:
            ConfigError: a name is not registered.
        """
        names = tuple(names)
        key = (names, verified)
        cached = self._schemas.get(key)
        if cached is None:
            missing = [name for name in names if name not in self._tools]
            if missing:
                unknown = ", ".join(repr(name) for name in missing)
                raise ConfigError(f"unknown tool {unknown}; registered: {', '.join(self._tools) or 'none'}")
            offered = [self._tools[name] for name in names]
            cached = self._schemas[key] = [t.definition for t in offered if verified or not t.requires_verified]
        return list(cached)

    def load_modules(self, module_names: Iterable[str], *, path: str | os.PathLike[str] | None = None) -> list[str]:
        """Import modules and register every ``Tool`` defined or imported at their top level.

        Args:
            module_names: dotted module names (config ``tools.modules``).
            path: a directory put first on ``sys.path`` for the imports; defaults to the working
                directory, which the design promises is importable.

        Returns:
            The names of the tools registered.

        Raises:
            ConfigError: a module can't be imported, or one of its tools is refused.
        """
        directory = os.fspath(path) if path is not None else os.getcwd()
        if directory not in sys.path:
            sys.path.insert(0, directory)
        added: list[str] = []
        for module_name in module_names:
            try:
                module = importlib.import_module(module_name)
            except ConfigError:
                raise
            except ModuleNotFoundError as exc:
                raise ConfigError(
                    f"tools.modules: cannot import {module_name!r}: ModuleNotFoundError: {exc}; "
                    f"is it on the path / is the working directory right? (searched first: {directory})"
                ) from exc
            except Exception as exc:
                raise ConfigError(
                    f"tools.modules: cannot import {module_name!r}: {type(exc).__name__}: {exc}; fix the module"
                ) from exc
            added.extend(self._register_module(module))
        return added

    def load_directory(self, path: str | os.PathLike[str]) -> list[str]:
        """Register the tools of every ``*.py`` file in a directory (``./tools/``), in name order.

        Files starting with ``_`` are skipped. A missing directory registers nothing.

        Returns:
            The names of the tools registered.

        Raises:
            ConfigError: a file can't be imported, or one of its tools is refused.
        """
        directory = Path(path)
        if not directory.is_dir():
            return []
        added: list[str] = []
        for file in sorted(directory.glob("*.py")):
            if file.name.startswith("_"):
                continue
            added.extend(self._register_module(_import_file(file)))
        return added

    def _register_module(self, module: ModuleType) -> list[str]:
        added = []
        for value in list(vars(module).values()):
            if isinstance(value, Tool) and self._tools.get(value.name) is not value:
                added.append(self.register(value).name)
        return added

    async def call(
        self,
        call: ToolCall,
        ctx: ToolContext,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the tools' default limit, not a deadline on the caller
        allowed: Collection[str] | None = None,
    ) -> ToolResult:
        """Validate and run one tool call; every failure becomes an error result.

        A tool declared ``requires_verified`` is refused before its arguments are even read when
        ``ctx.customer`` is not verified.

        Args:
            call: the model's call (``arguments`` is the raw JSON text).
            ctx: injected into the tool's ``ToolContext`` parameter.
            timeout: seconds, when the tool sets none; else the registry's default.
            allowed: the flow's allowlist; a tool outside it is treated as unknown.

        Raises:
            asyncio.CancelledError: the surrounding task was cancelled (never swallowed).
        """
        started = time.perf_counter()
        tool = self._tools.get(call.name)
        if tool is None or (allowed is not None and call.name not in allowed):
            available = [name for name in self._tools if allowed is None or name in allowed]
            return _error(f"unknown tool '{call.name}'; available: {', '.join(available) or 'none'}", started)
        if tool.requires_verified and not ctx.customer.verified:
            return _error(
                f"'{call.name}' was not run: the customer's identity is not verified, and this tool is only "
                "for verified customers; ask them to sign in, or offer to create a ticket for the team",
                started,
            )
        try:
            arguments = loads(call.arguments) if call.arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return _error(
                f"the arguments for '{call.name}' are not valid JSON ({exc.msg} at position {exc.pos}); "
                "call the tool again with a JSON object of its parameters",
                started,
            )
        if not isinstance(arguments, dict):
            return _error(
                f"the arguments for '{call.name}' must be a JSON object of its parameters, "
                f"not a {type(arguments).__name__}",
                started,
            )
        try:
            args, kwargs = tool.arguments.bind(arguments, ctx)
        except ValidationError as exc:
            problems = "; ".join(format_validation_error(exc))
            return _error(f"invalid arguments for '{call.name}': {problems}", started)
        limit = tool.timeout or timeout or self.default_timeout
        return await _run(tool, args, kwargs, limit, started)


async def _run(
    tool: Tool[..., Any], args: list[Any], kwargs: dict[str, Any], limit: float, started: float
) -> ToolResult:
    try:
        async with asyncio.timeout(limit) as deadline:
            if tool.is_async:
                value = await tool.function(*args, **kwargs)
            else:
                # A sync tool can't be interrupted: on timeout its thread runs on, but the turn doesn't wait.
                value = await asyncio.to_thread(tool.function, *args, **kwargs)
                if asyncio.iscoroutine(value):  # a sync wrapper around an async function
                    value = await value
    except ToolRetry as exc:
        return _error(exc.message, started)
    except TimeoutError as exc:
        if deadline.expired():
            logger.warning("tool %s timed out after %s s", tool.name, _seconds(limit))
            return _error(f"'{tool.name}' timed out after {_seconds(limit)} s", started)
        return _failed(tool, exc, started)
    except Exception as exc:
        return _failed(tool, exc, started)
    return _success(tool, value, started)


def _success(tool: Tool[..., Any], value: Any, started: float) -> ToolResult:
    if isinstance(value, ToolResult):
        return ToolResult(
            content=value.content,
            is_error=value.is_error,
            handoff=value.handoff,
            data=value.data,
            duration_ms=_elapsed(started),
        )
    if isinstance(value, Handoff):
        return ToolResult(content=value.message, handoff=value.target, data=value.data, duration_ms=_elapsed(started))
    try:
        content = to_content(value)
    except TypeError as exc:
        return _failed(tool, exc, started)
    duration = _elapsed(started)
    logger.debug("tool %s finished in %.1f ms", tool.name, duration)
    return ToolResult(content=content, data=value, duration_ms=duration)


def _failed(tool: Tool[..., Any], exc: BaseException, started: float) -> ToolResult:
    logger.error("tool %s failed", tool.name, exc_info=exc)
    return _error(f"tool failed: {type(exc).__name__}: {exc}", started)


def _error(message: str, started: float) -> ToolResult:
    return ToolResult(content=message, is_error=True, duration_ms=_elapsed(started))


def _elapsed(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _seconds(value: float) -> str:
    return f"{value:g}"


def _import_file(file: Path) -> ModuleType:
    """Import one file of a tools directory under a private package name."""
    package = sys.modules.get(LOCAL_PACKAGE)
    if package is None:
        package = sys.modules[LOCAL_PACKAGE] = ModuleType(LOCAL_PACKAGE)
        package.__path__ = []
    if str(file.parent) not in package.__path__:
        package.__path__.append(str(file.parent))  # so ``from . import helpers`` finds a sibling file
    module_name = f"{LOCAL_PACKAGE}.{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{file}: cannot be imported as a tools module; is it a Python file?")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses and pydantic look the module up while it executes.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ConfigError(f"{file}: cannot import this tools file: {type(exc).__name__}: {exc}; fix the file") from exc
    return module


def default_registry(*, default_timeout: float = DEFAULT_TIMEOUT_S) -> ToolRegistry:
    """A new registry holding the built-in tools: ``lookup_order``, ``create_ticket``, ``handoff_to_human``."""
    return ToolRegistry(BUILTIN_TOOLS, default_timeout=default_timeout)
