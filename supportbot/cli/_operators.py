"""The operators' commands: ``tickets reply|note|close|reopen|handback|export``, ``conversations list|show``,
``admin set-password|hash-password``. Registered on ``supportbot.cli``'s groups when it is imported.

A reply stored here reaches a customer's open widget through the running server's relay within a
second (the server polls for operators' replies), or at the widget's next reconnect.
"""

from __future__ import annotations

import csv
import getpass
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import click

from supportbot.cli import (
    _config,
    _csv_cell,
    _run,
    _table,
    _transcript_line,
    _when,
    config_option,
    echo,
    main,
    open_store,
    tickets,
)
from supportbot.operators import Operators, OperatorStore
from supportbot.pricing import COST_DECIMALS, format_usd
from supportbot.records import conversation_json, event_json, message_json, ticket_json
from supportbot.store.base import TicketStatus
from supportbot.store.review import ConversationQuery, TicketQuery

__all__: list[str] = []

CONVERSATION_COLUMNS = ("id", "status", "channel", "flow", "turns", "cost_usd", "created_at", "updated_at")
EXPORT_COLUMNS = (
    "id", "subject", "status", "priority", "kind", "channel", "flow", "assignee", "customer_email",
    "conversation_id", "messages", "cost_usd", "created_at", "updated_at", "description",
)  # fmt: skip


@asynccontextmanager
async def _operators(config_path: str | None, *, existing: bool = True) -> AsyncIterator[Operators]:
    """The operators' view of the configured database; ``existing``: refuse a SQLite file that is not there."""
    store = await open_store(_config(config_path), existing=existing)
    try:
        yield Operators(cast(OperatorStore, store))
    finally:
        await store.close()


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this environment (some containers)
        return "cli"


actor_option = click.option(
    "--as", "actor", default=None, help="Name recorded as who did it (default: cli:<your user name>)."
)


def _message_text(text: str | None) -> str:
    """The text argument, or standard input when it is '-' or missing and stdin is not a terminal."""
    if text is None or text == "-":
        if sys.stdin.isatty() and text is None:
            raise click.UsageError("give the text as an argument, or pipe it in with '-'")
        return sys.stdin.read()
    return text


# -- tickets ----------------------------------------------------------------------------------------


@tickets.command("reply")
@config_option
@click.argument("ticket_id", type=int)
@click.argument("text", required=False)
@actor_option
@_run
async def tickets_reply(config_path: str | None, ticket_id: int, text: str | None, actor: str | None) -> None:
    """Reply to the ticket's customer as a person (TEXT, or '-' for stdin); the bot pauses in that conversation."""
    async with _operators(config_path) as ops:
        message = await ops.reply(actor=actor or _default_actor(), text=_message_text(text), ticket_id=ticket_id)
    echo(f"reply #{message.id} stored in conversation {message.conversation_id}; the customer sees it in their chat")


@tickets.command("note")
@config_option
@click.argument("ticket_id", type=int)
@click.argument("text", required=False)
@actor_option
@_run
async def tickets_note(config_path: str | None, ticket_id: int, text: str | None, actor: str | None) -> None:
    """Add an internal note to a ticket (TEXT, or '-' for stdin); customers never see notes."""
    async with _operators(config_path) as ops:
        await ops.note(ticket_id, actor=actor or _default_actor(), text=_message_text(text))
    echo(f"note added to ticket #{ticket_id}")


def _status_command(name: str, status: TicketStatus, summary: str) -> None:
    @tickets.command(name, help=summary)
    @config_option
    @click.argument("ticket_id", type=int)
    @actor_option
    @_run
    async def command(config_path: str | None, ticket_id: int, actor: str | None) -> None:
        async with _operators(config_path) as ops:
            ticket = await ops.update(ticket_id, actor=actor or _default_actor(), status=status)
        echo(f"ticket #{ticket.id} is {ticket.status}")


_status_command("close", "closed", "Close a ticket; the customer's next message goes to the bot again.")
_status_command("reopen", "open", "Reopen a closed or solved ticket.")
_status_command("solve", "solved", "Mark a ticket solved.")


@tickets.command("handback")
@config_option
@click.argument("ticket_id", type=int)
@actor_option
@_run
async def tickets_handback(config_path: str | None, ticket_id: int, actor: str | None) -> None:
    """Hand the ticket's conversation back to the bot: it answers the customer's next message."""
    async with _operators(config_path) as ops:
        conversation = await ops.hand_back(actor=actor or _default_actor(), ticket_id=ticket_id)
    echo(f"conversation {conversation.id} is with the bot again")


@tickets.command("export")
@config_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--status", type=click.Choice(["open", "pending", "solved", "closed"]), multiple=True)
@click.option("--output", "-o", type=click.File("w", encoding="utf-8"), default="-", help="File (default: stdout).")
@_run
async def tickets_export(config_path: str | None, fmt: str, status: tuple[str, ...], output: Any) -> None:
    """Export tickets: CSV, one row per ticket; JSON, each ticket with its history and whole conversation."""
    async with _operators(config_path) as ops:
        store = ops.store
        exported: list[dict[str, Any]] = []
        offset = 0
        while True:
            query = TicketQuery(status=cast(tuple[TicketStatus, ...], status), sort="id", descending=False,
                                offset=offset, limit=200)  # fmt: skip
            page = await store.search_tickets(query)
            for ticket in page.tickets:
                messages = await store.list_messages(ticket.conversation_id) if ticket.conversation_id else []
                customer = await store.get_customer(ticket.customer_id) if ticket.customer_id else None
                if fmt == "json":
                    exported.append(
                        {
                            "ticket": ticket_json(ticket),
                            "customer_email": customer.email if customer else None,
                            "events": [event_json(e) for e in await store.ticket_events(ticket.id)],
                            "messages": [message_json(m) for m in messages],
                        }
                    )
                else:
                    exported.append(
                        ticket_json(ticket)
                        | {
                            "customer_email": customer.email if customer else None,
                            "messages": len(messages),
                            "cost_usd": round(sum(m.cost_usd for m in messages), COST_DECIMALS),
                        }
                    )
            offset += len(page.tickets)
            if not page.tickets or offset >= page.total:
                break
    if fmt == "json":
        output.write(json.dumps(exported, indent=2, ensure_ascii=False) + "\n")
    else:
        # "\n" like `tickets list --format csv`: spreadsheets and csv readers take it, and it does not
        # leave a stray carriage return at the end of every line for the shell tools reading it.
        writer = csv.DictWriter(output, fieldnames=EXPORT_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _csv_cell(row.get(k)) for k in EXPORT_COLUMNS} for row in exported)
    if output is not sys.stdout and getattr(output, "name", "-") != "<stdout>":
        echo(f"{len(exported)} ticket(s) exported to {output.name}", err=True)


# -- conversations ------------------------------------------------------------------------------------


@main.group()
def conversations() -> None:
    """Conversations, with or without a ticket."""


@conversations.command("list")
@config_option
@click.option("--status", type=click.Choice(["bot", "human", "closed"]), default=None)
@click.option("--channel", default=None)
@click.option("--customer", default=None, help="Part of the customer's email or name.")
@click.option("--search", "text", default=None, help="Part of anything said in the conversation.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@_run
async def conversations_list(config_path: str | None, status: str | None, channel: str | None,
                             customer: str | None, text: str | None, limit: int, fmt: str) -> None:  # fmt: skip
    """List conversations, latest activity first."""
    async with _operators(config_path) as ops:
        page = await ops.store.search_conversations(
            ConversationQuery(status=cast(Any, status), channel=channel, customer=customer, text=text, limit=limit)
        )
    rows = [conversation_json(c) for c in page.conversations]
    if fmt == "json":
        echo(json.dumps({"conversations": rows, "total": page.total}, indent=2))
        return
    echo(_table(rows, CONVERSATION_COLUMNS) if rows else "no conversations")
    if page.total > len(rows):
        echo(f"({len(rows)} of {page.total}; --limit shows more)", dim=True)


@conversations.command("show")
@config_option
@click.argument("conversation_id")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@_run
async def conversations_show(config_path: str | None, conversation_id: str, fmt: str) -> None:
    """Show a conversation: every message, tool call and result, tokens and cost, and its tickets."""
    async with _operators(config_path) as ops:
        conversation = await ops.conversation(conversation_id)
        messages = await ops.store.list_messages(conversation.id)
        found = await ops.store.list_tickets(conversation_id=conversation.id)
        customer = await ops.store.get_customer(conversation.customer_id)
    if fmt == "json":
        echo(json.dumps({"conversation": conversation_json(conversation), "tickets": [ticket_json(t) for t in found],
                         "messages": [message_json(m) for m in messages]}, indent=2))  # fmt: skip
        return
    who = customer.display_name + (" (verified)" if customer and customer.verified else "") if customer else "-"
    echo(f"Conversation {conversation.id} with {who}")
    echo(
        f"  {conversation.channel} · flow {conversation.flow} · {conversation.status} · {conversation.turns} turns · "
        f"{conversation.input_tokens}+{conversation.output_tokens} tokens · {format_usd(conversation.cost_usd)}"
    )
    echo(f"  started {_when(conversation.created_at)} · last activity {_when(conversation.updated_at)}")
    for t in found:
        echo(f"  ticket #{t.id} [{t.status}] {t.subject}")
    echo()
    for m in messages:
        echo(_transcript_line(m))


# -- admin --------------------------------------------------------------------------------------------


@main.group()
def admin() -> None:
    """Operators' accounts for the /admin page."""


def _read_password(from_stdin: bool) -> str:
    from supportbot.admin.passwords import MIN_PASSWORD_LENGTH

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise click.ClickException(f"a password needs at least {MIN_PASSWORD_LENGTH} characters; choose a longer one")
    return password


@admin.command("set-password")
@config_option
@click.argument("username", default="admin")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@_run
async def admin_set_password(config_path: str | None, username: str, password_stdin: bool) -> None:
    """Create the operator USERNAME (default: admin) or change their password; stored hashed in the database."""
    import asyncio

    from supportbot.admin.passwords import hash_password

    username = username.strip()
    if not username or len(username) > 100 or any(c.isspace() or not c.isprintable() for c in username):
        raise click.ClickException("a user name is 1 to 100 printable characters without spaces")
    password = _read_password(password_stdin)
    hashed = await asyncio.to_thread(hash_password, password)
    async with _operators(config_path, existing=False) as ops:
        await ops.store.set_operator_password(username, hashed)
    echo(f"operator {username} can sign in at /admin")


@admin.command("hash-password")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
def admin_hash_password(password_stdin: bool) -> None:
    """Print a hash of a password for admin.password_hash in the configuration (user 'admin')."""
    from supportbot.admin.passwords import hash_password

    echo(hash_password(_read_password(password_stdin)))
