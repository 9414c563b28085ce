"""How the commands show stored records in a terminal: tables, transcript lines, CSV cells, times."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from supportbot.pricing import format_usd
from supportbot.store.base import StoredMessage


def shorten(text: str, limit: int = 160) -> str:
    """``text``, cut to ``limit`` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def transcript_line(m: StoredMessage) -> str:
    """One stored message as transcript lines: who said it, tool calls and results, and what it cost."""
    when = m.created_at.strftime("%H:%M:%S")
    if m.role == "tool":
        mark = "error" if m.status == "error" else m.status
        return f"  {when}  tool {m.tool_name} [{mark}] → {shorten(m.content or '', 400)}"
    who = {"user": "customer", "assistant": "bot", "system": "system"}.get(m.role, m.role)
    if m.kind == "human":
        who = f"human ({m.author or 'operator'})"
    elif m.kind != "normal":
        who = f"bot ({m.kind})"
    lines = []
    if m.content:
        status = f" [{m.status}]" if m.status not in ("ok",) else ""
        lines.append(f"  {when}  {who}{status}: " + m.content.replace("\n", "\n      "))
    for call in m.tool_calls:
        lines.append(
            f"  {when}  {who} calls {call.name}({call.arguments})"
            + (" [awaiting customer's yes]" if m.status == "pending" else "")
        )
    if m.role == "assistant" and m.usage is not None:
        lines.append(
            f"            {m.model or ''} · {m.usage.input_tokens}+{m.usage.output_tokens} tokens · "
            f"{format_usd(m.cost_usd)} · {m.latency_ms or 0:.0f} ms"
        )
    return "\n".join(lines)


def csv_cell(value: Any) -> Any:
    """A value for a CSV cell that a spreadsheet shows as text, never runs as a formula."""
    # A cell starting with = + - @ is a formula to a spreadsheet; prefix it so it stays text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def when(value: datetime | None) -> str:
    """A time to the minute, or '-'."""
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as a plain-text table of ``columns``, long cells shortened, times to the minute."""
    cells = [[str(_short_cell(c, row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _short_cell(column: str, value: Any) -> Any:
    if value is None:
        return "-"
    if column.endswith("cost_usd") and isinstance(value, int | float):
        return format_usd(value)
    if isinstance(value, str) and "T" in value and value[:4].isdigit():
        return value[:16].replace("T", " ")
    return shorten(value, 60) if isinstance(value, str) else value
