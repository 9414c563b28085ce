"""``supportbot schema flow|config|test``: the JSON Schema of a flow file, of config.yaml or of a flow-test file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from supportbot.cli._common import echo

if TYPE_CHECKING:
    from supportbot.schema import Kind

_KINDS = ("flow", "config", "test")  # supportbot.schema.KINDS, not imported so that --help starts at once


@click.command()
@click.argument("kind", type=click.Choice(_KINDS))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the schema to this file (its directory is created) instead of printing it.",
)
def schema(kind: str, output: Path | None) -> None:
    """Print the JSON Schema (draft 2020-12) of a flow file, of config.yaml or of a flow-test file.

    Editors with a YAML language server (VS Code's YAML extension, Neovim, JetBrains...) then
    complete keys, show each key's description and flag mistakes as you type. Save the schema
    and name it in the first line of the YAML file:

    \b
        supportbot schema flow -o .schemas/flow.schema.json
        # yaml-language-server: $schema=../.schemas/flow.schema.json

    The path after $schema= is relative to the YAML file. `supportbot init` does this for you.
    """
    from supportbot.schema import json_text

    text = json_text(cast("Kind", kind))  # click.Choice checked it
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"{output}: cannot write the schema ({exc.strerror}); check the path") from None
    echo(f"wrote the {kind} schema to {output}", err=True)
