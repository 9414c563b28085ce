"""The layout of ``supportbot/cli/``: the package imports its modules, never the reverse.

``supportbot.cli`` (its ``__init__``) imports one module per command group and puts their commands
on the root group. A module that imported the package back would be the cycle this layout removed
(``cli.py`` ↔ ``_cli_operators.py``): the result would depend on which of them was imported first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "supportbot" / "cli"
PACKAGE = "supportbot.cli"
# `python -m supportbot.cli` runs the package and then __main__, which needs the assembled `main`;
# the package never imports __main__ (checked below), so that import is no cycle.
RUNNER = "__main__.py"


def import_sources(source: str, module: str) -> set[str]:
    """The modules that ``source`` (the code of the module named ``module``) imports from, as written.

    ``import a.b`` gives ``a.b``; ``from a.b import c`` gives ``a.b`` and ``a.b.c`` (``c`` may be a
    submodule); relative imports are resolved against ``module``'s package.
    """
    package = module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                names.add(".".join([*base, node.module] if node.module else base))
                if node.module is None:  # `from . import x`, `from .. import cli`: maybe the package itself
                    names.update(".".join([*base, alias.name]) for alias in node.names)
            elif node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_name(path: Path) -> str:
    return PACKAGE if path.name == "__init__.py" else f"{PACKAGE}.{path.stem}"


MODULES = sorted(p for p in PACKAGE_DIR.glob("*.py") if p.name not in ("__init__.py", RUNNER))


def test_the_package_holds_its_modules() -> None:
    assert (PACKAGE_DIR / "__init__.py").is_file()
    assert {p.name for p in MODULES} >= {"_common.py", "tickets.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_module_of_the_cli_imports_the_package(path: Path) -> None:
    found = import_sources(path.read_text(encoding="utf-8"), _module_name(path))
    assert PACKAGE not in found, f"{path.name} imports {PACKAGE} itself; import from {PACKAGE}._common instead"


def test_the_package_imports_every_command_module_and_not_its_runner() -> None:
    found = import_sources((PACKAGE_DIR / "__init__.py").read_text(encoding="utf-8"), PACKAGE)
    commands = {_module_name(p) for p in MODULES if not p.name.startswith("_")}
    assert commands <= found, f"commands not registered on the root group: {sorted(commands - found)}"
    assert f"{PACKAGE}.__main__" not in found


@pytest.mark.parametrize(
    ("source", "imports_the_package"),
    [
        ("from supportbot.cli import main", True),
        ("import supportbot.cli", True),
        ("from supportbot import cli", True),
        ("from . import _common", True),
        ("from .. import cli", True),
        # A sibling is imported by its own name, never through the package's namespace.
        ("from supportbot.cli import _common", True),
        ("from supportbot.cli._common import echo", False),
        ("from ._common import echo", False),
        ("import supportbot.cli._common", False),
        ("from supportbot.client import x\nimport supportbot.clinic", False),
    ],
)
def test_the_check_sees_every_way_of_importing_the_package(source: str, imports_the_package: bool) -> None:
    assert (PACKAGE in import_sources(source, f"{PACKAGE}.tickets")) is imports_the_package
