"""``python -m supportbot.cli``: the same command line as ``supportbot``."""

from supportbot.cli import main

main()
