from __future__ import annotations

import io
import json
import logging
import time

import pytest

from supportbot.config import LoggingSettings
from supportbot.logs import configure_logging, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail ana.lima+x@example.co.uk now", "mail [email] now"),
        ("card 4111 1111 1111 1111 ok", "card [card] ok"),
        ("call +44 20 7946 0958 please", "call [phone] please"),
        ("order A1001 costs 129.90", "order A1001 costs 129.90"),
        ("eta 2026-12-03 10:15, 3 items", "eta 2026-12-03 10:15, 3 items"),
        ("tel 020 7946 0958", "tel [phone]"),
        ("remote 203.0.113.195 GET /widget.js", "remote 203.0.113.195 GET /widget.js"),
        ("from 192.168.100.200:443", "from 192.168.100.200:443"),
        ("a@b@c.example, x.y@z.example.", "a@[email], [email]."),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", ["a." * 25_000, "x" * 50_000, "a@b" + "-b" * 25_000])
def test_redacting_a_long_text_without_an_address_takes_linear_time(text: str) -> None:
    # A regression guard, not a benchmark: the quadratic pattern took seconds here, the linear one ~1 ms.
    started = time.perf_counter()
    assert redact(text) == text
    assert time.perf_counter() - started < 0.5


def test_json_lines_with_personal_data_redacted() -> None:
    out = io.StringIO()
    configure_logging(LoggingSettings(format="json"), stream=out)
    logging.getLogger("supportbot.engine").warning("turn failed for %s", "ana@example.com", extra={"flow": "returns"})
    entry = json.loads(out.getvalue())
    assert entry["message"] == "turn failed for [email]" and entry["level"] == "WARNING"
    assert entry["logger"] == "supportbot.engine" and entry["flow"] == "returns"


def test_text_format_level_and_no_redaction_when_off() -> None:
    out = io.StringIO()
    configure_logging(LoggingSettings(level="WARNING", redact_pii=False), stream=out)
    logging.getLogger("supportbot.x").info("hidden")
    logging.getLogger("supportbot.x").error("for ana@example.com")
    assert "hidden" not in out.getvalue() and "ERROR supportbot.x: for ana@example.com" in out.getvalue()


def test_strings_nested_in_extras_and_exceptions_are_redacted() -> None:
    out = io.StringIO()
    configure_logging(LoggingSettings(format="json"), stream=out)
    tools = [{"name": "lookup_order", "ok": False, "error": "refused for ana@example.com", "duration_ms": 3.5}]
    extra = {"event": "turn", "tools": tools, "transfers": ("returns",), "ids": {"to": ["+44 20 7946 0958"]}}
    try:
        raise RuntimeError("no account for bo@example.org")
    except RuntimeError:
        logging.getLogger("supportbot.dispatch").exception("turn failed", extra=extra)
    entry = json.loads(out.getvalue())
    assert entry["tools"] == [{"name": "lookup_order", "ok": False, "error": "refused for [email]", "duration_ms": 3.5}]
    assert entry["transfers"] == ["returns"] and entry["ids"] == {"to": ["[phone]"]}
    assert "RuntimeError: no account for [email]" in entry["exception"] and "@" not in out.getvalue()
    assert tools[0]["error"] == "refused for ana@example.com"  # the caller's objects are left as they were
