"""What ``supportbot test`` prints and writes: progress lines, failures with a diff and the transcript,
the summary table, and JUnit XML for CI.

Everything here returns plain text; the command adds colour.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from supportbot.flowtest.records import CaseRecord, CaseResult, Failure

_MARKS = {
    "bot": "bot:",
    "call": "→",
    "result": "←",
    "error": "← error from",
    "ticket": "✎",
    "handoff": "⇒",
    "transfer": "⇒",
    "confirm": "?",
    "failed": "✗",
    "note": "·",
}
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def duration(ms: float) -> str:
    """``41 ms``, ``1.2 s``."""
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def title(result: CaseResult) -> str:
    """``order_status.yaml › a verified customer gets their order's status``."""
    return f"{result.file} › {result.name}"


def progress_line(result: CaseResult) -> str:
    """``PASS order_status.yaml › name (41 ms)``; with several runs, how many passed."""
    word = "PASS" if result.passed else "FAIL"
    runs = len(result.runs)
    if runs == 1:
        return f"{word} {title(result)} ({duration(result.duration_ms)})"
    return f"{word} {title(result)} ({result.passes}/{runs} runs passed, {duration(result.duration_ms)})"


def case_report(result: CaseResult, *, transcript: bool = True) -> str:
    """A case's failures (``file:line``, what, ``- expected`` / ``+ actual``) and the transcript of the run shown."""
    lines = [f"{'PASS' if result.passed else 'FAIL'} {title(result)}"]
    run = result.shown_run
    if len(result.runs) > 1:
        needed = f"{result.min_pass_rate:.0%}"
        lines.append(f"  passed {result.passes} of {len(result.runs)} runs ({result.rate:.0%}; needs {needed})")
        if run is not None and not run.passed:
            lines.append(f"  the first failing run (run {result.runs.index(run) + 1}):")
    if run is not None:
        for failure in run.failures:
            lines.extend(failure_lines(failure))
        if transcript:
            lines.extend(transcript_lines(run.record))
    return "\n".join(lines)


def failure_lines(failure: Failure) -> list[str]:
    """``  tests/x.yaml:12: turn 1: reply_contains: the reply does not contain 'shipped'`` and the diff under it."""
    lines = [f"  {failure.where}: {failure.what}: {failure.message}"]
    for mark, items in (("-", failure.expected), ("+", failure.actual)):
        for item in items:
            lines.extend(f"    {mark} {line}" for line in (item.splitlines() or [""]))
    return lines


def transcript_lines(record: CaseRecord) -> list[str]:
    """The conversation as it ran: greeting, each customer message, calls, results, tickets, handoffs, replies."""
    if not record.flow:
        return ["  transcript: (the conversation did not start)"]
    lines = [f"  transcript ({record.mode}; flow {record.flow}, channel {record.channel}, customer {record.customer}):"]
    if record.greeting:
        lines.extend(_block("    bot:", record.greeting))
    for turn in record.turns:
        answered = " (demo model)" if record.mode == "offline" and not turn.scripted else ""
        lines.extend(_block(f"    turn {turn.number}{answered} · customer:", turn.customer))
        for entry in turn.entries:
            indent = "    " if entry.kind == "bot" else "      "
            lines.extend(_block(f"{indent}{_MARKS[entry.kind]}", entry.text))
    lines.extend(f"    log: {line}" for line in record.logs)
    return lines


def _block(head: str, text: str) -> list[str]:
    first, *rest = text.splitlines() or [""]
    pad = " " * (len(head) + 1)
    return [f"{head} {first}", *(f"{pad}{line}" for line in rest)]


def summary(results: Sequence[CaseResult], *, elapsed_ms: float) -> str:
    """A table per file (cases, passed, failed, time) and the total line."""
    files: dict[str, list[CaseResult]] = {}
    for result in results:
        files.setdefault(result.path, []).append(result)
    width = max([len("file"), *(len(cases[0].file) for cases in files.values())])
    lines = [f"{'file':<{width}}  {'cases':>5}  {'passed':>6}  {'failed':>6}  {'time':>8}"]
    for cases in files.values():
        name = cases[0].file
        passed = sum(case.passed for case in cases)
        time = duration(sum(case.duration_ms for case in cases))
        lines.append(f"{name:<{width}}  {len(cases):>5}  {passed:>6}  {len(cases) - passed:>6}  {time:>8}")
    failed = sum(not result.passed for result in results)
    total = len(results)
    counted = f"{total} case{'' if total == 1 else 's'}"
    if failed:
        lines.append(f"FAILED: {failed} of {counted} failed, {total - failed} passed ({duration(elapsed_ms)})")
    else:
        lines.append(f"OK: {counted} passed ({duration(elapsed_ms)})")
    return "\n".join(lines)


def junit_xml(results: Sequence[CaseResult]) -> str:
    """JUnit XML: one ``testsuite`` per test file, one ``testcase`` per case; a failure's text is the case's report.

    A suite is named as progress lines name its file; a case's ``file`` is the path CI should show
    (relative to the working directory).
    """
    root = ET.Element("testsuites", name="supportbot test")
    suites: dict[str, ET.Element] = {}
    for result in results:
        suite = suites.get(result.path)
        if suite is None:
            suite = suites[result.path] = ET.SubElement(root, "testsuite", name=result.file)
        where = result.where.rpartition(":")
        attributes = {
            "classname": re.sub(r"\.ya?ml$", "", result.file).replace("/", "."),
            "name": _clean(result.name),
            "file": result.path,
            "line": where[2] if where[2].isdigit() else "1",
            "time": f"{result.duration_ms / 1000:.3f}",
        }
        case = ET.SubElement(suite, "testcase", attributes)
        if not result.passed:
            run = result.shown_run
            first = run.failures[0] if run is not None and run.failures else None
            message = f"{first.what}: {first.message}" if first else f"passed {result.passes} of {len(result.runs)}"
            failure = ET.SubElement(case, "failure", message=_clean(message), type="AssertionError")
            failure.text = _clean(case_report(result))
        if len(result.runs) > 1:
            ET.SubElement(case, "system-out").text = f"passed {result.passes} of {len(result.runs)} runs"
    for path, suite in suites.items():
        cases = [r for r in results if r.path == path]
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(not r.passed for r in cases)))
        suite.set("errors", "0")
        suite.set("skipped", "0")
        suite.set("time", f"{sum(r.duration_ms for r in cases) / 1000:.3f}")
    root.set("tests", str(len(results)))
    root.set("failures", str(sum(not r.passed for r in results)))
    root.set("time", f"{sum(r.duration_ms for r in results) / 1000:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit_xml(path: Path, results: Sequence[CaseResult]) -> None:
    """Write ``junit_xml`` to ``path`` (its directory is created; ``check_writable`` checked it before the run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(results), encoding="utf-8")


def check_writable(path: Path) -> str | None:
    """Why the JUnit XML could not be written to ``path`` (with the fix), or None when it can.

    Checked before any case runs, so that a typo in ``--junit-xml`` does not cost a whole run. The
    directory may not exist yet (it is created), but its nearest existing ancestor must be a
    writable directory, and an existing file must be writable (click refuses a directory).
    """
    if path.exists():
        return None if os.access(path, os.W_OK) else f"{path}: the file is read-only; give another path"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{path}: {parent} is not a directory; give a path in a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path}: cannot write in {parent} (permission denied); give a path in a directory you can write to"
    return None


def _clean(text: str) -> str:
    """Text XML 1.0 can hold (control characters a model or tool may have sent are dropped)."""
    return _NOT_XML.sub("", text)
