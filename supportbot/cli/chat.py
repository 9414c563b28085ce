"""``supportbot chat``: a conversation in the terminal, streamed."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import click

from supportbot.cli._common import (
    async_command,
    command_config,
    config_option,
    echo,
    new_database_file,
    note_new_database,
)
from supportbot.cli._render import shorten
from supportbot.events import Handoff, TextDelta, ToolCallFinished, ToolCallStarted, TurnFailed, TurnFinished
from supportbot.pricing import format_usd

if TYPE_CHECKING:
    from supportbot.runtime import Runtime

DEMO_CUSTOMER = "ana@example.com"


@click.command()
@config_option
@click.option("--flow", default=None, help="Flow to start in (default: flows.default).")
@click.option("--customer", "email", default=None, help="Chat as this customer (treated as verified).")
@click.option("--demo", is_flag=True, help="Use the offline demo model instead of the configured one.")
@async_command
async def chat(config_path: str | None, flow: str | None, email: str | None, demo: bool) -> None:
    """Talk to a flow in the terminal; replies stream as they are generated. Reads piped stdin too."""
    from supportbot.runtime import open_runtime

    config = command_config(config_path)
    new_file = new_database_file(config)
    runtime = await open_runtime(config, demo=demo)
    if new_file is not None:
        note_new_database(config, new_file)
    try:
        await _chat(runtime, flow=flow, email=email or (DEMO_CUSTOMER if demo else None), demo=demo)
    finally:
        await runtime.aclose()


async def _chat(runtime: Runtime, *, flow: str | None, email: str | None, demo: bool) -> None:
    from supportbot.runtime import NO_MODEL

    interactive = sys.stdin.isatty()
    store = runtime.store
    customer = await store.get_or_create_customer(email=email, verified=email is not None)
    conversation, greeting = await runtime.engine.start_conversation(customer, channel="terminal", flow=flow)
    if demo:
        echo("Offline demo model: replies are rule-based, not an LLM.", fg="yellow", err=True)
    if not runtime.has_model:
        echo(NO_MODEL.format(base_url=runtime.config.llm.base_url), fg="yellow", err=True)
    echo(
        f"conversation {conversation.id} · flow {conversation.flow} · customer {customer.display_name}"
        f"{' (verified)' if customer.verified else ''} · Ctrl-D to end",
        dim=True,
        err=True,
    )
    if greeting:
        echo(f"bot: {greeting}")
    while True:
        if interactive:
            echo("you: ", nl=False)
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if not runtime.has_model:
            echo("(no model connected; see above)", fg="yellow", err=True)
            continue
        await _print_turn(runtime, conversation.id, text)
    echo(f"\nconversation {conversation.id} saved; see `supportbot tickets list` for its tickets.", dim=True, err=True)


async def _print_turn(runtime: Runtime, conversation_id: str, text: str) -> None:
    started = False
    async for event in runtime.engine.run_turn(conversation_id, text):
        if isinstance(event, TextDelta):
            if not started:
                echo("bot: ", nl=False)
                started = True
            echo(event.text, nl=False)
        elif isinstance(event, ToolCallStarted):
            echo(f"  ⚙ {event.name}({event.arguments})", dim=True, err=True)
        elif isinstance(event, ToolCallFinished):
            mark = "✗" if event.is_error else "✓"
            echo(
                f"  {mark} {event.name} → {shorten(event.result)} ({event.duration_ms:.0f} ms)",
                dim=True,
                err=True,
            )
        elif isinstance(event, Handoff):
            where = "a human agent" if event.target == "human" else f"flow '{event.target}'"
            ticket = f" (ticket #{event.ticket_id})" if event.ticket_id else ""
            echo(f"  → handed over to {where}{ticket}", fg="cyan", err=True)
        elif isinstance(event, TurnFinished):
            if started:
                echo()
            if not event.text:
                echo("  (a human agent has this conversation; your message was passed on)", fg="cyan", err=True)
            else:
                usage = event.usage
                echo(f"  [{usage.input_tokens}+{usage.output_tokens} tokens, {format_usd(event.cost_usd)}]",
                            dim=True, err=True)  # fmt: skip
        elif isinstance(event, TurnFailed):
            if started:
                echo()
            echo(f"bot: {event.fallback_text}")
            echo(f"  model failed: {event.reason}", fg="red", err=True)
