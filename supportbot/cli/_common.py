"""What the command modules share: the ``-c/--config`` option, loading the configuration, opening the
database, running an async command and printing untrusted text.

This module imports none of ``supportbot.cli``'s command modules, nor the package itself: the package
imports the command modules, and they import this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from supportbot.errors import SupportbotError
from supportbot.terminal import safe

if TYPE_CHECKING:
    from supportbot.config import Config
    from supportbot.operators import Operators
    from supportbot.store.sql import SQLStore

# The engine, the store and the HTTP client are imported inside the commands that use them,
# so that `supportbot --version` and `--help` start at once.

T = TypeVar("T")


def async_command(main: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
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


def command_config(path: str | None) -> Config:
    """The configuration a command runs with (``-c``, ``$SUPPORTBOT_CONFIG``, ``./config.yaml`` or the
    built-in defaults), with logging set up from it; a bad file is a clean error, not a traceback."""
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

    new_file = new_database_file(config)
    if new_file is not None and existing:
        raise click.ClickException(
            f"no database at {new_file} ({_database_origin(config)}); run this where your config.yaml is, "
            "or pass -c path/to/config.yaml"
        )
    store = await SQLStore.open(config.database.url, create=not existing)
    if new_file is not None:
        note_new_database(config, new_file)
    return store


@asynccontextmanager
async def open_operators(config_path: str | None, *, existing: bool = True) -> AsyncIterator[Operators]:
    """The operators' view of the configured database; ``existing``: refuse a SQLite file that is not there."""
    from supportbot.bus import notify_once
    from supportbot.operators import Operators, OperatorStore

    config = command_config(config_path)
    store = await open_store(config, existing=existing)
    queued: list[str] = []
    try:
        yield Operators(cast(OperatorStore, store), queued=queued.append)
    finally:
        await store.close()
    for channel in dict.fromkeys(queued):
        # Wake the running workers' delivery at once (PostgreSQL; a SQLite server finds it within a second).
        await notify_once(config.database.url, "outbox", {"channel": channel})


def new_database_file(config: Config) -> Path | None:
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


def note_new_database(config: Config, file: Path) -> None:
    """Say on stderr that ``file`` is a database just created, and how to point at another one."""
    echo(
        f"note: created a new, empty database {file} ({_database_origin(config)}); "
        "if you meant another one, pass -c path/to/config.yaml or run where your config.yaml is",
        fg="yellow",
        err=True,
    )
