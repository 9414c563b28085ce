"""``supportbot serve``: run the HTTP server."""

from __future__ import annotations

import click

from supportbot.cli._common import async_command, command_config, config_option, echo


@click.command()
@config_option
@click.option("--host", default=None, help="Address to bind (default: server.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default: server.port, 8080).")
@click.option("--demo", is_flag=True, help="Use the offline demo model; the demo page signs in a demo customer.")
@click.option(
    "--reload",
    is_flag=True,
    help="Reload the flows and tools when their files change (a bad edit is refused and logged). "
    "A SIGHUP reloads them with or without this.",
)
@async_command
async def serve(config_path: str | None, host: str | None, port: int | None, demo: bool, reload: bool) -> None:
    """Run the server: the demo page and widget, the REST/SSE API, /healthz, /readyz and /metrics.

    Flows, tools and prompts are reloaded on SIGHUP (kill -HUP PID), and with --reload
    whenever their files change; conversations in flight finish on the version they started with.
    A change to the config file itself needs a restart.
    """
    from supportbot.server import serve as run_server

    config = command_config(config_path)
    for warning in () if demo else config.warnings:
        echo(f"warning: {warning}", fg="yellow", err=True)

    def ready(url: str) -> None:
        label = " with the offline demo model" if demo else ""
        echo(f"supportbot is serving on {url}{label}; open {url}/ for the demo page. Ctrl-C stops it.", err=True)

    def notice(line: str) -> None:
        echo(line, err=True)

    await run_server(config, host=host, port=port, demo=demo, ready=ready, notice=notice, reload=reload)
