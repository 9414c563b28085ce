"""The dependency rules of the design: connectors import supportbot, never the reverse, and the
engine knows nothing of web servers or ORM rows."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "supportbot"


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_supportbot_never_imports_a_connector(path: Path) -> None:
    assert not any(name == "connectors" or name.startswith("connectors.") for name in imports_of(path))


@pytest.mark.parametrize("module", ["engine.py", "history.py", "confirm.py", "events.py", "messages.py"])
def test_the_engine_core_imports_no_server_and_no_orm(module: str) -> None:
    banned = ("aiohttp.web", "sqlalchemy", "supportbot.store.sql", "supportbot.store.models")
    found = {n for n in imports_of(PACKAGE / module) if n.startswith(banned)}
    assert not found
