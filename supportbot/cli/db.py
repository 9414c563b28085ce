"""``supportbot db upgrade``: the database schema."""

from __future__ import annotations

import click

from supportbot.cli._common import async_command, command_config, config_option, echo


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@config_option
@async_command
async def db_upgrade(config_path: str | None) -> None:
    """Create the database or migrate it to this version's schema."""
    from supportbot.store.migrate import current_revision, upgrade

    config = command_config(config_path)
    await upgrade(config.database.url)
    revision = await current_revision(config.database.url)
    echo(f"database {config.redacted_dump()['database']['url']} is at revision {revision}")
