"""The ``supportbot`` command line: init, validate, serve, chat, test, schema, llm, tickets, conversations, admin, logs.

Every command exits 0 on success and non-zero with a one-line reason (or the list of config
problems) on failure.

One module per command (group); this package assembles them on the root group ``main`` (the console
script ``supportbot``). The dependencies point one way: this module imports the command modules,
they import ``supportbot.cli._common`` and ``supportbot.cli._render``, and none imports this module
(tests/test_cli_layout.py checks it).
"""

from __future__ import annotations

import click

from supportbot._version import __version__
from supportbot.cli import (
    admin,
    chat,
    conversations,
    db,
    init,
    llm,
    logs,
    schema,
    serve,
    test,
    tickets,
    validate,
)

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="supportbot")
def main() -> None:
    """supportbot: an LLM customer-support agent with YAML flows, Python tools and real persistence."""


for _command in (
    init.init,
    validate.validate,
    serve.serve,
    chat.chat,
    db.db,
    llm.llm,
    tickets.tickets,
    conversations.conversations,
    admin.admin,
    logs.logs,
    test.run_tests,
    schema.schema,
):
    main.add_command(_command)
