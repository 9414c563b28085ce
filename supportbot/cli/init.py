"""``supportbot init``: a new project that runs as it is (config, flows, a custom tool, flow tests)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from supportbot.cli._common import echo

# What each part of a new project is, for the list printed after writing it.
_ABOUT = {
    "config.yaml": "every option, commented",
    "tools.py": "a custom tool, shipping_cost, offered by flows/general.yaml",
    "orders.yaml": "demo orders for lookup_order",
    "flows": "the support flows, copies of the examples to edit",
    "tests": "flow tests for `supportbot test`",
    ".schemas": "JSON Schemas for editors (YAML language server)",
    "README.md": "what each file is, and the commands",
}


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Create a supportbot project in DIRECTORY (created if missing; default: the working directory).

    It writes config.yaml, flows/, tools.py with a custom tool, orders.yaml, tests/, .schemas/, a README
    and a .gitignore; `supportbot validate`, `chat --demo`, `serve --demo` and `test` work in it at once.
    It overwrites nothing: if any of these files exists, it writes none and lists them.
    """
    from supportbot.scaffold import conflicts, plan_project, write_project

    files = plan_project()
    existing = conflicts(directory, files)
    if existing:
        listed = "".join(f"\n  {_shown(path)}" for path in existing)
        raise click.ClickException(
            f"{_place(directory)} already has {len(existing)} of the files `supportbot init` writes; "
            f"nothing was written:{listed}\nmove them away, or run `supportbot init NEW_DIRECTORY`"
        )
    try:
        written = write_project(directory, files)
    except OSError as exc:
        raise click.ClickException(f"cannot write the project into {_place(directory)}: {exc}") from None
    echo(f"Created a supportbot project in {_place(directory)}:")
    width = max(len(_shown(path)) for path in written)
    described = set()
    for path, file in zip(written, files, strict=True):
        part = file.path.parts[0]
        about = _ABOUT.get(part, "") if part not in described else ""
        described.add(part)
        echo(f"  {_shown(path):<{width}}  {about}".rstrip())
    echo("\nNext:")
    if not _is_cwd(directory):
        echo(f"  cd {shlex.quote(_shown(directory))}")
    echo("  supportbot test            # run the flow tests in tests/ (offline, no model)")
    echo('  supportbot chat --demo     # try "How much is shipping to Canada?"')
    echo("  supportbot serve --demo    # the chat widget on a demo page at http://127.0.0.1:8080/")
    echo("  then see README.md: adding a tool, connecting a real model")


def _is_cwd(directory: Path) -> bool:
    return directory.resolve() == Path.cwd().resolve()


def _place(directory: Path) -> str:
    return "the working directory" if _is_cwd(directory) else _shown(directory)


def _shown(path: Path) -> str:
    """``path`` as the user would type it: relative to the working directory when it is under it."""
    try:
        relative = os.path.relpath(path.absolute(), Path.cwd())
    except ValueError:  # another drive (Windows)
        return str(path)
    return relative if not relative.startswith("..") else str(path.absolute())
