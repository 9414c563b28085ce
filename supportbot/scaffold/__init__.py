"""The files of a new project, as ``supportbot init`` writes them.

A project runs as it is, offline: ``supportbot validate``, ``chat --demo``, ``serve --demo`` and
``supportbot test`` pass in it at once. Its files come from three places:

- the templates in ``project/`` beside this module (package data: the wheel holds every file under
  ``supportbot/``): ``config.yaml``, ``tools.py``, ``README.md``, ``.gitignore`` and ``tests/*.yaml``;
- the example flows (``EXAMPLE_FLOWS_DIR``) and demo orders shipped with supportbot, copied so the
  project owns them; ``flows/general.yaml`` gets the custom tool of ``tools.py`` wired in;
- ``supportbot.schema.json_schema``: the JSON Schemas in ``.schemas/`` that the first line of each
  config, flow and test file points editors with a YAML language server to.

``plan_project`` says what would be written, ``conflicts`` what of it already exists, and
``write_project`` writes it, refusing to overwrite anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from supportbot.config import EXAMPLE_FLOWS_DIR, EXAMPLE_ORDERS_FILE

__all__ = ["ProjectFile", "conflicts", "plan_project", "write_project"]

TEMPLATE_DIR = Path(__file__).resolve().parent / "project"

# Template name → name in the project. `.gitignore` is stored without its dot: a `.gitignore` inside
# supportbot/ would be obeyed by git (and build tools) as the rules of this very directory.
_TEMPLATES = {"config.yaml": "config.yaml", "tools.py": "tools.py", "README.md": "README.md", "gitignore": ".gitignore"}
_FLOW_HEADER = "# yaml-language-server: $schema=../.schemas/flow.schema.json\n"

# How flows/general.yaml is wired to tools.py: what is replaced in the example flow, and what follows it.
_WIRED_FLOW = "general.yaml"
_WIRING = (
    (
        "tools: [create_ticket, handoff_to_human]\n",
        "tools: [shipping_cost, create_ticket, handoff_to_human]   # shipping_cost: our own tool, in tools.py\n",
    ),
    (
        "    business day are dispatched the same day. Every shipped order has a tracking link.\n",
        "    business day are dispatched the same day. Every shipped order has a tracking link.\n"
        "    What shipping to a country costs: call shipping_cost (with the order's value if the customer\n"
        "    gave it); never guess a price.\n",
    ),
)
_DEMO_RULES = r"""
# What the offline demo model does in this flow (`supportbot chat --demo`, `supportbot test`); a real
# model never sees these rules. The first rule whose `when:` (a regular expression, case-insensitive)
# is found in the customer's message calls the tool with `args:`; "{total}" is the text of the named
# group (?P<total>...). An `after:` rule answers right after that tool's result came back; "{cost}"
# is the result's key `cost`.
demo:
  - {when: "ship.*\\bcanada\\b", call: shipping_cost, args: {country: CA}}
  - {when: "ship.*\\bmexico\\b", call: shipping_cost, args: {country: MX}}
  - {when: "ship.*?\\$(?P<total>\\d+)", call: shipping_cost, args: {country: US, order_total: "{total}"}}
  - {when: "ship\\w* (cost|price|fee)|(cost|price|much)\\b.*\\bship", call: shipping_cost, args: {country: US}}
  - after: shipping_cost
    reply: >-
      Shipping to {destination}: {cost}, {delivery_days} business days.
      Orders of {free_shipping_over} or more ship free.
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProjectFile:
    """One file of a new project.

    Attributes:
        path: where it goes, relative to the project's directory.
        text: its content.
    """

    path: PurePosixPath
    text: str


def plan_project() -> tuple[ProjectFile, ...]:
    """Every file of a new project, in the order they are written and listed."""
    from supportbot.schema import KINDS, json_text

    files = [_template("config.yaml"), _template("tools.py")]
    files.append(ProjectFile(path=PurePosixPath("orders.yaml"), text=_read(EXAMPLE_ORDERS_FILE)))
    for flow in sorted(EXAMPLE_FLOWS_DIR.glob("*.yaml")):
        text = _read(flow)
        if flow.name == _WIRED_FLOW:
            text = _wire_custom_tool(text)
        files.append(ProjectFile(path=PurePosixPath("flows", flow.name), text=_FLOW_HEADER + text))
    for test in sorted((TEMPLATE_DIR / "tests").glob("*.yaml")):
        files.append(ProjectFile(path=PurePosixPath("tests", test.name), text=_read(test)))
    for kind in KINDS:  # exactly what `supportbot schema KIND` prints, to refresh them after an upgrade
        files.append(ProjectFile(path=PurePosixPath(".schemas", f"{kind}.schema.json"), text=json_text(kind)))
    files += [_template("README.md"), _template("gitignore")]
    return tuple(files)


def conflicts(directory: Path, files: Sequence[ProjectFile]) -> list[Path]:
    """The paths under ``directory`` that writing ``files`` would overwrite or cannot create: files
    that exist (a dangling symbolic link counts), and existing non-directories where a directory
    must be."""
    found: dict[Path, None] = {}
    for file in files:
        target = directory / file.path
        if target.exists() or target.is_symlink():
            found[target] = None
        for parent in (directory / p for p in file.path.parents if p != PurePosixPath(".")):
            if (parent.exists() or parent.is_symlink()) and not parent.is_dir():
                found[parent] = None
    return list(found)


def write_project(directory: Path, files: Sequence[ProjectFile]) -> list[Path]:
    """Write ``files`` into ``directory`` (created if missing), never overwriting a file.

    Check ``conflicts`` first: a file that appears meanwhile stops the writing with
    ``FileExistsError`` and leaves it as it was.

    Returns:
        The paths written, in order.
    """
    written = []
    for file in files:
        target = directory / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("x", encoding="utf-8", newline="\n") as out:
            out.write(file.text)
        written.append(target)
    return written


def _template(name: str) -> ProjectFile:
    return ProjectFile(path=PurePosixPath(_TEMPLATES[name]), text=_read(TEMPLATE_DIR / name))


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _wire_custom_tool(text: str) -> str:
    """The example flow general.yaml with ``shipping_cost`` (tools.py) offered, explained and demo rules added."""
    for old, new in _WIRING:
        if text.count(old) != 1:  # the example flow changed: update _WIRING (tests/test_init.py fails first)
            raise RuntimeError(f"{_WIRED_FLOW}: expected one line {old.strip()!r} to wire shipping_cost in")
        text = text.replace(old, new)
    return text + _DEMO_RULES
