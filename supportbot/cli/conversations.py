"""``supportbot conversations list|show``: conversations, with or without a ticket."""

from __future__ import annotations

import json
from typing import Any, cast

import click

from supportbot.cli._common import async_command, config_option, echo, open_operators
from supportbot.cli._render import table, transcript_line, when
from supportbot.pricing import format_usd
from supportbot.records import conversation_json, message_json, ticket_json
from supportbot.store.review import ConversationQuery

CONVERSATION_COLUMNS = ("id", "status", "channel", "flow", "turns", "cost_usd", "created_at", "updated_at")


@click.group()
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
@async_command
async def conversations_list(config_path: str | None, status: str | None, channel: str | None,
                             customer: str | None, text: str | None, limit: int, fmt: str) -> None:  # fmt: skip
    """List conversations, latest activity first."""
    async with open_operators(config_path) as ops:
        page = await ops.store.search_conversations(
            ConversationQuery(status=cast(Any, status), channel=channel, customer=customer, text=text, limit=limit)
        )
    rows = [conversation_json(c) for c in page.conversations]
    if fmt == "json":
        echo(json.dumps({"conversations": rows, "total": page.total}, indent=2))
        return
    echo(table(rows, CONVERSATION_COLUMNS) if rows else "no conversations")
    if page.total > len(rows):
        echo(f"({len(rows)} of {page.total}; --limit shows more)", dim=True)


@conversations.command("show")
@config_option
@click.argument("conversation_id")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@async_command
async def conversations_show(config_path: str | None, conversation_id: str, fmt: str) -> None:
    """Show a conversation: every message, tool call and result, tokens and cost, and its tickets."""
    async with open_operators(config_path) as ops:
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
    echo(f"  started {when(conversation.created_at)} · last activity {when(conversation.updated_at)}")
    for t in found:
        echo(f"  ticket #{t.id} [{t.status}] {t.subject}")
    echo()
    for m in messages:
        echo(transcript_line(m))
