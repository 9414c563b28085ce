"""``supportbot tickets list|show|reply|note|close|reopen|solve|handback|export``.

A reply stored here is queued in the outbox, and the running server delivers it: on PostgreSQL at once
(the command sends a NOTIFY its workers listen for), on SQLite within a second (the server looks for
queued replies every second).
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import sys
from typing import Any, cast

import click

from supportbot.cli._common import async_command, command_config, config_option, echo, open_operators, open_store
from supportbot.cli._render import csv_cell, table, transcript_line, when
from supportbot.pricing import COST_DECIMALS, format_usd
from supportbot.records import TICKET_COLUMNS, conversation_json, event_json, message_json, ticket_json
from supportbot.store.base import TicketPriority, TicketStatus
from supportbot.store.review import TicketQuery

EXPORT_COLUMNS = (
    "id", "subject", "status", "priority", "kind", "channel", "flow", "assignee", "customer_email",
    "conversation_id", "messages", "cost_usd", "created_at", "updated_at", "description",
)  # fmt: skip


@click.group()
def tickets() -> None:
    """Tickets the bot opened, with the conversations behind them."""


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


# -- reading ------------------------------------------------------------------------------------------


@tickets.command("list")
@config_option
@click.option(
    "--status",
    type=click.Choice(["open", "pending", "solved", "closed"]),
    multiple=True,
    help="Only these statuses (repeat for several).",
)
@click.option("--priority", type=click.Choice(["low", "normal", "high", "urgent"]), multiple=True)
@click.option("--channel", default=None)
@click.option("--flow", default=None)
@click.option("--search", "text", default=None, help="Part of the subject or of anything said in the conversation.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@async_command
async def tickets_list(
    config_path: str | None,
    status: tuple[str, ...],
    priority: tuple[str, ...],
    channel: str | None,
    flow: str | None,
    text: str | None,
    fmt: str,
    limit: int,
) -> None:
    """List tickets, newest first."""
    store = await open_store(command_config(config_path), existing=True)
    try:
        query = TicketQuery(
            status=cast(tuple[TicketStatus, ...], status),
            priority=cast(tuple[TicketPriority, ...], priority),
            channel=channel,
            flow=flow,
            text=text,
            limit=limit,
        )
        page = await store.search_tickets(query)
    finally:
        await store.close()
    rows = [ticket_json(t) for t in page.tickets]
    if fmt == "json":
        echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else TICKET_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
        echo(buffer.getvalue(), nl=False)
    else:
        echo(table(rows, TICKET_COLUMNS) if rows else "no tickets")
        if page.total > len(rows):
            echo(f"({len(rows)} of {page.total}; --limit shows more)", dim=True)


@tickets.command("show")
@config_option
@click.argument("ticket_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@async_command
async def tickets_show(config_path: str | None, ticket_id: int, fmt: str) -> None:
    """Show a ticket, its history and the whole conversation behind it, tool calls included."""
    store = await open_store(command_config(config_path), existing=True)
    try:
        ticket = await store.get_ticket(ticket_id)
        if ticket is None:
            raise click.ClickException(f"no ticket #{ticket_id}; `supportbot tickets list` shows the existing ones")
        events = await store.ticket_events(ticket_id)
        messages = await store.list_messages(ticket.conversation_id) if ticket.conversation_id else []
        conversation = await store.get_conversation(ticket.conversation_id) if ticket.conversation_id else None
    finally:
        await store.close()
    if fmt == "json":
        echo(
            json.dumps(
                {
                    "ticket": ticket_json(ticket),
                    "events": [event_json(e) for e in events],
                    "conversation": conversation_json(conversation) if conversation else None,
                    "messages": [message_json(m) for m in messages],
                },
                indent=2,
            )
        )
        return
    echo(f"Ticket #{ticket.id}: {ticket.subject}")
    echo(
        f"  status {ticket.status} · priority {ticket.priority} · kind {ticket.kind} · channel "
        f"{ticket.channel or '-'} · flow {ticket.flow or '-'} · assignee {ticket.assignee or '-'}"
    )
    echo(f"  created {when(ticket.created_at)} · updated {when(ticket.updated_at)}")
    if ticket.description:
        echo("  " + ticket.description.replace("\n", "\n  "))
    if events:
        echo("\nHistory:")
        for e in events:
            echo(f"  {when(e.created_at)}  {e.actor}: {e.action} {e.detail}".rstrip())
    if conversation is not None:
        echo(
            f"\nConversation {conversation.id} ({conversation.channel}, {conversation.status}, "
            f"{conversation.turns} turns, {conversation.input_tokens}+{conversation.output_tokens} tokens, "
            f"{format_usd(conversation.cost_usd)}):"
        )
        for m in messages:
            echo(transcript_line(m))


# -- operators' actions -------------------------------------------------------------------------------


@tickets.command("reply")
@config_option
@click.argument("ticket_id", type=int)
@click.argument("text", required=False)
@actor_option
@async_command
async def tickets_reply(config_path: str | None, ticket_id: int, text: str | None, actor: str | None) -> None:
    """Reply to the ticket's customer as a person (TEXT, or '-' for stdin); the bot pauses in that conversation."""
    async with open_operators(config_path) as ops:
        message = await ops.reply(actor=actor or _default_actor(), text=_message_text(text), ticket_id=ticket_id)
    echo(f"reply #{message.id} stored in conversation {message.conversation_id}; the customer sees it in their chat")


@tickets.command("note")
@config_option
@click.argument("ticket_id", type=int)
@click.argument("text", required=False)
@actor_option
@async_command
async def tickets_note(config_path: str | None, ticket_id: int, text: str | None, actor: str | None) -> None:
    """Add an internal note to a ticket (TEXT, or '-' for stdin); customers never see notes."""
    async with open_operators(config_path) as ops:
        await ops.note(ticket_id, actor=actor or _default_actor(), text=_message_text(text))
    echo(f"note added to ticket #{ticket_id}")


def _status_command(name: str, status: TicketStatus, summary: str) -> None:
    @tickets.command(name, help=summary)
    @config_option
    @click.argument("ticket_id", type=int)
    @actor_option
    @async_command
    async def command(config_path: str | None, ticket_id: int, actor: str | None) -> None:
        async with open_operators(config_path) as ops:
            ticket = await ops.update(ticket_id, actor=actor or _default_actor(), status=status)
        echo(f"ticket #{ticket.id} is {ticket.status}")


_status_command("close", "closed", "Close a ticket; the customer's next message goes to the bot again.")
_status_command("reopen", "open", "Reopen a closed or solved ticket.")
_status_command("solve", "solved", "Mark a ticket solved.")


@tickets.command("handback")
@config_option
@click.argument("ticket_id", type=int)
@actor_option
@async_command
async def tickets_handback(config_path: str | None, ticket_id: int, actor: str | None) -> None:
    """Hand the ticket's conversation back to the bot: it answers the customer's next message."""
    async with open_operators(config_path) as ops:
        conversation = await ops.hand_back(actor=actor or _default_actor(), ticket_id=ticket_id)
    echo(f"conversation {conversation.id} is with the bot again")


@tickets.command("export")
@config_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--status", type=click.Choice(["open", "pending", "solved", "closed"]), multiple=True)
@click.option("--output", "-o", type=click.File("w", encoding="utf-8"), default="-", help="File (default: stdout).")
@async_command
async def tickets_export(config_path: str | None, fmt: str, status: tuple[str, ...], output: Any) -> None:
    """Export tickets: CSV, one row per ticket; JSON, each ticket with its history and whole conversation."""
    async with open_operators(config_path) as ops:
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
        writer.writerows({k: csv_cell(row.get(k)) for k in EXPORT_COLUMNS} for row in exported)
    if output is not sys.stdout and getattr(output, "name", "-") != "<stdout>":
        echo(f"{len(exported)} ticket(s) exported to {output.name}", err=True)
