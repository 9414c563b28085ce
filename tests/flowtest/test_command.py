"""``supportbot test``: its output, exit codes 0/1/2, -k, --junit-xml, --verbose, and --live with --repeat."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from supportbot.testing import FakeLLMServer, Reply
from tests.flowtest.conftest import cli, dedent, lines

ORDERS_TEST = """\
# yaml-language-server: $schema=../.schemas/test.schema.json
flow: order_status
customer: {email: ana@example.com, name: Ana Lima, verified: true}
now: "2026-11-20T10:00:00Z"
fixtures:
  orders:
    - {order_id: A1001, customer_email: ana@example.com, status: shipped, eta: "2026-11-25"}
cases:
  - name: a verified customer gets their order's status
    turns:
      - customer: Where is my order A1001?
        model:
          - call: lookup_order
            args: {order_id: A1001}
          - reply: Your order A1001 has shipped; it should arrive on 25 November.
        expect:
          called: [{tool: lookup_order, args: {order_id: A1001}}]
          reply_contains: shipped
  - name: the demo model looks it up too
    turns:
      - customer: Where is my order A1001?
        expect: {called: [lookup_order], reply_contains: "2026-11-25"}
"""
FAILING_TEST = """\
flow: billing
customer: {email: ana@example.com, verified: true}
cases:
  - name: asks to sign in
    expect: {system_prompt_contains: sign in}
  - name: totals
    turns:
      - customer: What did A1001 cost?
        model: [{call: order_total, args: {order_id: A1001}}, {reply: It cost nothing.}]
        expect: {reply_contains: "249.8"}
"""


def write(project: Path, name: str, text: str) -> None:
    (project / "tests" / name).write_text(dedent(text))


def test_all_pass(project: Path) -> None:
    write(project, "orders.yaml", ORDERS_TEST)
    result = cli("test")
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0] == "2 cases in 1 file (offline: model: scripts and the demo model)"
    assert out[1].startswith("PASS orders.yaml › a verified customer gets their order's status (")
    assert out[2].startswith("PASS orders.yaml › the demo model looks it up too (")
    assert out[4].split() == ["file", "cases", "passed", "failed", "time"]
    assert out[5].split()[:4] == ["orders.yaml", "2", "2", "0"]
    assert out[6].startswith("OK: 2 cases passed (") and len(out) == 7
    assert result.stderr == ""


def test_a_failing_case(project: Path) -> None:
    write(project, "orders.yaml", ORDERS_TEST)
    write(project, "billing.yaml", FAILING_TEST)
    result = cli("test")
    assert result.exit_code == 1
    out = result.stdout
    assert "FAIL billing.yaml › asks to sign in (" in out and "PASS orders.yaml › the demo model" in out
    assert (
        "FAIL billing.yaml › asks to sign in\n"
        "  tests/billing.yaml:5: case: system_prompt_contains: the system prompt does not contain 'sign in'\n"
        "    - contains: sign in\n"
        "    + system prompt:\n"
        "    + You answer billing questions for Acme Outdoor.\n"
    ) in out
    assert (
        "  tests/billing.yaml:10: turn 1: reply_contains: the reply does not contain '249.8'\n"
        "    - contains: 249.8\n"
        "    + reply: It cost nothing.\n"
        "  transcript (offline; flow billing, channel web, customer <ana@example.com> (verified)):\n"
        "    bot: Hello there, billing here.\n"
        "    turn 1 · customer: What did A1001 cost?\n"
        '      → order_total {"order_id": "A1001"}\n'
        '      ← order_total: {"order_id":"A1001","total":249.8,"currency":"USD"}\n'
        "    bot: It cost nothing.\n"
    ) in out
    assert "billing.yaml      2       0       2" in out and "orders.yaml       2       2       0" in out
    assert "FAILED: 2 of 4 cases failed, 2 passed (" in out


def test_k_selects_cases_by_file_and_name(project: Path) -> None:
    write(project, "orders.yaml", ORDERS_TEST)
    write(project, "billing.yaml", FAILING_TEST)
    result = cli("test", "-k", "DEMO MODEL")
    assert result.exit_code == 0 and "1 case in 2 files" in result.stdout and "OK: 1 case passed" in result.stdout
    assert cli("test", "-k", "billing.yaml › tot").exit_code == 1
    nothing = cli("test", "-k", "nothing like it")
    assert nothing.exit_code == 2
    assert "no case matches -k 'nothing like it'" in nothing.stderr


def test_paths_name_files_and_directories(project: Path) -> None:
    write(project, "orders.yaml", ORDERS_TEST)
    write(project, "billing.yaml", FAILING_TEST)
    assert cli("test", "tests/orders.yaml").exit_code == 0
    (project / "more").mkdir()
    (project / "more" / "x.yaml").write_text(dedent(ORDERS_TEST))
    result = cli("test", "more", "tests/orders.yaml")
    assert result.exit_code == 0 and "4 cases in 2 files" in result.stdout


def test_junit_xml(project: Path) -> None:
    write(project, "orders.yaml", ORDERS_TEST)
    write(project, "billing.yaml", FAILING_TEST)
    result = cli("test", "--junit-xml", "reports/flows.xml")
    assert result.exit_code == 1 and "JUnit XML: reports/flows.xml" in result.stdout
    root = ET.parse(project / "reports" / "flows.xml").getroot()
    assert [(s.get("name"), s.get("tests"), s.get("failures")) for s in root] == [
        ("billing.yaml", "2", "2"), ("orders.yaml", "2", "0")
    ]  # fmt: skip
    failure = root[0][1].find("failure")
    assert root[0][1].get("name") == "totals" and root[0][1].get("file") == "tests/billing.yaml"
    assert failure is not None and failure.get("message") == (
        "turn 1: reply_contains: the reply does not contain '249.8'"
    )
    assert "tests/billing.yaml:10: turn 1: reply_contains" in (failure.text or "")


def test_verbose_shows_passing_transcripts(project: Path) -> None:
    write(project, "orders.yaml", ORDERS_TEST)
    result = cli("test", "-v", "-k", "demo")
    assert result.exit_code == 0
    assert "PASS orders.yaml › the demo model looks it up too\n  transcript (offline;" in result.stdout
    assert "    turn 1 (demo model) · customer: Where is my order A1001?\n" in result.stdout
    assert '      → lookup_order {"order_id": "A1001"}' in result.stdout


def test_invalid_test_files_are_reported_together(project: Path) -> None:
    write(project, "orders.yaml", ORDERS_TEST)
    write(project, "a.yaml", "cases:\n  - name: a\n    turns: [{customer: hi, expect: {calld: [lookup_order]}}]\n")
    write(project, "b.yaml", "flow: returs\ncases: [{name: b}]\n")
    write(project, "data.yaml", "greeting: hello\n")
    result = cli("test")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "note: tests/data.yaml: no top-level cases:, so not a test file; skipped",
        "tests/a.yaml:3: cases[0].turns[0].expect.calld: unknown key 'calld'; did you mean 'called'?",
        "tests/b.yaml:1: flow: unknown flow 'returs'; did you mean 'returns'?",
        "2 problems in the test files; no test ran",
    ]


def test_usage_errors(project: Path) -> None:
    missing = cli("test", "nope")
    assert missing.exit_code == 2 and "nope: no such file or directory" in missing.stderr
    (project / "tests").rmdir()
    no_dir = cli("test")
    assert no_dir.exit_code == 2 and "tests: there is no tests directory" in no_dir.stderr
    (project / "tests").mkdir()
    empty = cli("test")
    assert (
        empty.exit_code == 2 and "no test files in tests: a test file is YAML with a top-level cases:" in empty.stderr
    )
    assert cli("test", "--repeat", "0").exit_code == 2
    assert cli("test", "--min-pass-rate", "2").exit_code == 2
    write(project, "orders.yaml", ORDERS_TEST)
    live = cli("test", "--live")
    assert live.exit_code == 2 and live.stdout == ""
    assert live.stderr.startswith(
        "Error: --live needs a model, and none is connected: set SUPPORTBOT_LLM_API_KEY (or llm.api_key in "
        "config.yaml) to the key of http"
    )
    assert live.stderr.endswith(", or leave out --live to run the tests offline (model: scripts and the demo model).\n")
    (project / "config.yaml").write_text("flows: {dir: nowhere}\n")
    broken = cli("test")
    assert broken.exit_code == 2 and "the project does not load, so no test ran" in broken.stderr
    assert "config.yaml:1: flows.dir" in broken.stderr


async def test_live_with_repeats_and_a_pass_rate(project: Path) -> None:
    write(project, "orders.yaml", ORDERS_TEST)
    async with FakeLLMServer() as fake:
        with (project / "config.yaml").open("a") as config:
            config.write(f"llm: {{base_url: {fake.base_url}, model: fake-1, retries: {{max_retries: 0}}}}\n")
        lookup = Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})])
        answers = [Reply(text="It has shipped, arriving 2026-11-25."), Reply(text="I don't know.")]
        fake.script(*[step for answer in answers * 3 for step in (lookup, answer)])
        first = await asyncio.to_thread(cli, "test", "--live", "--repeat", "3", "-k", "verified")
        second = await asyncio.to_thread(cli, "test", "--live", "--repeat", "3", "-k", "verified",
                                         "--min-pass-rate", "0.3")  # fmt: skip
    assert first.exit_code == 1, first.output
    assert "1 case in 1 file (live: fake-1, 3 runs each)" in first.stdout
    assert "FAIL orders.yaml › a verified customer gets their order's status (2/3 runs passed, " in first.stdout
    assert "  passed 2 of 3 runs (67%; needs 100%)\n  the first failing run (run 2):" in first.stdout
    assert second.exit_code == 0, second.output
    assert "PASS orders.yaml › a verified customer gets their order's status (1/3 runs passed, " in second.stdout


def test_a_real_process_in_the_project(project: Path) -> None:
    write(project, "orders.yaml", ORDERS_TEST)
    write(project, "billing.yaml", FAILING_TEST.replace("It cost nothing.", "It cost 249.8 USD.").replace(
        "customer: {email: ana@example.com, verified: true}",
        "customer: {email: ana@example.com, verified: true}\nfixtures:\n  orders: [{order_id: A1001, "
        "customer_email: ana@example.com, total: 249.8, currency: USD}]",
    ).replace("expect: {system_prompt_contains: sign in}", "expect: {system_prompt_omits: sign in}"))  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTBOT_")}
    environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    run = subprocess.run([sys.executable, "-m", "supportbot", "test"], cwd=project, env=environ, capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "OK: 4 cases passed" in run.stdout
    command = [sys.executable, "-m", "supportbot", "test", "-c", "config.yaml", "-k", "totals"]
    elsewhere = subprocess.run(command, cwd=project, env=environ, capture_output=True, text=True, timeout=60,
                               check=False)  # fmt: skip
    assert elsewhere.returncode == 0 and "OK: 1 case passed" in elsewhere.stdout


def test_same_named_files_under_two_paths_stay_apart(project: Path) -> None:
    for directory, reply in (("td1", "It has shipped."), ("td2", "No idea.")):
        (project / directory).mkdir()
        (project / directory / "x.yaml").write_text(dedent(f"""\
            cases:
              - name: a
                turns: [{{customer: hi, model: [{{reply: {reply}}}], expect: {{reply_contains: shipped}}}}]
            """))  # fmt: skip
    result = cli("test", "td1", "td2", "--junit-xml", "out.xml")
    assert result.exit_code == 1
    out = lines(result.stdout)
    assert out[0] == "2 cases in 2 files (offline: model: scripts and the demo model)"
    assert out[1].startswith("PASS td1/x.yaml › a (") and out[2].startswith("FAIL td2/x.yaml › a (")
    assert [line.split()[:4] for line in out if line.startswith("td")] == [
        ["td1/x.yaml", "1", "1", "0"], ["td2/x.yaml", "1", "0", "1"]
    ]  # fmt: skip
    root = ET.parse(project / "out.xml").getroot()
    assert [(suite.get("name"), [case.get("file") for case in suite]) for suite in root] == [
        ("td1/x.yaml", ["td1/x.yaml"]), ("td2/x.yaml", ["td2/x.yaml"])
    ]  # fmt: skip
    assert cli("test", "td1", "td2", "-k", "td2/x.yaml › a").exit_code == 1
    assert cli("test", "td1", "td2", "-k", "td1/").exit_code == 0


def test_an_unwritable_junit_path_is_refused_before_the_run(project: Path) -> None:
    write(project, "orders.yaml", ORDERS_TEST)
    (project / "file").write_text("")
    (project / "reports").mkdir()
    result = cli("test", "--junit-xml", "file/flows.xml")
    assert (result.exit_code, result.stdout) == (2, ""), result.output
    assert result.stderr == (
        "Error: --junit-xml file/flows.xml: file is not a directory; give a path in a directory; no test ran\n"
    )
    if os.geteuid() != 0:  # root writes anywhere
        (project / "reports").chmod(0o500)
        try:
            result = cli("test", "--junit-xml", "reports/deep/flows.xml")
        finally:
            (project / "reports").chmod(0o700)
        assert (result.exit_code, result.stdout) == (2, "")
        assert result.stderr == (
            "Error: --junit-xml reports/deep/flows.xml: cannot write in reports (permission denied); give a path in "
            "a directory you can write to; no test ran\n"
        )
    assert cli("test", "--junit-xml", "reports/deep/flows.xml").exit_code == 0
