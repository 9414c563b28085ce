"""``supportbot validate``: check the whole setup and print what would run."""

from __future__ import annotations

import asyncio

import click

from supportbot.cli._common import config_option, echo
from supportbot.errors import SupportbotError


@click.command()
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
