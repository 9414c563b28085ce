"""Reading supportbot's JSON log lines back: what happened in a conversation, which tools failed.

With ``logging.format: json`` every log record is one JSON object per line, and every turn adds
one record with ``event: "turn"`` (see ``supportbot.dispatch``): conversation, channel, flow,
transfers, tool calls, latency, tokens, cost and outcome. These functions parse such lines,
select records and render them, one line each; ``supportbot logs`` wires them to files and the
terminal. Log files are read as untrusted input: any field may be missing or of another type.

Times are UTC, as the log lines have them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from supportbot.pricing import format_usd

__all__ = ["LogFilter", "Record", "failed_calls", "parse_line", "parse_since", "record_time", "render"]

Record = dict[str, Any]

_SPAN = re.compile(r"(\d+)\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_REASON_CHARS = 160


def parse_line(line: str) -> Record | None:
    """The JSON object on ``line``; None for a blank line, a text-format line or any other non-object."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """The moment ``--since`` names, in UTC: a date (``2026-11-24``), an ISO time, ``today``, or a span back.

    Args:
        text: ``2026-11-24``, ``2026-11-24T09:30`` (UTC unless it names a zone), ``today`` (since
            midnight UTC), or a span before ``now``: ``90s``, ``30m``, ``1h``, ``2d``.
        now: the present; defaults to the clock.

    Raises:
        ValueError: ``text`` is none of these.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    text = text.strip().lower()
    if text == "today":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if span := _SPAN.fullmatch(text):
        return now - timedelta(**{_UNITS[span.group(2)]: int(span.group(1))})
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date (2026-11-24), a time (2026-11-24T09:30), 'today', "
            "or a span back from now (90s, 30m, 1h, 2d)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def record_time(record: Record) -> datetime | None:
    """When the record was logged (UTC), or None when its ``time`` is missing or not an ISO time."""
    value = record.get("time")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def failed_calls(record: Record) -> list[dict[str, Any]]:
    """The tool calls of a turn record that failed (``ok: false``); empty for any other record."""
    if record.get("event") != "turn" or not isinstance(record.get("tools"), list):
        return []
    return [call for call in record["tools"] if isinstance(call, dict) and call.get("ok") is False]


@dataclass(frozen=True, kw_only=True, slots=True)
class LogFilter:
    """Which records to show; every condition given must hold.

    Attributes:
        conversation: records of this conversation: its ``conversation_id`` field, or, for records
            without one, a message that names it (the engine's warnings do).
        since: records logged at or after this moment; records without a readable time are left out.
        outcome: turn records that ended so (``finished`` or ``failed``).
        tool_failures: turn records with at least one failed tool call.
    """

    conversation: str | None = None
    since: datetime | None = None
    outcome: str | None = None
    tool_failures: bool = False

    def matches(self, record: Record) -> bool:
        if self.conversation is not None and not _about(record, self.conversation):
            return False
        if self.since is not None and ((when := record_time(record)) is None or when < self.since):
            return False
        if self.outcome is not None and (record.get("event") != "turn" or record.get("outcome") != self.outcome):
            return False
        return not self.tool_failures or bool(failed_calls(record))


def _about(record: Record, conversation: str) -> bool:
    if "conversation_id" in record:
        return bool(record["conversation_id"] == conversation)
    message = record.get("message")
    return bool(conversation) and isinstance(message, str) and conversation in message


def render(record: Record, *, fmt: Literal["text", "json"] = "text", tool_failures: bool = False) -> list[str]:
    """The lines that show ``record``.

    ``json``: the record as one JSON line (ASCII only, so no control character reaches the terminal).
    ``text``: one readable line; with ``tool_failures``, one line per failed tool call instead.
    Text lines still hold untrusted words (flow names, messages): print them with
    ``supportbot.terminal.safe``.
    """
    if fmt == "json":
        return [json.dumps(record, ensure_ascii=True)]
    if tool_failures:
        return [_failure_line(record, call) for call in failed_calls(record)]
    if record.get("event") == "turn":
        return [_turn_line(record)]
    return [_other_line(record)]


def _turn_line(record: Record) -> str:
    head = f"{_when(record)} {_text(record.get('level')):<7} {_text(record.get('conversation_id'))}"
    parts = [f"{head} {_text(record.get('channel'))} {_flow_path(record)} {_text(record.get('outcome'))}"]
    tools = record.get("tools")
    if isinstance(tools, list) and tools:
        parts.append("tools " + ", ".join(_call(call) for call in tools if isinstance(call, dict)))
    inputs, outputs = _number(record.get("input_tokens")), _number(record.get("output_tokens"))
    if inputs is not None and outputs is not None:
        parts.append(f"{inputs:.0f}+{outputs:.0f} tokens")
    if (cost := _number(record.get("cost_usd"))) is not None:
        parts.append(format_usd(cost))
    if (duration := _number(record.get("duration_ms"))) is not None:
        first = _number(record.get("first_token_ms"))
        parts.append(f"{duration:.0f} ms" + (f" (first token {first:.0f} ms)" if first is not None else ""))
    if record.get("ticket_id") is not None:
        parts.append(f"ticket #{_text(record['ticket_id'])}")
    if record.get("reason"):
        parts.append(_shorten(_text(record["reason"])))
    return " · ".join(parts)


def _failure_line(record: Record, call: dict[str, Any]) -> str:
    duration = _number(call.get("duration_ms"))
    took = f" ({duration:.0f} ms)" if duration is not None else ""
    error = f": {_shorten(_text(call['error']))}" if call.get("error") else ""
    return (
        f"{_when(record)} {_text(record.get('conversation_id'))} {_flow_path(record)} "
        f"✗ {_text(call.get('name'))}{took}{error}"
    )


def _other_line(record: Record) -> str:
    line = (
        f"{_when(record)} {_text(record.get('level')):<7} {_text(record.get('logger'))}: {_text(record.get('message'))}"
    )
    exception = record.get("exception")
    if isinstance(exception, str) and exception.strip():
        line += " · " + _shorten(_text(exception.strip().splitlines()[-1]))
    return line


def _flow_path(record: Record) -> str:
    """``general→returns→human``: the flow the turn started in, its transfers, a handoff to a person."""
    steps = [_text(record.get("flow"))]
    transfers = record.get("transfers")
    if isinstance(transfers, list):
        steps += [_text(target) for target in transfers]
    if record.get("handoff"):
        steps.append(_text(record["handoff"]))
    return "→".join(steps)


def _call(call: dict[str, Any]) -> str:
    mark = "✓" if call.get("ok") is True else "✗"
    duration = _number(call.get("duration_ms"))
    return f"{_text(call.get('name'))} {mark}" + (f" {duration:.0f} ms" if duration is not None else "")


def _when(record: Record) -> str:
    when = record_time(record)
    return when.strftime("%Y-%m-%d %H:%M:%S") if when else "-" * 19


def _text(value: object) -> str:
    """A field as one line of text: '-' when missing; line breaks shown, so a value can't fake a record."""
    if value is None or value == "":
        return "-"
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _shorten(text: str, limit: int = _REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
