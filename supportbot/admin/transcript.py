"""A conversation's stored messages arranged for an operator to read: who said what, each tool call
with its arguments and its result, what each model response cost, and where the flow changed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from supportbot.store.base import StoredMessage

__all__ = ["Entry", "ToolRun", "Totals", "arrange", "totals"]

_SAFE_IMAGE_TYPES = ("data:image/png;", "data:image/jpeg;", "data:image/gif;", "data:image/webp;")


@dataclass(kw_only=True, slots=True)
class ToolRun:
    """A tool call the model made, with the result the tool gave (None while it never ran)."""

    call_id: str
    name: str
    arguments: str
    result: str | None = None
    status: str = "ok"
    """The result's ``ok`` or ``error``; or the call's ``pending`` (awaiting the customer's yes) or ``declined``."""
    at: datetime | None = None


@dataclass(kw_only=True, slots=True)
class Entry:
    """One line of the log. ``who``: ``customer``, ``bot``, ``human``, ``tool`` (a result with no call), ``system``."""

    id: int
    who: str
    at: datetime
    text: str
    kind: str
    status: str
    author: str | None = None
    flow: str | None = None
    flow_changed: bool = False
    tools: list[ToolRun] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    """Inline-safe images (``data:`` PNG/JPEG/GIF/WebP); others are listed in ``links``."""
    links: list[str] = field(default_factory=list)
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float = 0.0
    latency_ms: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Totals:
    model_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    tool_calls: int
    tool_errors: int
    fallbacks: int
    human_replies: int


def pretty_arguments(arguments: str) -> str:
    """The model's argument JSON indented; as given when it is not valid JSON."""
    try:
        return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
    except ValueError:
        return arguments


def arrange(messages: Sequence[StoredMessage]) -> list[Entry]:
    """The log entries in stored order, each tool result folded into the call it answers."""
    entries: list[Entry] = []
    runs: dict[str, ToolRun] = {}
    flow: str | None = None
    for m in messages:
        if m.role == "tool" and m.tool_call_id in runs:
            run = runs[m.tool_call_id]
            run.result, run.status, run.at = m.content or "", m.status, m.created_at
            continue
        who = {"user": "customer", "assistant": "bot", "tool": "tool", "system": "system"}.get(m.role, m.role)
        if m.kind == "human":
            who = "human"
        entry = Entry(
            id=m.id, who=who, at=m.created_at, text=m.content or "", kind=m.kind, status=m.status, author=m.author,
            flow=m.flow, model=m.model, cost_usd=m.cost_usd, latency_ms=m.latency_ms,
        )  # fmt: skip
        if m.flow and flow is not None and m.flow != flow:
            entry.flow_changed = True
        flow = m.flow or flow
        if m.usage is not None:
            entry.input_tokens, entry.output_tokens = m.usage.input_tokens, m.usage.output_tokens
        for call in m.tool_calls:
            status = m.status if m.status in ("pending", "declined") else "ok"
            run = ToolRun(call_id=call.id, name=call.name, arguments=pretty_arguments(call.arguments), status=status)
            runs[call.id] = run
            entry.tools.append(run)
        for image in m.images:
            (entry.images if image.url.startswith(_SAFE_IMAGE_TYPES) else entry.links).append(image.url)
        if m.role == "tool":
            entry.tools.append(ToolRun(call_id=m.tool_call_id or "", name=m.tool_name or "tool", arguments="",
                                       result=m.content or "", status=m.status, at=m.created_at))  # fmt: skip
        entries.append(entry)
    return entries


def totals(messages: Sequence[StoredMessage]) -> Totals:
    """What the conversation's model calls and tools added up to."""
    calls = [m for m in messages if m.role == "assistant" and m.usage is not None]
    tools = [m for m in messages if m.role == "tool"]
    return Totals(
        model_calls=len(calls),
        input_tokens=sum(m.usage.input_tokens for m in calls if m.usage),
        output_tokens=sum(m.usage.output_tokens for m in calls if m.usage),
        cost_usd=sum(m.cost_usd for m in messages),
        latency_ms=sum(m.latency_ms or 0.0 for m in calls),
        tool_calls=len(tools),
        tool_errors=sum(1 for m in tools if m.status == "error"),
        fallbacks=sum(1 for m in messages if m.kind == "fallback"),
        human_replies=sum(1 for m in messages if m.kind == "human"),
    )
