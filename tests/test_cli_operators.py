"""The operators' commands: reply, note, close, reopen, export, conversations, admin accounts."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from supportbot.admin.passwords import verify_password
from supportbot.cli import main
from supportbot.messages import ToolCall, Usage
from supportbot.store.base import NewMessage
from supportbot.store.sql import SQLStore

ESCAPE = "\x1b[2J\x1b]0;pwned\x07"


@pytest.fixture
def db(tmp_path: Path) -> dict[str, Any]:
    """A SQLite database with one conversation (a tool call, control characters) and its ticket."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ops.db'}"
    (tmp_path / "config.yaml").write_text(f"database: {{url: '{url}'}}\nlogging: {{level: WARNING}}\n")

    async def make() -> dict[str, Any]:
        store = await SQLStore.open(url)
        try:
            customer = await store.get_or_create_customer(email="ana@example.com", name="Ana", verified=True)
            conversation = await store.create_conversation(customer_id=customer.id, channel="web", flow="general")
            await store.add_messages(conversation.id, [
                NewMessage(role="user", content=f"where is A1001? {ESCAPE}"),
                NewMessage(role="assistant", tool_calls=(ToolCall(id="c1", name="lookup_order",
                                                                  arguments='{"order_id": "A1001"}'),)),
                NewMessage(role="tool", tool_call_id="c1", tool_name="lookup_order", content='{"status": "lost"}'),
            ])  # fmt: skip
            ticket = await store.create_ticket(subject="=HYPERLINK(\"http://x\")", conversation_id=conversation.id,
                                               customer_id=customer.id, channel="web", flow="general")  # fmt: skip
            return {"url": url, "conversation": conversation.id, "ticket": ticket.id}
        finally:
            await store.close()

    return asyncio.run(make()) | {"config": str(tmp_path / "config.yaml")}


def run(db: dict[str, Any], *args: str, stdin: str | None = None) -> Any:
    result = CliRunner().invoke(main, [*args[:2], "-c", db["config"], *args[2:]], input=stdin)
    return result


def read(db: dict[str, Any], what: str, *args: Any) -> Any:
    async def go() -> Any:
        store = await SQLStore.open(db["url"])
        try:
            return await getattr(store, what)(*args)
        finally:
            await store.close()

    return asyncio.run(go())


def test_reply_note_close_and_reopen_are_recorded_with_who_did_them(db: dict[str, Any]) -> None:
    ticket = str(db["ticket"])
    result = run(db, "tickets", "reply", ticket, "Hello Ana, a person here.", "--as", "dana")
    assert result.exit_code == 0, result.output
    assert "the customer sees it" in result.output
    messages = read(db, "list_messages", db["conversation"])
    assert (messages[-1].kind, messages[-1].author, messages[-1].content) == (
        "human",
        "dana",
        "Hello Ana, a person here.",
    )
    assert read(db, "get_conversation", db["conversation"]).status == "human"
    assert run(db, "tickets", "note", ticket, "-", "--as", "dana", stdin="called her\n").exit_code == 0
    assert "is closed" in run(db, "tickets", "close", ticket, "--as", "dana").output
    assert read(db, "get_conversation", db["conversation"]).status == "closed"
    assert "is open" in run(db, "tickets", "reopen", ticket).output
    events = [(e.actor, e.action, e.detail) for e in read(db, "ticket_events", db["ticket"])]
    assert events[1:4] == [("dana", "reply", "Hello Ana, a person here."), ("dana", "note", "called her"),
                           ("dana", "status", "closed")]  # fmt: skip
    assert events[4][0].startswith("cli") and events[4][1:] == ("status", "open")


def test_mistakes_get_a_one_line_reason(db: dict[str, Any]) -> None:
    result = run(db, "tickets", "reply", "999", "hi")
    assert result.exit_code == 1 and "no ticket #999" in result.output
    result = run(db, "tickets", "reply", str(db["ticket"]), "   ")
    assert result.exit_code == 1 and "the reply is empty" in result.output
    result = run(db, "conversations", "show", "nope")
    assert result.exit_code == 1 and "no conversation 'nope'" in result.output


def test_export_as_csv_and_json(db: dict[str, Any]) -> None:
    result = run(db, "tickets", "export", "--format", "csv")
    assert result.exit_code == 0, result.output
    [row] = list(csv.DictReader(io.StringIO(result.output)))
    assert row["id"] == str(db["ticket"]) and row["customer_email"] == "ana@example.com"
    assert row["subject"].startswith("'=")  # a formula stays text in a spreadsheet
    assert row["messages"] == "3"
    result = run(db, "tickets", "export", "--format", "json", "--status", "open")
    [document] = json.loads(result.output)
    assert document["ticket"]["id"] == db["ticket"]
    assert [m["role"] for m in document["messages"]] == ["user", "assistant", "tool"]
    assert json.loads(run(db, "tickets", "export", "--format", "json", "--status", "closed").output) == []


def test_conversations_list_and_show_neutralise_control_characters(db: dict[str, Any]) -> None:
    listed = run(db, "conversations", "list")
    assert listed.exit_code == 0 and db["conversation"] in listed.output
    shown = run(db, "conversations", "show", db["conversation"])
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.output and "\x07" not in shown.output
    assert "\\x1b[2J" in shown.output
    assert 'lookup_order({"order_id": "A1001"})' in shown.output and "ticket #1" in shown.output
    data = json.loads(run(db, "conversations", "show", db["conversation"], "--format", "json").output)
    assert data["messages"][0]["content"].endswith(ESCAPE)  # JSON for scripts keeps the exact text
    assert json.loads(run(db, "conversations", "list", "--format", "json", "--search", "nothing like").output)[
        "total"] == 0  # fmt: skip


def test_tickets_list_filters(db: dict[str, Any]) -> None:
    assert str(db["ticket"]) in run(db, "tickets", "list", "--search", "A1001").output
    assert run(db, "tickets", "list", "--status", "closed").output.strip() == "no tickets"


def test_admin_accounts(db: dict[str, Any]) -> None:
    result = run(db, "admin", "set-password", "dana", "--password-stdin", stdin="a long enough secret\n")
    assert result.exit_code == 0, result.output
    stored = read(db, "operator_password_hash", "dana")
    assert stored.startswith("scrypt$") and verify_password("a long enough secret", stored)
    result = run(db, "admin", "set-password", "dana", "--password-stdin", stdin="short\n")
    assert result.exit_code == 1 and "at least 10 characters" in result.output
    hashed = CliRunner().invoke(main, ["admin", "hash-password", "--password-stdin"], input="another secret!\n")
    assert verify_password("another secret!", hashed.output.strip())


def test_export_to_a_file_and_list_by_customer(db: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "tickets.json"
    result = run(db, "tickets", "export", "--format", "json", "-o", str(target))
    assert result.exit_code == 0 and "1 ticket(s) exported" in result.output
    assert json.loads(target.read_text())[0]["customer_email"] == "ana@example.com"
    assert db["conversation"] in run(db, "conversations", "list", "--customer", "ANA@").output
    assert run(db, "conversations", "list", "--customer", "bob").output.strip() == "no conversations"


def add_costly_reply(db: dict[str, Any]) -> None:
    async def go() -> None:
        store = await SQLStore.open(db["url"])
        try:
            await store.add_messages(db["conversation"], [
                NewMessage(role="assistant", content="It is lost.\nSorry.", model="m", cost_usd=0.0030644999999999995,
                           usage=Usage(input_tokens=3000, output_tokens=181)),
            ])  # fmt: skip
        finally:
            await store.close()

    asyncio.run(go())


def test_costs_print_as_money_and_round_in_json(db: dict[str, Any]) -> None:
    add_costly_reply(db)
    listed = run(db, "conversations", "list")
    assert "$0.0031" in listed.output and "0.00306" not in listed.output
    shown = run(db, "conversations", "show", db["conversation"])
    assert "tokens · $0.0031" in shown.output and "0.00306" not in shown.output
    ticket = run(db, "tickets", "show", str(db["ticket"]))
    assert "tokens, $0.0031):" in ticket.output and "m · 3000+181 tokens · $0.0031 ·" in ticket.output
    data = json.loads(run(db, "conversations", "show", db["conversation"], "--format", "json").output)
    assert data["conversation"]["cost_usd"] == 0.0030645 and data["messages"][-1]["cost_usd"] == 0.0030645
    exported = json.loads(run(db, "tickets", "export", "--format", "json").output)
    assert exported[0]["messages"][-1]["cost_usd"] == 0.0030645
    [row] = list(csv.DictReader(io.StringIO(run(db, "tickets", "export").output)))
    assert row["cost_usd"] == "0.0030645"


@pytest.mark.parametrize("command", [("tickets", "list", "--format", "csv"), ("tickets", "export")])
def test_csv_lines_end_with_a_newline_only(db: dict[str, Any], command: tuple[str, ...]) -> None:
    add_costly_reply(db)
    result = run(db, *command)
    assert result.exit_code == 0, result.output
    written = result.stdout_bytes.decode()  # not .output: click's runner turns \r\n into \n there
    assert "\r" not in written and "\\x0d" not in written
    lines = written.split("\n")
    assert lines[0].startswith("id,") and lines[-1] == "" and len(lines) == 3
    [row] = list(csv.DictReader(io.StringIO(result.output)))
    assert row["id"] == str(db["ticket"])
