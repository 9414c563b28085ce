"""``supportbot serve``: run the HTTP server, in one process or as N workers on one port."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING

import click

from supportbot.cli._common import async_command, command_config, config_option, echo

if TYPE_CHECKING:
    from supportbot.config import Config


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
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Worker processes sharing the port (SO_REUSEPORT); more than 1 needs PostgreSQL. See docs/workers.md.",
)
@click.option("--worker-of", type=int, default=None, hidden=True, help="Internal: the supervisor's pid.")
@async_command
async def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    demo: bool,
    reload: bool,
    workers: int,
    worker_of: int | None,
) -> None:
    """Run the server: the demo page and widget, the REST/SSE API, /healthz, /readyz and /metrics.

    Flows, tools and prompts are reloaded on SIGHUP (kill -HUP PID), and with --reload
    whenever their files change; conversations in flight finish on the version they started with.
    A change to the config file itself needs a restart.

    With --workers N a parent process runs N workers on the one port, restarts a worker that dies
    and passes SIGTERM, SIGINT and SIGHUP on to all of them.
    """
    from supportbot.server import serve as run_server

    if workers < 1:
        raise click.BadParameter(
            f"{workers} is not a number of processes; use 1 (the default) or more", param_hint="'--workers'"
        )
    config = command_config(config_path)
    if workers > 1:
        await _supervise(config, config_path, host=host, port=port, demo=demo, reload=reload, workers=workers)
        return
    for warning in () if demo or worker_of is not None else config.warnings:
        echo(f"warning: {warning}", fg="yellow", err=True)

    def ready(url: str) -> None:
        if worker_of is not None:
            echo(f"worker pid {os.getpid()} is serving on {url}", err=True)
            return
        label = " with the offline demo model" if demo else ""
        echo(f"supportbot is serving on {url}{label}; open {url}/ for the demo page. Ctrl-C stops it.", err=True)

    def notice(line: str) -> None:
        if worker_of is None:
            echo(line, err=True)

    stop = asyncio.Event()
    watching = None
    if worker_of is not None:
        from supportbot.supervisor import watch_parent

        watching = asyncio.create_task(watch_parent(worker_of, stop))
    try:
        await run_server(config, host=host, port=port, demo=demo, ready=ready, notice=notice, reload=reload,
                         stop=stop, reuse_port=worker_of is not None)  # fmt: skip
    finally:
        if watching is not None:
            stop.set()
            await watching


async def _supervise(
    config: Config,
    config_path: str | None,
    *,
    host: str | None,
    port: int | None,
    demo: bool,
    reload: bool,
    workers: int,
) -> None:
    """Run ``workers`` copies of this command on one port until SIGTERM/SIGINT; exit 1 on a crash loop."""
    from supportbot.supervisor import STOP_GRACE_S, Supervisor, bind_shared_port

    if config.database.url.startswith("sqlite"):
        raise click.ClickException(
            f"--workers {workers} needs PostgreSQL: database.url is SQLite, which one process at a time may "
            "write; set database.url to postgresql+asyncpg://USER:PASSWORD@HOST/DB (see docs/workers.md), "
            "or run one worker (--workers 1)"
        )
    for warning in () if demo else config.warnings:
        echo(f"warning: {warning}", fg="yellow", err=True)
    # The schema is created (a new database) or checked here, once, not raced by N workers starting at once.
    from supportbot.store.sql import SQLStore

    await (await SQLStore.open(config.database.url)).close()
    host = host or config.server.host
    port = config.server.port if port is None else port
    try:
        held = bind_shared_port(host, port)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another port (--port or server.port)"
        ) from None
    with held:
        port = held.getsockname()[1]
        command = [sys.executable, "-m", "supportbot", "serve", "--host", host, "--port", str(port),
                   "--worker-of", str(os.getpid())]  # fmt: skip
        if config_path is not None:
            command += ["-c", config_path]
        command += ["--demo"] * demo + ["--reload"] * reload
        shown = f"[{host}]" if ":" in host else host
        echo(f"supportbot is starting {workers} workers on http://{shown}:{port}; Ctrl-C stops them all.", err=True)
        supervisor = Supervisor(
            command=command,
            workers=workers,
            stop_timeout_s=config.server.drain_timeout_s + STOP_GRACE_S,
            say=lambda line: echo(line, fg="red", err=True),
        )
        code = await supervisor.run()
    if code:
        raise SystemExit(code)
