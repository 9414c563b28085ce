"""``supportbot logs``: read the JSON log lines back, filtered."""

from __future__ import annotations

from typing import Any

import click

from supportbot.cli._common import echo


@click.command()
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
