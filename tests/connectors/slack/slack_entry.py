"""The ``slack`` connector entry point for a checkout whose installed metadata predates it.

``supportbot serve`` finds connectors through the installed package's entry points; a checkout under
test may be newer than the install it runs on. ``install()`` adds ``slack = connectors.slack:CONNECTOR``
when it is missing (a no-op once the installed metadata has it). Run as a script it is
``supportbot`` with the entry point in place: ``python slack_entry.py serve -c config.yaml``.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
from typing import Any

GROUP = "supportbot.connectors"
SLACK = metadata.EntryPoint(name="slack", value="connectors.slack:CONNECTOR", group=GROUP)


def entry_points_with_slack(real: Any) -> Any:
    def entry_points(**params: Any) -> Any:
        found = real(**params)
        if params.get("group") == GROUP and "slack" not in found.names:
            return metadata.EntryPoints([*found, SLACK])
        return found

    return entry_points


def install() -> None:
    """Patch ``importlib.metadata.entry_points`` (the config loader) and the server's copy of it."""
    import supportbot.server

    patched = entry_points_with_slack(metadata.entry_points)
    metadata.entry_points = patched
    supportbot.server.entry_points = patched  # type: ignore[attr-defined]


if __name__ == "__main__":
    install()
    from supportbot.cli import main

    sys.argv[0] = "supportbot"
    main()
