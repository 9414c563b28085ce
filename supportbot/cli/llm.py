"""``supportbot llm check``: probe the model endpoint."""

from __future__ import annotations

import sys

import click

from supportbot.cli._common import async_command, command_config, config_option, echo


@click.group()
def llm() -> None:
    """The model endpoint."""


@llm.command("check")
@config_option
@async_command
async def llm_check(config_path: str | None) -> None:
    """Probe the endpoint: a plain streamed answer, then a streamed tool call."""
    from supportbot.llm.check import check_endpoint, missing_key

    config = command_config(config_path)
    if (reason := missing_key(config.llm)) is not None:
        raise click.ClickException(reason)
    report = await check_endpoint(config.llm)
    echo(report.render())
    if not report.ok:
        sys.exit(1)
