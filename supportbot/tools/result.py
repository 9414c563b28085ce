"""What a tool call produced (``ToolResult``) and how a tool asks for a handoff (``Handoff``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic_core import to_jsonable_python

from supportbot._frozen import fast_init
from supportbot._json import dumps_compact


@dataclass(frozen=True, kw_only=True, slots=True)
class Handoff:
    """Return this from a tool to hand the conversation over.

    The registry turns it into a ``ToolResult`` whose ``handoff`` is ``target`` and whose
    content (what the model reads) is ``message``; the engine acts on ``handoff``.

    Attributes:
        target: who takes over: ``"human"``, or a flow's name for a transfer.
        message: what the model is told happened, e.g. "A person will reply here (ticket #12)."
        data: what the engine reads (``{"ticket_id": ..., "reason": ...}`` for ``"human"``); becomes
            ``ToolResult.data``; not shown to the model.
    """

    target: str
    message: str
    data: Any = None


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class ToolResult:
    """The outcome of one tool call, as the model and the engine see it.

    Attributes:
        content: what the model reads: a returned ``str`` as is, anything else as compact JSON,
            or the error text when ``is_error``.
        is_error: the call did not produce a result (unknown tool, bad arguments, timeout,
            ``ToolRetry``, an exception).
        handoff: set when the tool handed the conversation over (``"human"`` or a flow name).
        data: the raw value the tool returned (a ``Handoff``'s ``data``; None on error).
        duration_ms: wall time of validation plus the call.
    """

    content: str
    is_error: bool = False
    handoff: str | None = None
    data: Any = None
    duration_ms: float = 0.0


def to_content(value: Any) -> str:
    """Render a tool's return value for the model.

    Strings pass through; everything else (dicts, lists, pydantic models, dataclasses,
    datetimes, Decimals, enums, UUIDs...) becomes compact JSON with non-ASCII kept readable.

    Raises:
        TypeError: the value (or something inside it) has no JSON form.
    """
    if isinstance(value, str):
        return value
    try:
        jsonable = to_jsonable_python(value)
    except Exception as exc:  # pydantic_core raises its own PydanticSerializationError
        raise TypeError(f"the tool returned a {type(value).__name__} that can't be turned into JSON: {exc}") from exc
    return dumps_compact(jsonable)
