"""``supportbot admin set-password|hash-password``: operators' accounts for the /admin page."""

from __future__ import annotations

import asyncio
import sys

import click

from supportbot.cli._common import async_command, config_option, echo, open_operators


@click.group()
def admin() -> None:
    """Operators' accounts for the /admin page."""


def _read_password(from_stdin: bool) -> str:
    from supportbot.admin.passwords import MIN_PASSWORD_LENGTH

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise click.ClickException(f"a password needs at least {MIN_PASSWORD_LENGTH} characters; choose a longer one")
    return password


@admin.command("set-password")
@config_option
@click.argument("username", default="admin")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@async_command
async def admin_set_password(config_path: str | None, username: str, password_stdin: bool) -> None:
    """Create the operator USERNAME (default: admin) or change their password; stored hashed in the database."""
    from supportbot.admin.passwords import hash_password

    username = username.strip()
    if not username or len(username) > 100 or any(c.isspace() or not c.isprintable() for c in username):
        raise click.ClickException("a user name is 1 to 100 printable characters without spaces")
    password = _read_password(password_stdin)
    hashed = await asyncio.to_thread(hash_password, password)
    async with open_operators(config_path, existing=False) as ops:
        await ops.store.set_operator_password(username, hashed)
    echo(f"operator {username} can sign in at /admin")


@admin.command("hash-password")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
def admin_hash_password(password_stdin: bool) -> None:
    """Print a hash of a password for admin.password_hash in the configuration (user 'admin')."""
    from supportbot.admin.passwords import hash_password

    echo(hash_password(_read_password(password_stdin)))
