"""The ``supportbot`` command line: validate, chat, db, llm, tickets.

Every command exits 0 on success and non-zero with a one-line reason (or the list of config
problems) on failure.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from supportbot._version import __version__
from supportbot.errors import SupportbotError
from supportbot.events import Handoff, TextDelta, ToolCallFinished, ToolCallStarted, TurnFailed, TurnFinished
from supportbot.pricing import format_usd
from supportbot.records import TICKET_COLUMNS, conversation_json, event_json, message_json, ticket_json
from supportbot.store.base import StoredMessage, TicketPriority, TicketStatus
from supportbot.terminal import safe

if TYPE_CHECKING:
    from supportbot.config import Config
    from supportbot.runtime import Runtime
    from supportbot.store.sql import SQLStore

# The engine, the store and the HTTP client are imported inside the commands that use them,
# so that `supportbot --version` and `--help` start at once.

T = TypeVar("T")
DEMO_CUSTOMER = "ana@example.com"


def _run(main: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command; turn supportbot errors into a clean message and exit code 1."""

    @wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return asyncio.run(main(*args, **kwargs))
        except SupportbotError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def echo(text: object = "", *, err: bool = False, nl: bool = True, **style: Any) -> None:
    """Print text that may hold customer or model words: control characters are shown, not obeyed."""
    click.secho(safe(str(text)), err=err, nl=nl, **style)


def _config(path: str | None) -> Config:
    from supportbot.config import load_config
    from supportbot.logs import configure_logging

    try:
        config = load_config(path)
    except SupportbotError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(config.logging)
    return config


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Configuration file (default: $SUPPORTBOT_CONFIG, then ./config.yaml, then built-in defaults).",
)


async def open_store(config: Config, *, existing: bool) -> SQLStore:
    """Open the configured database for a command.

    Args:
        config: the loaded configuration.
        existing: the command works on what is stored (tickets, conversations): a SQLite file that
            is not there is refused, naming the file looked for, instead of creating an empty one.
            Otherwise a new database is created, with a note on stderr naming it.
    """
    from supportbot.store.sql import SQLStore

    new_file = _new_database_file(config)
    if new_file is not None and existing:
        raise click.ClickException(
            f"no database at {new_file} ({_database_origin(config)}); run this where your config.yaml is, "
            "or pass -c path/to/config.yaml"
        )
    store = await SQLStore.open(config.database.url, create=not existing)
    if new_file is not None:
        _note_new_database(config, new_file)
    return store


def _new_database_file(config: Config) -> Path | None:
    """The SQLite file of ``database.url`` if it does not exist yet (opening it would create it)."""
    from supportbot.store.migrate import database_file

    try:
        file = database_file(config.database.url)
    except SupportbotError as exc:
        raise click.ClickException(str(exc)) from None
    return file if file is not None and not file.exists() else None


def _database_origin(config: Config) -> str:
    if config.source is None:
        return "database.url of the built-in defaults: no -c, no $SUPPORTBOT_CONFIG and no ./config.yaml"
    return f"database.url of {config.source}"


def _note_new_database(config: Config, file: Path) -> None:
    echo(
        f"note: created a new, empty database {file} ({_database_origin(config)}); "
        "if you meant another one, pass -c path/to/config.yaml or run where your config.yaml is",
        fg="yellow",
        err=True,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="supportbot")
def main() -> None:
    """supportbot: an LLM customer-support agent with YAML flows, Python tools and real persistence."""


@main.command()
@config_option
def validate(config_path: str | None) -> None:
    """Check the configuration, the tools, the flows and the order source; print what would run.

    Every problem is listed at once, each as ``file:line: key: problem; fix``.
    """
    from supportbot.config import EXAMPLE_FLOWS_DIR, read_config
    from supportbot.logs import configure_logging
    from supportbot.runtime import check_setup

    try:
        report = read_config(config_path)
        configure_logging(report.config.logging)
        tools, flows = asyncio.run(check_setup(report))
    except SupportbotError as exc:
        raise click.ClickException(str(exc)) from None
    config = report.config
    echo(f"config: {config.source or 'built-in defaults'}")
    echo(f"model: {config.llm.model} at {config.llm.base_url} (api key {'set' if config.llm.api_key else 'NOT set'})")
    echo(f"database: {config.redacted_dump()['database']['url']}")
    echo(f"tools: {', '.join(sorted(tools.names()))}")
    if config.flows.dir.resolve() == EXAMPLE_FLOWS_DIR:
        echo(f"flows: the example flows ({config.flows.dir})")
    else:
        also = f", and the example flows ({EXAMPLE_FLOWS_DIR})" if config.flows.include_examples else ""
        echo(f"flows: {config.flows.dir}{also}")
    for name in sorted(flows):
        flow = flows[name]
        default = " (default)" if name == flows.default_name else ""
        echo(f"flow {name}{default}: tools {', '.join(flow.tools) or '-'}; handoffs {', '.join(flow.handoffs) or '-'}")
    for warning in config.warnings:
        echo(f"warning: {warning}", fg="yellow", err=True)
    echo("OK")


# -- serve -------------------------------------------------------------------------------------------


@main.command()
@config_option
@click.option("--host", default=None, help="Address to bind (default: server.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default: server.port, 8080).")
@click.option("--demo", is_flag=True, help="Use the offline demo model; the demo page signs in a demo customer.")
@_run
async def serve(config_path: str | None, host: str | None, port: int | None, demo: bool) -> None:
    """Run the server: the demo page and widget, the REST/SSE API, /healthz, /readyz and /metrics."""
    from supportbot.server import serve as run_server

    config = _config(config_path)
    for warning in () if demo else config.warnings:
        echo(f"warning: {warning}", fg="yellow", err=True)

    def ready(url: str) -> None:
        label = " with the offline demo model" if demo else ""
        echo(f"supportbot is serving on {url}{label}; open {url}/ for the demo page. Ctrl-C stops it.", err=True)

    def notice(line: str) -> None:
        echo(line, err=True)

    await run_server(config, host=host, port=port, demo=demo, ready=ready, notice=notice)


# -- chat --------------------------------------------------------------------------------------------


@main.command()
@config_option
@click.option("--flow", default=None, help="Flow to start in (default: flows.default).")
@click.option("--customer", "email", default=None, help="Chat as this customer (treated as verified).")
@click.option("--demo", is_flag=True, help="Use the offline demo model instead of the configured one.")
@_run
async def chat(config_path: str | None, flow: str | None, email: str | None, demo: bool) -> None:
    """Talk to a flow in the terminal; replies stream as they are generated. Reads piped stdin too."""
    from supportbot.runtime import open_runtime

    config = _config(config_path)
    new_file = _new_database_file(config)
    runtime = await open_runtime(config, demo=demo)
    if new_file is not None:
        _note_new_database(config, new_file)
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
                f"  {mark} {event.name} → {_shorten(event.result)} ({event.duration_ms:.0f} ms)",
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


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- db, llm -------------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@config_option
@_run
async def db_upgrade(config_path: str | None) -> None:
    """Create the database or migrate it to this version's schema."""
    from supportbot.store.migrate import current_revision, upgrade

    config = _config(config_path)
    await upgrade(config.database.url)
    revision = await current_revision(config.database.url)
    echo(f"database {config.redacted_dump()['database']['url']} is at revision {revision}")


@main.group()
def llm() -> None:
    """The model endpoint."""


@llm.command("check")
@config_option
@_run
async def llm_check(config_path: str | None) -> None:
    """Probe the endpoint: a plain streamed answer, then a streamed tool call."""
    from supportbot.llm.check import check_endpoint, missing_key

    config = _config(config_path)
    if (reason := missing_key(config.llm)) is not None:
        raise click.ClickException(reason)
    report = await check_endpoint(config.llm)
    echo(report.render())
    if not report.ok:
        sys.exit(1)


# -- tickets -------------------------------------------------------------------------------------------


@main.group()
def tickets() -> None:
    """Tickets the bot opened, with the conversations behind them."""


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
@_run
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
    from supportbot.store.review import TicketQuery

    store = await open_store(_config(config_path), existing=True)
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
        writer.writerows({k: _csv_cell(v) for k, v in row.items()} for row in rows)
        echo(buffer.getvalue(), nl=False)
    else:
        echo(_table(rows, TICKET_COLUMNS) if rows else "no tickets")
        if page.total > len(rows):
            echo(f"({len(rows)} of {page.total}; --limit shows more)", dim=True)


@tickets.command("show")
@config_option
@click.argument("ticket_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@_run
async def tickets_show(config_path: str | None, ticket_id: int, fmt: str) -> None:
    """Show a ticket, its history and the whole conversation behind it, tool calls included."""
    store = await open_store(_config(config_path), existing=True)
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
    echo(f"  created {_when(ticket.created_at)} · updated {_when(ticket.updated_at)}")
    if ticket.description:
        echo("  " + ticket.description.replace("\n", "\n  "))
    if events:
        echo("\nHistory:")
        for e in events:
            echo(f"  {_when(e.created_at)}  {e.actor}: {e.action} {e.detail}".rstrip())
    if conversation is not None:
        echo(
            f"\nConversation {conversation.id} ({conversation.channel}, {conversation.status}, "
            f"{conversation.turns} turns, {conversation.input_tokens}+{conversation.output_tokens} tokens, "
            f"{format_usd(conversation.cost_usd)}):"
        )
        for m in messages:
            echo(_transcript_line(m))


def _transcript_line(m: StoredMessage) -> str:
    when = m.created_at.strftime("%H:%M:%S")
    if m.role == "tool":
        mark = "error" if m.status == "error" else m.status
        return f"  {when}  tool {m.tool_name} [{mark}] → {_shorten(m.content or '', 400)}"
    who = {"user": "customer", "assistant": "bot", "system": "system"}.get(m.role, m.role)
    if m.kind == "human":
        who = f"human ({m.author or 'operator'})"
    elif m.kind != "normal":
        who = f"bot ({m.kind})"
    lines = []
    if m.content:
        status = f" [{m.status}]" if m.status not in ("ok",) else ""
        lines.append(f"  {when}  {who}{status}: " + m.content.replace("\n", "\n      "))
    for call in m.tool_calls:
        lines.append(
            f"  {when}  {who} calls {call.name}({call.arguments})"
            + (" [awaiting customer's yes]" if m.status == "pending" else "")
        )
    if m.role == "assistant" and m.usage is not None:
        lines.append(
            f"            {m.model or ''} · {m.usage.input_tokens}+{m.usage.output_tokens} tokens · "
            f"{format_usd(m.cost_usd)} · {m.latency_ms or 0:.0f} ms"
        )
    return "\n".join(lines)


def _csv_cell(value: Any) -> Any:
    # A cell starting with = + - @ is a formula to a spreadsheet; prefix it so it stays text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[str(_short_cell(c, row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _short_cell(column: str, value: Any) -> Any:
    if value is None:
        return "-"
    if column.endswith("cost_usd") and isinstance(value, int | float):
        return format_usd(value)
    if isinstance(value, str) and "T" in value and value[:4].isdigit():
        return value[:16].replace("T", " ")
    return _shorten(value, 60) if isinstance(value, str) else value


# -- logs ----------------------------------------------------------------------------------------------


@main.command()
@click.argument("files", nargs=-1, type=click.File("r", encoding="utf-8", errors="replace"))
@click.option("--conversation", "conversation_id", metavar="ID", help="Every record of this conversation.")
@click.option("--tool-failures", is_flag=True, help="Turns with a failed tool call, one line per failed call.")
@click.option("--since", default=None, metavar="WHEN", help="From then on (UTC): 2026-11-24, today, 1h, 30m.")
@click.option("--outcome", type=click.Choice(["finished", "failed"]), default=None, help="Turns that ended so.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def logs(
    files: tuple[Any, ...], conversation_id: str | None, tool_failures: bool, since: str | None, outcome: str | None,
    fmt: str,
) -> None:  # fmt: skip
    """Read JSON log lines (logging.format: json) from FILEs, or stdin: what happened, which tools failed.

    Lines that are not JSON are skipped and counted on stderr. `--format json` writes the
    selected records as JSON lines again, for jq.
    """
    from supportbot import logview

    try:
        start = logview.parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--since'") from None
    selected = logview.LogFilter(conversation=conversation_id, since=start, outcome=outcome,
                                 tool_failures=tool_failures)  # fmt: skip
    as_json = fmt == "json"
    skipped = shown = 0
    for stream in files or (click.open_file("-", encoding="utf-8", errors="replace"),):
        for line in stream:
            record = logview.parse_line(line)
            if record is None:
                skipped += bool(line.strip())
            elif selected.matches(record):
                shown += 1
                for text in logview.render(record, fmt="json" if as_json else "text", tool_failures=tool_failures):
                    echo(text)
    if skipped:
        echo(f"skipped {skipped} line(s) that are not JSON log records", err=True, dim=True)
    if not shown:
        echo("no records match", err=True, dim=True)


# The operators' commands (tickets reply|note|close|…, conversations, admin) live in their own module.
from supportbot.cli import _operators  # noqa: E402, F401 - registers its commands on the groups above
