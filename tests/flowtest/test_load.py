"""Finding test files and reporting every problem of every file at once, as ``file:line: key: problem; fix``."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    # With several paths, files are named relative to the working directory, so same names stay apart.
    assert _load([tests / "orders" / "b.yml", tests], tests)[0] == ["tests/orders/b.yml", "tests/a.yaml"]


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


TURN = "cases:\n  - name: a\n    turns:\n      - customer: Where is my order?\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # An empty text would match every reply (or every prompt): refused, not passed.
        (TURN + "        expect: {reply_contains: ''}\n",
         "tests/t.yaml:5: cases[0].turns[0].expect.reply_contains: an empty text matches every reply; give the text "
         "to look for"),
        (TURN + "        expect: {reply_contains: [shipped, '']}\n",
         "tests/t.yaml:5: cases[0].turns[0].expect.reply_contains: an empty text matches every reply; give the text "
         "to look for"),
        (TURN + "        expect: {reply_not_contains: ''}\n",
         "tests/t.yaml:5: cases[0].turns[0].expect.reply_not_contains: an empty text matches every reply; give the "
         "text to look for"),
        (TURN + "        expect: {system_prompt_contains: ''}\n",
         "tests/t.yaml:5: cases[0].turns[0].expect.system_prompt_contains: an empty text matches every system "
         "prompt; give the text to look for"),
        (TURN + "        expect: {reply_matches: ''}\n",
         "tests/t.yaml:5: cases[0].turns[0].expect.reply_matches: an empty pattern matches every reply; give the "
         "pattern to look for"),
        (TURN + "        expect: {not_called: ''}\n",
         "tests/t.yaml:5: cases[0].turns[0].expect.not_called: an empty tool name; give the tool's name"),
        # An empty name: one problem, not also "unknown tool ''".
        (TURN + "        expect: {confirmation: ''}\n",
         "tests/t.yaml:5: cases[0].turns[0].expect.confirmation: expected a name, true or false, got ''"),
        (TURN + "        expect: {flow: ''}\n",
         "tests/t.yaml:5: cases[0].turns[0].expect.flow: needs at least 1 character; fill it in"),
        (TURN + "        expect: {called: ['']}\n",
         "tests/t.yaml:5: cases[0].turns[0].expect.called[0].tool: needs at least 1 character; fill it in"),
        # A key without a value is null, which would switch the assertion (or the script) off.
        (TURN + "        expect:\n          reply_contains:\n",
         "tests/t.yaml:6: cases[0].turns[0].expect.reply_contains: has no value; give one or remove the key"),
        (TURN + "        expect: {ticket: }\n",
         "tests/t.yaml:5: cases[0].turns[0].expect.ticket: has no value; give one or remove the key"),
        (TURN + "        expect:\n",
         "tests/t.yaml:5: cases[0].turns[0].expect: has no value; give one or remove the key"),
        (TURN + "        model:\n",
         "tests/t.yaml:5: cases[0].turns[0].model: has no value; give one or remove the key"),
        (TURN + "        model: [{reply: hi, usage: {input_tokens: }}]\n",
         "tests/t.yaml:5: cases[0].turns[0].model[0].usage.input_tokens: has no value; give one or remove the key"),
        ("flow:\ncases: [{name: a}]\n", "tests/t.yaml:1: flow: has no value; give one or remove the key"),
        ("fixtures: {orders: }\ncases: [{name: a}]\n",
         "tests/t.yaml:1: fixtures.orders: has no value; give one or remove the key"),
        # A YAML boolean where text is expected says how to write the text.
        ("cases: [{name: yes}]\n", 'tests/t.yaml:1: cases[0].name: expected text, got true; write it in quotes: "yes"'),
        ("customer: {name: no}\ncases: [{name: a}]\n",
         'tests/t.yaml:1: customer.name: expected text, got false; write it in quotes: "no"'),
        (TURN + "        expect: {reply_contains: yes}\n",
         'tests/t.yaml:5: cases[0].turns[0].expect.reply_contains: expected text, got true; write it in quotes: '
         '"yes"'),
        (TURN + "        model: [{reply: yes}]\n",
         'tests/t.yaml:5: cases[0].turns[0].model[0].reply: expected text, got true; write it in quotes: "yes"'),
        ("customer: yes\ncases: [{name: a}]\n",
         "tests/t.yaml:1: customer: expected the customer's keys (email:, name:, verified:) or null (an anonymous "
         "visitor), got true; write e.g. customer: {email: ana@example.com, verified: true}"),
        # The short forms of called: are checked against the project's tools like the list.
        (TURN + "        expect: {called: lookup_ordr}\n",
         "tests/t.yaml:5: cases[0].turns[0].expect.called: unknown tool 'lookup_ordr'; did you mean 'lookup_order'?"),
        (TURN + "        expect: {called: {tool: lookup_ordr}}\n",
         "tests/t.yaml:5: cases[0].turns[0].expect.called.tool: unknown tool 'lookup_ordr'; did you mean "
         "'lookup_order'?"),
    ],
)  # fmt: skip
def test_one_mistake_is_one_problem_with_its_fix(project: Path, text: str, problem: str) -> None:
    (project / "tests" / "t.yaml").write_text(text)
    assert _load([], project / "tests")[2] == [problem]


def test_null_is_an_anonymous_customer_and_yes_is_a_customer_message(project: Path) -> None:
    (project / "tests" / "t.yaml").write_text(
        "customer: {email: ana@example.com}\ncases:\n  - name: a\n    customer: null\n    turns: [{customer: yes}]\n"
    )
    assert _load([], project / "tests") == (["t.yaml"], [], [])
