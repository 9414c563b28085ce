"""The ``supportbot`` command, run as a real process against the fake provider and a SQLite file."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from supportbot import __version__
from supportbot.cli import main
from supportbot.testing import Fail, FakeLLMServer, Reply


@dataclass
class Run:
    code: int
    out: str
    err: str


async def supportbot(*args: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None) -> Run:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTBOT_")} | (env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "supportbot",
        *args,
        cwd=cwd,
        env=environ,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def write_config(path: Path, base_url: str, extra: str = "") -> Path:
    config = path / "config.yaml"
    config.write_text(
        f"llm:\n  base_url: {base_url}\n  api_key: ${{TEST_KEY:-sk-test}}\n"
        "  retries: {max_retries: 0}\n"
        "database:\n  url: sqlite+aiosqlite:///bot.db\n" + extra
    )
    return config


async def test_version(tmp_path: Path) -> None:
    run = await supportbot("--version", cwd=tmp_path)
    assert run.code == 0 and __version__ in run.out


async def test_validate_defaults_with_no_config(tmp_path: Path) -> None:
    run = await supportbot("validate", cwd=tmp_path)
    assert run.code == 0, run.err
    assert "built-in defaults" in run.out and "flow general (default)" in run.out and run.out.endswith("OK\n")
    assert "no API key" in run.err


async def test_validate_reports_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("llm:\n  max_tokens: 70000\n  temprature: 0.5\n")
    run = await supportbot("validate", cwd=tmp_path)
    assert run.code == 1
    assert "config.yaml:2: llm.max_tokens" in run.err and "65536" in run.err
    assert "config.yaml:3: llm.temprature" in run.err and "temperature" in run.err


async def test_validate_reports_a_broken_flow(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "general.yaml").write_text("name: general\ndescription: d\ntools: [lookup_ordr]\nsystem_prompt: hi\n")
    (tmp_path / "config.yaml").write_text("flows:\n  dir: flows\n")
    run = await supportbot("validate", cwd=tmp_path)
    assert run.code == 1
    assert "general.yaml:3" in run.err and "did you mean 'lookup_order'" in run.err


REPO = Path(__file__).resolve().parent.parent


async def test_the_example_config_validates_copied_into_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text((REPO / "config.example.yaml").read_text(encoding="utf-8"))
    run = await supportbot("validate", cwd=tmp_path)
    assert run.code == 0, run.err
    assert "flows: the example flows" in run.out and "flow general (default)" in run.out
    assert run.out.endswith("OK\n")


async def test_validate_lists_every_problem_of_config_and_flows_at_once(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "general.yaml").write_text("name: general\ndescription: d\ntools: [lookup_ordr]\nsystem_prompt: hi\n")
    (flows / "returns.yaml").write_text("name: returns\ndescription: d\nsystem_prompt: '{{ custmer.name }}'\n")
    (tmp_path / "config.yaml").write_text("llm:\n  max_tokens: 70000\nflows:\n  dir: flows\n")
    run = await supportbot("validate", cwd=tmp_path)
    assert run.code == 1
    assert run.err.removeprefix("Error: ").splitlines() == [
        "config.yaml:2: llm.max_tokens: 70000 is more than 65536, the model's output limit; use at most 65536",
        "flows/general.yaml:3: tools[0]: unknown tool 'lookup_ordr'; did you mean 'lookup_order'?",
        "flows/returns.yaml:3: system_prompt: unknown variable 'custmer'; did you mean 'customer'?",
    ]


async def test_tools_modules_are_imported_beside_the_config_file(tmp_path: Path) -> None:
    (deploy := tmp_path / "deploy").mkdir()
    (elsewhere := tmp_path / "elsewhere").mkdir()
    (deploy / "acme_warranty_tools.py").write_text(
        "from supportbot import tool\n\n\n@tool\nasync def warranty_check(serial: str) -> str:\n"
        '    """Warranty of a product.\n\n    Args:\n        serial: the serial number.\n    """\n'
        '    return "valid"\n'
    )
    (deploy / "config.yaml").write_text("tools:\n  modules:\n    - acme_warranty_tools\n")
    run = await supportbot("validate", "-c", "../deploy/config.yaml", cwd=elsewhere)
    assert run.code == 0, run.err
    assert "warranty_check" in next(line for line in run.out.splitlines() if line.startswith("tools:"))

    (deploy / "config.yaml").write_text("tools:\n  modules:\n    - acme_warranty_tools\n    - acme_missing_tools\n")
    run = await supportbot("validate", "-c", "../deploy/config.yaml", cwd=elsewhere)
    assert run.code == 1
    assert run.err.startswith(
        "Error: ../deploy/config.yaml:4: tools.modules[1]: no module 'acme_missing_tools' beside the config file "
        f"({deploy}) or in the working directory ({elsewhere}), and none is installed; "
        "put acme_missing_tools.py there or install the package that has it"
    ), run.err


async def test_chat_streams_tool_calls_and_stores_the_ticket(tmp_path: Path) -> None:
    async with FakeLLMServer() as fake:
        write_config(tmp_path, fake.base_url)
        fake.script(
            Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})]),
            Reply(text="Order A1001 has shipped."),
            Reply(tool_calls=[("create_ticket", {"subject": "Late \x1b]0;PWNED\x07parcel", "description": "late"})]),
            Reply(text="Ticket opened."),
        )
        run = await supportbot(
            "chat",
            "--flow",
            "order_status",
            "--customer",
            "ana@example.com",
            cwd=tmp_path,
            stdin="Where is A1001?\nopen a ticket please\nyes\n",
        )
    assert run.code == 0, run.err
    assert "bot: Order A1001 has shipped." in run.out
    assert "Shall I open a ticket" in run.out and "bot: Ticket opened." in run.out
    assert "lookup_order" in run.err and "create_ticket" in run.err
    assert "\x1b" not in run.out + run.err  # the model's escape sequence (OSC: retitle) is shown, not obeyed

    listed = await supportbot("tickets", "list", "--format", "json", cwd=tmp_path)
    tickets = json.loads(listed.out)
    assert [(t["id"], t["kind"], t["status"]) for t in tickets] == [(1, "request", "open")]
    solved = await supportbot("tickets", "list", "--status", "solved", "--format", "json", cwd=tmp_path)
    assert json.loads(solved.out) == []
    opened = await supportbot("tickets", "list", "--status", "open", "--format", "json", cwd=tmp_path)
    assert [t["id"] for t in json.loads(opened.out)] == [1]
    table = await supportbot("tickets", "list", cwd=tmp_path)
    assert table.out.startswith("ID ") and "Late \\x1b]0;PWNED\\x07parcel" in table.out
    rows = list(csv.DictReader(io.StringIO((await supportbot("tickets", "list", "--format", "csv", cwd=tmp_path)).out)))
    assert rows[0]["id"] == "1" and rows[0]["status"] == "open"

    shown = await supportbot("tickets", "show", "1", cwd=tmp_path)
    assert shown.code == 0 and "\x1b" not in shown.out
    for expected in (
        "Ticket #1",
        "customer: Where is A1001?",
        'calls lookup_order({"order_id":"A1001"})',
        "tool lookup_order [ok]",
        "bot: Order A1001 has shipped.",
        "customer: yes",
        "tokens",
    ):
        assert expected in shown.out, expected
    data = json.loads((await supportbot("tickets", "show", "1", "--format", "json", cwd=tmp_path)).out)
    assert data["ticket"]["id"] == 1 and any(m["tool_calls"] for m in data["messages"])
    missing = await supportbot("tickets", "show", "99", cwd=tmp_path)
    assert missing.code == 1 and "no ticket #99" in missing.err


async def test_chat_model_down_gives_the_fallback(tmp_path: Path) -> None:
    async with FakeLLMServer() as fake:
        write_config(tmp_path, fake.base_url)
        fake.script(Fail(500))
        run = await supportbot("chat", cwd=tmp_path, stdin="hello\n")
    assert run.code == 0
    assert "technical problem" in run.out and "ticket #1" in run.out
    listed = json.loads((await supportbot("tickets", "list", "--format", "json", cwd=tmp_path)).out)
    assert listed[0]["kind"] == "escalation"


async def test_chat_without_a_key_says_how_to_connect_one(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("database:\n  url: sqlite+aiosqlite:///bot.db\n")
    run = await supportbot("chat", cwd=tmp_path, stdin="hello\n")
    assert run.code == 0
    assert "No model is connected" in run.err and "SUPPORTBOT_LLM_API_KEY" in run.err and "--demo" in run.err


async def test_demo_chat_needs_no_config(tmp_path: Path) -> None:
    run = await supportbot("chat", "--demo", cwd=tmp_path, stdin="Where is my order A1001?\n")
    assert run.code == 0, run.err
    assert "[demo model] Order A1001 is" in run.out
    assert (tmp_path / "supportbot.db").exists()
    assert f"note: created a new, empty database {tmp_path / 'supportbot.db'} (database.url of the built-in" in run.err
    again = await supportbot("chat", "--demo", cwd=tmp_path, stdin="hi\n")
    assert again.code == 0 and "note:" not in again.err


async def test_commands_reading_the_database_do_not_create_one(tmp_path: Path) -> None:
    # Run in the wrong directory, they say which database they looked for instead of making an empty one.
    for command in (["tickets", "list"], ["tickets", "show", "1"], ["tickets", "export"], ["conversations", "list"]):
        run = await supportbot(*command, cwd=tmp_path)
        assert run.code == 1, command
        assert run.err == (
            f"Error: no database at {tmp_path / 'supportbot.db'} (database.url of the built-in defaults: no -c, "
            "no $SUPPORTBOT_CONFIG and no ./config.yaml); run this where your config.yaml is, or pass -c "
            "path/to/config.yaml\n"
        ), command
    assert not (tmp_path / "supportbot.db").exists()
    (tmp_path / "config.yaml").write_text("database:\n  url: sqlite:///state/bot.db\n")
    (tmp_path / "state").mkdir()
    run = await supportbot("conversations", "show", "c1", cwd=tmp_path)
    assert run.code == 1 and f"no database at {tmp_path / 'state' / 'bot.db'} (database.url of " in run.err
    assert not (tmp_path / "state" / "bot.db").exists()
    made = await supportbot("admin", "set-password", "--password-stdin", cwd=tmp_path, stdin="a long enough secret\n")
    assert made.code == 0, made.err
    assert f"note: created a new, empty database {tmp_path / 'state' / 'bot.db'}" in made.err
    listed = await supportbot("tickets", "list", cwd=tmp_path)
    assert (listed.code, listed.out, listed.err) == (0, "no tickets\n", "")


@pytest.mark.parametrize(("status", "ok"), [(None, True), (401, False)])
async def test_llm_check(tmp_path: Path, status: int | None, ok: bool) -> None:
    async with FakeLLMServer(mode="gemini") as fake:
        write_config(tmp_path, fake.base_url)
        if status:
            fake.script(Fail(status))
        else:
            fake.script(Reply("OK"), Reply(tool_calls=[("get_order_status", {"order_id": "A1001"})]), Reply("Shipped."))
        run = await supportbot("llm", "check", cwd=tmp_path)
    assert run.code == (0 if ok else 1), run.out + run.err
    # The status in the verdict, not in the fake's URL (its random port may hold "401").
    assert ("401" in run.out.replace(fake.base_url, "")) != ok


async def test_llm_check_without_a_key_says_how_to_set_one(tmp_path: Path) -> None:
    run = await supportbot("llm", "check", cwd=tmp_path)
    assert run.code == 1 and run.out == ""
    assert run.err == (
        "Error: no API key is set for https://api.core.today/llm/gemini/v1beta/openai: export "
        "SUPPORTBOT_LLM_API_KEY=<your key> or set llm.api_key in config.yaml (a local server at another "
        "llm.base_url needs none)\n"
    )


async def test_llm_check_probes_a_local_server_without_a_key(tmp_path: Path) -> None:
    async with FakeLLMServer(mode="gemini") as fake:
        (tmp_path / "config.yaml").write_text(f"llm:\n  base_url: {fake.base_url}\n")
        fake.script(Reply("OK"), Reply(tool_calls=[("get_order_status", {"order_id": "A1001"})]), Reply("Shipped."))
        run = await supportbot("llm", "check", cwd=tmp_path)
    assert run.code == 0, run.out + run.err
    assert "Verdict: OK" in run.out and "Authorization" not in fake.requests[0].headers


async def test_db_upgrade_creates_the_database(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("database:\n  url: sqlite+aiosqlite:///fresh.db\n")
    run = await supportbot("db", "upgrade", cwd=tmp_path)
    assert run.code == 0, run.err
    assert (tmp_path / "fresh.db").exists() and "revision" in run.out


async def test_tools_in_the_working_directory_are_found(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "warranty.py").write_text(
        "from supportbot import tool\n\n\n@tool\nasync def warranty_status(serial: str) -> str:\n"
        '    """Warranty of a product.\n\n    Args:\n        serial: the serial number.\n    """\n'
        '    return "valid"\n'
    )
    run = await supportbot("validate", cwd=tmp_path)
    assert run.code == 0, run.err
    tools_line = next(line for line in run.out.splitlines() if line.startswith("tools:"))
    assert "warranty_status" in tools_line and "lookup_order" in tools_line


async def test_a_local_server_needs_no_key(tmp_path: Path) -> None:
    async with FakeLLMServer() as fake:
        (tmp_path / "config.yaml").write_text(
            f"llm:\n  base_url: {fake.base_url}\ndatabase:\n  url: sqlite+aiosqlite:///bot.db\n"
        )
        fake.script(Reply(text="Hello from a local model."))
        run = await supportbot("chat", cwd=tmp_path, stdin="hi\n")
    assert run.code == 0 and "bot: Hello from a local model." in run.out
    assert "Authorization" not in fake.requests[0].headers


async def test_an_unknown_flow_is_refused_with_the_choices(tmp_path: Path) -> None:
    run = await supportbot("chat", "--demo", "--flow", "retruns", cwd=tmp_path, stdin="hi\n")
    assert run.code == 1
    assert "no flow 'retruns'" in run.err and "returns" in run.err


@pytest.mark.parametrize(
    ("orders", "words"),
    [
        ("orders:\n  source: file\n  path: orders.json\n", "orders.json"),
        ("orders:\n  source: file\n  path: missing.yaml\n", "missing.yaml"),
    ],
)
async def test_validate_checks_the_order_source(tmp_path: Path, orders: str, words: str) -> None:
    (tmp_path / "config.yaml").write_text(orders)
    run = await supportbot("validate", cwd=tmp_path)
    assert run.code == 1 and words in run.err
    chat = await supportbot("chat", "--demo", cwd=tmp_path, stdin="hi\n")
    assert "Unclosed" not in chat.err


# -- logs: run in-process with click's runner on a log file written here --------------------------


def log_line(**fields: object) -> str:
    base = {"time": "2026-11-24T09:00:00.000+00:00", "level": "INFO", "logger": "supportbot.dispatch",
            "message": "turn", "event": "turn", "conversation_id": "c1", "channel": "web", "turn": 1,
            "flow": "general", "transfers": [], "handoff": None, "outcome": "finished", "duration_ms": 800.0,
            "first_token_ms": 200.0, "tools": [], "input_tokens": 100, "output_tokens": 10, "cost_usd": 0.0005,
            "ticket_id": None, "reason": None}  # fmt: skip
    return json.dumps(base | fields)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "supportbot.log"
    lines = [
        log_line(time="2020-01-01T09:00:00.000+00:00", conversation_id="old"),
        "2026-11-24 09:00:00,000 INFO supportbot.server: a text-format line",
        log_line(
            tools=[
                {"name": "lookup_order", "ok": False, "duration_ms": 12.0, "error": "timed out"},
                {"name": "create_ticket", "ok": True, "duration_ms": 3.0},
            ]
        ),
        json.dumps(
            {
                "time": "2099-01-01T00:00:00+00:00",
                "level": "WARNING",
                "logger": "supportbot.engine",
                "message": "turn failed in conversation c1: the model answered HTTP 500",
            }
        ),
        log_line(
            time="2099-01-01T00:00:01+00:00",
            outcome="failed",
            flow="\x1b[2Jreturns",
            conversation_id="c2",
            input_tokens=None,
            output_tokens=None,
            cost_usd=None,
            reason="HTTP 500",
            ticket_id=4,
        ),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_logs_of_one_conversation(log_file: Path) -> None:
    result = CliRunner().invoke(main, ["logs", str(log_file), "--conversation", "c1"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert "c1 web general finished" in lines[0] and "lookup_order ✗ 12 ms, create_ticket ✓ 3 ms" in lines[0]
    assert "100+10 tokens · $0.00050 · 800 ms" in lines[0]
    assert "supportbot.engine: turn failed in conversation c1" in lines[1]
    assert result.stderr == "skipped 1 line(s) that are not JSON log records\n"


def test_logs_tool_failures_since_today(log_file: Path) -> None:
    result = CliRunner().invoke(main, ["logs", "--tool-failures", "--since", "2026-11-24", str(log_file)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "2026-11-24 09:00:00 c1 general ✗ lookup_order (12 ms): timed out\n"


def test_logs_from_stdin_as_json_with_control_characters_inert(log_file: Path) -> None:
    text = log_file.read_text(encoding="utf-8")
    result = CliRunner().invoke(main, ["logs", "--outcome", "failed", "--format", "json"], input=text)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert (record["conversation_id"], record["flow"], record["ticket_id"]) == ("c2", "\x1b[2Jreturns", 4)
    shown = CliRunner().invoke(main, ["logs", "-", "--outcome", "failed"], input=text)
    assert "\x1b" not in shown.stdout and "\\x1b[2Jreturns failed" in shown.stdout and "HTTP 500" in shown.stdout


def test_logs_says_when_nothing_matches_and_refuses_a_bad_since(log_file: Path) -> None:
    none = CliRunner().invoke(main, ["logs", str(log_file), "--conversation", "c9"])
    assert none.exit_code == 0 and none.stdout == "" and "no records match" in none.stderr
    bad = CliRunner().invoke(main, ["logs", str(log_file), "--since", "yesterday"])
    assert bad.exit_code == 2 and "'yesterday' is not a date" in bad.stderr
