"""Reading JSON log lines back: parsing, selecting and rendering records."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from supportbot.logview import LogFilter, failed_calls, parse_line, parse_since, record_time, render

NOW = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)


def turn(**fields: Any) -> dict[str, Any]:
    """A turn record as the dispatcher logs it."""
    record: dict[str, Any] = {
        "time": "2026-11-24T09:00:00.000+00:00",
        "level": "INFO",
        "logger": "supportbot.dispatch",
        "message": "turn 7 of c1 finished in 812 ms",
        "event": "turn",
        "conversation_id": "c1",
        "channel": "web",
        "turn": 7,
        "flow": "general",
        "transfers": [],
        "handoff": None,
        "outcome": "finished",
        "duration_ms": 812.3,
        "first_token_ms": 240.1,
        "tools": [],
        "input_tokens": 370,
        "output_tokens": 37,
        "cost_usd": 0.00123,
        "ticket_id": None,
        "reason": None,
    }
    return record | fields


FAILING_TOOLS = [
    {"name": "transfer_to_order_status", "ok": True, "duration_ms": 0.1},
    {"name": "lookup_order", "ok": False, "duration_ms": 12.4, "error": "tool failed: TimeoutError"},
    {"name": "create_ticket", "ok": False, "duration_ms": 3.0, "error": "subject: field required"},
]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"level": "INFO", "message": "hi"}\n', {"level": "INFO", "message": "hi"}),
        ('  {"a": 1}  ', {"a": 1}),
        ("", None),
        ("2026-11-24 09:00:00,123 INFO supportbot.dispatch: turn 1 of c1 finished", None),
        ("[1, 2]", None),
        ('{"broken": ', None),
    ],
)
def test_parse_line(line: str, expected: dict[str, Any] | None) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("today", datetime(2026, 11, 24, tzinfo=UTC)),
        ("TODAY", datetime(2026, 11, 24, tzinfo=UTC)),
        ("1h", datetime(2026, 11, 24, 14, 30, tzinfo=UTC)),
        ("30m", datetime(2026, 11, 24, 15, 0, tzinfo=UTC)),
        ("90s", datetime(2026, 11, 24, 15, 28, 30, tzinfo=UTC)),
        ("2d", datetime(2026, 11, 22, 15, 30, tzinfo=UTC)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2026-11-20T08:15", datetime(2026, 11, 20, 8, 15, tzinfo=UTC)),
        ("2026-11-20T08:15+01:00", datetime(2026, 11, 20, 7, 15, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "3x", "2026-13-01", "1 week", ""])
def test_parse_since_refuses_what_it_does_not_know(text: str) -> None:
    with pytest.raises(ValueError, match="30m"):
        parse_since(text, now=NOW)


def test_record_time() -> None:
    assert record_time(turn()) == datetime(2026, 11, 24, 9, tzinfo=UTC)
    assert record_time({"time": "2026-11-24T09:00:00"}) == datetime(2026, 11, 24, 9, tzinfo=UTC)
    assert record_time({"time": "soon"}) is None and record_time({"time": 5}) is None and record_time({}) is None


def test_failed_calls_only_of_turn_records() -> None:
    assert [c["name"] for c in failed_calls(turn(tools=FAILING_TOOLS))] == ["lookup_order", "create_ticket"]
    assert failed_calls(turn()) == []
    assert failed_calls({"tools": FAILING_TOOLS}) == []  # not a turn record
    assert failed_calls(turn(tools="lookup_order")) == [] and failed_calls(turn(tools=["x", None])) == []


def test_filter_by_conversation_takes_its_turns_and_the_warnings_that_name_it() -> None:
    records = [
        turn(),
        turn(conversation_id="c2"),
        {"level": "WARNING", "logger": "supportbot.engine", "message": "turn failed in conversation c1: boom"},
        {"level": "INFO", "logger": "supportbot.server", "message": "serving"},
        {"conversation_id": "c2", "message": "about c1 but belongs to c2"},
    ]
    selected = [r for r in records if LogFilter(conversation="c1").matches(r)]
    assert selected == records[:1] + records[2:3]


def test_filter_since_outcome_and_tool_failures() -> None:
    early = turn(time="2026-11-23T23:59:59.999+00:00")
    failed = turn(outcome="failed", time="2026-11-24T10:00:00.000+00:00")
    broken_tool = turn(tools=FAILING_TOOLS)
    other = {"time": "2026-11-24T10:00:00+00:00", "message": "serving"}
    records = [early, failed, broken_tool, other, {"message": "no time"}]
    since = LogFilter(since=parse_since("today", now=NOW))
    assert [r for r in records if since.matches(r)] == [failed, broken_tool, other]
    assert [r for r in records if LogFilter(outcome="failed").matches(r)] == [failed]
    assert [r for r in records if LogFilter(outcome="finished").matches(r)] == [early, broken_tool]
    assert [r for r in records if LogFilter(tool_failures=True).matches(r)] == [broken_tool]
    both = LogFilter(tool_failures=True, since=parse_since("2026-11-25", now=NOW))
    assert not any(both.matches(r) for r in records)


def test_a_turn_is_one_readable_line() -> None:
    (line,) = render(turn(transfers=["order_status"], handoff="human", tools=FAILING_TOOLS[:2], ticket_id=12))
    assert line.startswith("2026-11-24 09:00:00 INFO    c1 web general→order_status→human finished · ")
    assert "tools transfer_to_order_status ✓ 0 ms, lookup_order ✗ 12 ms" in line
    assert "370+37 tokens · $0.0012 · 812 ms (first token 240 ms) · ticket #12" in line
    assert "\n" not in line


def test_a_failed_turn_shows_its_reason_and_unknown_tokens_are_left_out() -> None:
    record = turn(outcome="failed", level="WARNING", input_tokens=None, output_tokens=None, cost_usd=None,
                  reason="the model answered HTTP 500", ticket_id=3)  # fmt: skip
    (line,) = render(record)
    assert "WARNING c1 web general failed · 812 ms" in line and line.endswith("ticket #3 · the model answered HTTP 500")
    assert "tokens" not in line and "$" not in line


def test_tool_failures_are_one_line_per_failed_call() -> None:
    lines = render(turn(tools=FAILING_TOOLS), tool_failures=True)
    assert lines == [
        "2026-11-24 09:00:00 c1 general ✗ lookup_order (12 ms): tool failed: TimeoutError",
        "2026-11-24 09:00:00 c1 general ✗ create_ticket (3 ms): subject: field required",
    ]


def test_other_records_show_logger_message_and_the_exception_line() -> None:
    record = {"time": "2026-11-24T09:00:01+00:00", "level": "ERROR", "logger": "supportbot.dispatch",
              "message": "turn 7 of conversation c1 failed",
              "exception": "Traceback (most recent call last):\n  ...\nRuntimeError: disk full"}  # fmt: skip
    assert render(record) == [
        "2026-11-24 09:00:01 ERROR   supportbot.dispatch: turn 7 of conversation c1 failed · RuntimeError: disk full"
    ]


def test_odd_records_do_not_break_the_rendering() -> None:
    record = turn(flow="ret\nurns", tools="many", input_tokens="lots", cost_usd=True, duration_ms=None, time=None)
    (line,) = render(record)
    assert line.startswith("------------------- INFO    c1 web ret\\nurns finished") and "\n" not in line
    assert "tokens" not in line and "$" not in line
    assert render({}) == ["------------------- -       -: -"]


def test_json_rendering_is_the_record_in_ascii() -> None:
    record = turn(flow="\x1b[2Jretours ✓", tools=FAILING_TOOLS)
    (line,) = render(record, fmt="json")
    assert line.isascii() and "\x1b" not in line
    assert json.loads(line) == record
    assert render(record, fmt="json", tool_failures=True) == [line]  # the whole record, for jq
