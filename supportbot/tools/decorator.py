"""``@tool``: a plain function becomes a ``Tool`` the model can call.

The name comes from the function, the description and argument docs from the docstring, the
JSON schema from the type hints. Everything is checked when the decorator runs (at import),
so a bad tool stops the start-up with a message naming ``module:function`` instead of failing
in the middle of a conversation.
"""

from __future__ import annotations

import inspect
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, overload

from supportbot.errors import ConfigError
from supportbot.tools.docstring import parse_docstring
from supportbot.tools.schema import ArgumentSpec, build_argument_spec

P = ParamSpec("P")
R = TypeVar("R")

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""OpenAI's rule for function names."""

RESERVED_PREFIX = "transfer_to_"
"""The engine makes ``transfer_to_<flow>`` tools from a flow's ``handoffs``; no other tool may use the prefix."""


@dataclass(frozen=True, kw_only=True, eq=False)
class Tool(Generic[P, R]):
    """A function the model may call, with everything needed to offer it and to call it.

    Calling a ``Tool`` calls the original function unchanged, so a tool's own unit tests can
    keep calling it directly.

    Attributes:
        name: the name the model calls it by.
        description: what the model reads to decide when to call it.
        function: the decorated function.
        arguments: the argument model, JSON schema and ``ToolContext`` parameter.
        timeout: seconds the call may take; None for the registry's default.
        is_async: whether ``function`` is a coroutine function (sync ones run in a thread).
        confirm: the question a customer is asked before a call runs, when a flow lists the tool
            under ``confirm``; ``{argument}`` placeholders are filled with the call's arguments.
        requires_verified: offered to the model, and run, only for a customer whose identity the
            channel verified (``ToolContext.customer.verified``).
        read_only: the tool changes nothing (a lookup), so a round of such calls may be stored with
            what follows it (see ``tool``).
    """

    name: str
    description: str
    function: Callable[P, R]
    arguments: ArgumentSpec
    timeout: float | None = None
    is_async: bool = False
    confirm: str | None = None
    requires_verified: bool = False
    read_only: bool = False

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.function(*args, **kwargs)

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments (without the ``ToolContext`` parameter)."""
        return self.arguments.schema

    @property
    def definition(self) -> dict[str, Any]:
        """The OpenAI function-tool definition: ``{"type": "function", "function": {...}}``."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@overload
def tool(fn: Callable[P, R], /) -> Tool[P, R]: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    confirm: str | None = None,
    requires_verified: bool = False,
    read_only: bool = False,
) -> Callable[[Callable[P, R]], Tool[P, R]]: ...


def tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    confirm: str | None = None,
    requires_verified: bool = False,
    read_only: bool = False,
) -> Tool[P, R] | Callable[[Callable[P, R]], Tool[P, R]]:
    """Make a function a tool; use as ``@tool`` or ``@tool(name=..., description=..., timeout=...)``.

    Args:
        fn: the function (when used without parentheses).
        name: the tool's name; defaults to the function's name.
        description: what the model reads; defaults to the docstring without its Args/Returns sections.
        timeout: seconds the call may take before the model is told it timed out.
        confirm: the question the customer answers before a call runs (for flows that list the tool
            under ``confirm``), e.g. ``"Shall I open a ticket “{subject}” for the team?"``; each
            ``{argument}`` is filled with that argument of the call. Without it the customer is asked
            "Shall I go ahead and <the description's first sentence>?".
        requires_verified: the tool needs a customer whose identity the channel verified (an order
            lookup, an address change). For an unverified customer the engine does not offer it to
            the model at all, and refuses a call of it with an error result before it runs; the tool
            should still check ``ctx.customer.verified`` itself, as the built-in ``lookup_order`` does.
        read_only: the tool changes nothing anywhere (it only looks things up). A model response whose
            calls are all of read-only tools is then stored together with what follows it (the next
            response, or the answer) instead of before the calls run: one database transaction a
            turn fewer. A crash in between loses only those lookups, which the resumed turn makes
            again. Leave it off for anything that writes, sends or changes state: such calls are on
            record before they run.

    Returns:
        A ``Tool`` (or, with keyword arguments only, a decorator that makes one).

    Raises:
        ConfigError: the name is not allowed, or a parameter has no usable type hint.
    """

    def decorate(function: Callable[P, R]) -> Tool[P, R]:
        return make_tool(
            function,
            name=name,
            description=description,
            timeout=timeout,
            confirm=confirm,
            requires_verified=requires_verified,
            read_only=read_only,
        )

    if fn is not None:
        return decorate(fn)
    return decorate


def make_tool(
    function: Callable[P, R],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    confirm: str | None = None,
    requires_verified: bool = False,
    read_only: bool = False,
) -> Tool[P, R]:
    """Build a ``Tool`` from a function; what ``@tool`` does. See ``tool`` for the arguments."""
    if isinstance(function, Tool):
        raise ConfigError(f"tool {function.name!r}: @tool was applied twice; apply it once")
    if not callable(function):
        raise ConfigError(f"@tool needs a function, got {type(function).__name__}")
    where = describe(function)
    tool_name = name if name is not None else getattr(function, "__name__", "")
    check_name(tool_name, where=where)
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"tool {where}: timeout must be a positive number of seconds, got {timeout!r}")
    doc = parse_docstring(inspect.getdoc(function))
    spec = build_argument_spec(function, where=where, docs=doc.params)
    if confirm is not None:
        check_confirm(confirm, [p.name for p in spec.params if not p.context], where=where)
    return Tool(
        name=tool_name,
        description=(description if description is not None else doc.description).strip(),
        function=function,
        arguments=spec,
        timeout=timeout,
        is_async=inspect.iscoroutinefunction(function),
        confirm=confirm,
        requires_verified=requires_verified,
        read_only=read_only,
    )


def check_name(name: str, *, where: str) -> None:
    """Refuse a tool name OpenAI would refuse, or one the engine reserves.

    Raises:
        ConfigError: naming ``where`` and the rule.
    """
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"tool {where}: the name {name!r} is not allowed; use 1-64 letters, digits, '_' or '-' "
            "(pass @tool(name=...) to choose another)"
        )
    if name.startswith(RESERVED_PREFIX):
        raise ConfigError(
            f"tool {where}: names starting with '{RESERVED_PREFIX}' are reserved for flow handoffs; "
            "rename the tool (list the flow under 'handoffs' to get a transfer tool)"
        )


def check_confirm(template: str, arguments: list[str], *, where: str) -> None:
    """Refuse a confirmation sentence with anything but ``{argument}`` placeholders of the tool's arguments.

    Raises:
        ConfigError: naming ``where``, the placeholder and the arguments there are.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"tool {where}: confirm={template!r}: {exc}; write braces as {{{{ and }}}}") from None
    if not template.strip():
        raise ConfigError(f"tool {where}: confirm is empty; write the question the customer answers")
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in arguments or spec or conversion:
            shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ConfigError(
                f"tool {where}: confirm={template!r}: {shown} is not a plain placeholder of one of its "
                f"arguments; use {', '.join('{' + a + '}' for a in arguments) or 'none (it takes no arguments)'}"
            )


def describe(function: Callable[..., Any]) -> str:
    """``module:qualname`` of a function, as error messages name it."""
    module = getattr(function, "__module__", None) or "?"
    qualname = getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or repr(function)
    return f"{module}:{qualname}"
