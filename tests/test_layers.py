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


CONNECTORS = PACKAGE.parent / "connectors"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports when it is imported (not under ``if TYPE_CHECKING``)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_no_module_of_supportbot_imports_one_that_imports_it_back() -> None:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _module_level_imports(path, set(files)) - {name} for name, path in files.items()}
    cycles = []
    for start in sorted(graph):
        # A path back to ``start`` through the modules it imports is a cycle.
        seen: set[str] = set()
        stack = [(start, (start,))]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" → ".join((*trail, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles))[:10])


def _public(module: str) -> set[str] | None:
    """The names ``module`` declares public (its ``__all__``), or None when it has no ``__all__``."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
                value = ast.literal_eval(node.value)
                return set(value)
    return None


def _supportbot_imports(path: Path) -> list[tuple[str, str, int]]:
    """``(module, name, line)`` of each ``from supportbot… import name`` in a file (and ``import supportbot.x``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "supportbot":
            found.extend((node.module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "supportbot")
    return found


@pytest.mark.parametrize("path", sorted(CONNECTORS.rglob("*.py")), ids=lambda p: str(p.relative_to(CONNECTORS)))
def test_connectors_import_only_public_names_of_supportbot(path: Path) -> None:
    wrong = []
    for module, name, line in _supportbot_imports(path):
        where = f"{path.relative_to(CONNECTORS.parent)}:{line}"
        if any(part.startswith("_") for part in module.split(".")):
            wrong.append(f"{where}: {module} is internal")
            continue
        if not name:
            continue
        public = _public(module)
        if name.startswith("_") and (public is None or name not in public):  # __version__ is public
            wrong.append(f"{where}: {module}.{name} is internal")
            continue
        submodule = PACKAGE.parent / (f"{module}.{name}".replace(".", "/") + ".py")
        if public is not None and name not in public and not submodule.exists():
            wrong.append(f"{where}: {module}.{name} is not in {module}.__all__")
    assert not wrong, "\n".join(wrong)


def test_a_connector_is_an_entry_point_with_a_settings_model() -> None:
    from importlib.metadata import entry_points

    from pydantic import BaseModel

    from supportbot.channels import Connector

    found = {entry.name: entry.load() for entry in entry_points(group="supportbot.connectors")}
    assert "web" in found
    for name, connector in found.items():
        assert isinstance(connector, Connector) and connector.name == name
        assert issubclass(connector.settings, BaseModel) and "enabled" in connector.settings.model_fields
