"""What the report looks like: progress lines, failures as a diff, the transcript, the summary table, JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from supportbot.flowtest.records import (
    CallRecord,
    CaseRecord,
    CaseResult,
    CaseRun,
    Entry,
    Failure,
    Outcome,
    TurnRecord,
)
from supportbot.flowtest.report import case_report, duration, junit_xml, progress_line, summary

TURN = TurnRecord(
    number=1,
    customer="Where is my order A1001?",
    entries=(
        Entry(kind="call", text='lookup_order {"order_id": "A1001"}'),
        Entry(kind="result", text='lookup_order: {"order_id": "A1001", "status": "processing"}'),
        Entry(kind="bot", text="Your order is\nprocessing."),
        Entry(kind="ticket", text="opened ticket #1 'Late' (kind request, priority normal, status open)"),
    ),
    outcome=Outcome(reply="Your order is\nprocessing.", calls=(CallRecord(name="lookup_order", arguments={}),)),
    scripted=True,
)
RECORD = CaseRecord(
    greeting="Hi Ana!",
    customer="Ana Lima <ana@example.com> (verified)",
    flow="order_status",
    channel="web",
    mode="offline",
    turns=(TURN,),
    logs=("warning supportbot.engine: slow",),
)
FAILURE = Failure(where="tests/orders.yaml:12", what="turn 1: reply_contains",
                  message="the reply does not contain 'shipped'", expected=("contains: shipped",),
                  actual=("reply: Your order is\nprocessing.",))  # fmt: skip
PASSED = CaseRun(failures=(), record=RECORD, duration_ms=41.2)
FAILED = CaseRun(failures=(FAILURE,), record=RECORD, duration_ms=1234.5)


def result(*runs: CaseRun, name: str = "a case", file: str = "orders.yaml", rate: float = 1.0) -> CaseResult:
    return CaseResult(file=file, path=f"tests/{file}", name=name, where=f"tests/{file}:9", runs=runs,
                      min_pass_rate=rate)  # fmt: skip


def test_durations() -> None:
    assert [duration(0.4), duration(41.2), duration(999), duration(1234.5)] == ["0 ms", "41 ms", "999 ms", "1.2 s"]


def test_progress_lines() -> None:
    assert progress_line(result(PASSED)) == "PASS orders.yaml › a case (41 ms)"
    assert progress_line(result(FAILED)) == "FAIL orders.yaml › a case (1.2 s)"
    assert progress_line(result(PASSED, FAILED, PASSED, rate=0.6)) == (
        "PASS orders.yaml › a case (2/3 runs passed, 1.3 s)"
    )


def test_a_failed_case_shows_the_diff_and_the_transcript() -> None:
    assert case_report(result(FAILED)).splitlines() == [
        "FAIL orders.yaml › a case",
        "  tests/orders.yaml:12: turn 1: reply_contains: the reply does not contain 'shipped'",
        "    - contains: shipped",
        "    + reply: Your order is",
        "    + processing.",
        "  transcript (offline; flow order_status, channel web, customer Ana Lima <ana@example.com> (verified)):",
        "    bot: Hi Ana!",
        "    turn 1 · customer: Where is my order A1001?",
        '      → lookup_order {"order_id": "A1001"}',
        '      ← lookup_order: {"order_id": "A1001", "status": "processing"}',
        "    bot: Your order is",
        "         processing.",
        "      ✎ opened ticket #1 'Late' (kind request, priority normal, status open)",
        "    log: warning supportbot.engine: slow",
    ]


def test_repeated_runs_report_the_rate_and_the_first_failing_run() -> None:
    lines = case_report(result(PASSED, FAILED, PASSED)).splitlines()
    assert lines[:4] == [
        "FAIL orders.yaml › a case",
        "  passed 2 of 3 runs (67%; needs 100%)",
        "  the first failing run (run 2):",
        "  tests/orders.yaml:12: turn 1: reply_contains: the reply does not contain 'shipped'",
    ]


def test_a_case_that_did_not_start() -> None:
    empty = CaseRecord(greeting=None, customer="", flow="", channel="", mode="offline", turns=())
    assert case_report(result(CaseRun(failures=(), record=empty, duration_ms=1))).splitlines()[-1] == (
        "  transcript: (the conversation did not start)"
    )


def test_the_summary_table() -> None:
    results = [result(PASSED), result(FAILED, name="b"), result(PASSED, file="returns/long name.yaml")]
    assert summary(results, elapsed_ms=1500).splitlines() == [
        "file                    cases  passed  failed      time",
        "orders.yaml                 2       1       1     1.3 s",
        "returns/long name.yaml      1       1       0     41 ms",
        "FAILED: 1 of 3 cases failed, 2 passed (1.5 s)",
    ]
    assert summary([result(PASSED)], elapsed_ms=50).splitlines()[-1] == "OK: 1 case passed (50 ms)"


def test_junit_xml() -> None:
    control = Failure(where="tests/orders.yaml:3", what="turn 1: reply_contains", message="got \x1b[31mred\x00")
    results = [
        result(PASSED),
        result(CaseRun(failures=(FAILURE,), record=RECORD, duration_ms=10), name="b <&>"),
        result(CaseRun(failures=(control,), record=RECORD, duration_ms=1), file="sub/returns.yaml", name="c"),
        result(PASSED, FAILED, name="d", rate=0.5),
    ]
    root = ET.fromstring(junit_xml(results))
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "4", "2")
    orders, returns = root.findall("testsuite")
    assert [orders.get(k) for k in ("name", "tests", "failures", "errors", "skipped")] == [
        "orders.yaml", "3", "1", "0", "0"
    ]  # fmt: skip
    a, b, d = orders.findall("testcase")
    assert [a.get(k) for k in ("classname", "name", "file", "line", "time")] == [
        "orders", "a case", "tests/orders.yaml", "9", "0.041"
    ]  # fmt: skip
    assert a.find("failure") is None and d.find("failure") is None
    assert d.findtext("system-out") == "passed 1 of 2 runs"
    failure = b.find("failure")
    assert failure is not None and b.get("name") == "b <&>"
    assert failure.get("message") == "turn 1: reply_contains: the reply does not contain 'shipped'"
    assert "tests/orders.yaml:12: turn 1: reply_contains" in (failure.text or "")
    assert "turn 1 · customer: Where is my order A1001?" in (failure.text or "")
    (c,) = returns.findall("testcase")
    assert [returns.get("name"), c.get("classname"), c.get("file")] == [
        "sub/returns.yaml",
        "sub.returns",
        "tests/sub/returns.yaml",
    ]
    control_failure = c.find("failure")
    # XML 1.0 cannot hold most control characters: they are dropped.
    assert control_failure is not None and control_failure.get("message") == "turn 1: reply_contains: got [31mred"
