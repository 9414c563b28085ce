"""Finding test files and reporting every problem of every file at once, as ``file:line: key: problem; fix``."""

from __future__ import annotations

from pathlib import Path

from supportbot._yaml import Problems
from supportbot.flowtest.load import find_files, load_files

TOOLS = ["lookup_order", "create_ticket", "handoff_to_human"]
FLOWS = ["general", "order_status", "returns"]


def _load(paths: list[Path], default: Path) -> tuple[list[str], list[str], list[str]]:
    """The names of the test files found, the notes, and the problems."""
    problems = Problems()
    found = load_files(find_files(paths, default=default, problems=problems), tools=TOOLS, flows=FLOWS,
                       problems=problems)  # fmt: skip
    return [f.name for f in found.files], list(found.notes), [str(p) for p in problems.items]


def test_test_files_are_found_under_the_directory(project: Path) -> None:
    tests = project / "tests"
    (tests / "orders").mkdir()
    (tests / "a.yaml").write_text("cases: [{name: a}]\n")
    (tests / "orders" / "b.yml").write_text("cases: [{name: b}]\n")
    (tests / "data.yaml").write_text("orders: []\n")
    (tests / "list.yaml").write_text("- 1\n")
    (tests / ".hidden").mkdir()
    (tests / ".hidden" / "c.yaml").write_text("cases: [")
    (tests / "notes.txt").write_text("cases: [")
    names, notes, problems = _load([], tests)
    assert names == ["a.yaml", "orders/b.yml"]
    assert notes == [
        "tests/data.yaml: no top-level cases:, so not a test file; skipped",
        "tests/list.yaml: no top-level cases:, so not a test file; skipped",
    ]
    assert problems == []
    assert _load([tests / "orders" / "b.yml", tests], tests)[0] == ["b.yml", "a.yaml"]


def test_a_missing_path_is_a_problem(project: Path) -> None:
    assert _load([project / "nope.yaml"], project / "tests")[2] == [
        "nope.yaml: no such file or directory; give a test file or a directory of them"
    ]
    (project / "tests").rmdir()
    assert _load([], project / "tests")[2] == [
        "tests: there is no tests directory; create it with a test file (see docs/testing.md), or name test files"
    ]


def test_every_problem_of_every_file_at_once(project: Path) -> None:
    tests = project / "tests"
    (tests / "a.yaml").write_text(
        """\
flow: order_stats
cases:
  - name: x
    turns:
      - customer: hi
        model: [{call: lookup_ordr}, {reply: a, error: b}]
        expect:
          calld: [lookup_order]
          called: [lookup_ordr, {tool: create_tickt}]
          not_called: handof_to_human
          transfer: retuns
          reply_matches: "(("
          ticket: {subjct: x, priority: hgh}
  - name: x
    rules: [{when: a, call: opening_hours}]
"""
    )
    (tests / "b.yaml").write_text("cases:\n  - name: [\n")
    (tests / "c.yaml").write_text("cases:\n  - turns: [{customer: hi, expect: {max_cost_usd: -1, flow: genral}}]\n")
    names, _, problems = _load([], tests)
    assert names == []
    assert sorted(problems) == sorted(
        [
            "tests/a.yaml:1: flow: unknown flow 'order_stats'; did you mean 'order_status'?",
            "tests/a.yaml:11: cases[0].turns[0].expect.transfer: unknown flow 'retuns'; did you mean 'returns'?",
            "tests/a.yaml:12: cases[0].turns[0].expect.reply_matches: not a valid regular expression: missing ), "
            "unterminated subpattern at position 1",
            "tests/a.yaml:13: cases[0].turns[0].expect.ticket.priority: 'hgh' is not allowed; use one of 'low', "
            "'normal', 'high' or 'urgent'",
            "tests/a.yaml:13: cases[0].turns[0].expect.ticket.subjct: unknown key 'subjct'; did you mean 'subject'?",
            "tests/a.yaml:14: cases[1].name: 'x' is also the name of the case at line 3; give each case a unique name",
            "tests/a.yaml:15: cases[1].rules[0].call: unknown tool 'opening_hours'; the tools are create_ticket, "
            "handoff_to_human, lookup_order, transfer_to_general, transfer_to_order_status, transfer_to_returns",
            "tests/a.yaml:6: cases[0].turns[0].model[0].call: unknown tool 'lookup_ordr'; did you mean 'lookup_order'?",
            "tests/a.yaml:6: cases[0].turns[0].model[1]: give exactly one of reply:, call:, calls: and error:; found "
            "reply, error",
            "tests/a.yaml:8: cases[0].turns[0].expect.calld: unknown key 'calld'; did you mean 'called'?",
            "tests/a.yaml:9: cases[0].turns[0].expect.called[0]: unknown tool 'lookup_ordr'; did you mean "
            "'lookup_order'?",
            "tests/a.yaml:9: cases[0].turns[0].expect.called[1].tool: unknown tool 'create_tickt'; did you mean "
            "'create_ticket'?",
            "tests/a.yaml:10: cases[0].turns[0].expect.not_called: unknown tool 'handof_to_human'; did you mean "
            "'handoff_to_human'?",
            "tests/b.yaml:3: invalid YAML: while parsing a flow node expected the node content, but found "
            "'<stream end>'; check indentation and quoting",
            "tests/c.yaml:2: cases[0].name: missing required key 'name'; add it",
            "tests/c.yaml:2: cases[0].turns[0].expect.flow: unknown flow 'genral'; did you mean 'general'?",
            "tests/c.yaml:2: cases[0].turns[0].expect.max_cost_usd: -1 is less than 0.0; use at least 0.0",
        ]
    )
