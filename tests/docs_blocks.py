"""Reading the user guides for ``tests/test_docs.py``: fenced blocks, links, headings, CLI invocations.

A fenced block says what it is in its info string, after the language: ```` ```yaml flow ````,
```` ```python tool acme_tools ````, ```` ```sql sqlite postgres ````. The first word after the language
is the block's kind; the rest are its arguments.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import click

from supportbot.config import load_config
from supportbot.messages import ToolCall
from supportbot.store.base import Conversation, Customer
from supportbot.store.memory import MemoryStore
from supportbot.tools import ToolContext, ToolRegistry, default_registry
from supportbot.tools.orders import OrderSource

ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = ROOT / "docs"
GUIDES = (
    "writing-flows.md",
    "writing-tools.md",
    "order-sources.md",
    "deploying.md",
    "operating.md",
    "security.md",
    "workers.md",
)
"""The guides this module's tests own (docs/testing.md is tested with the test runner)."""

ENV_VALUE = "doc-test-value-0123456789abcdefghijklmnopqrstuv"
ANA = Customer(id="c-ana", email="ana@example.com", name="Ana Example", verified=True)
STRANGER = Customer(id="c-eve", email="eve@example.com", verified=True)


def ids(block: Block) -> str:
    return block.where


def env_of(doc: str) -> dict[str, str]:
    """The variables the guide's ``sh env`` blocks set; any other variable a config names gets ENV_VALUE."""
    env: dict[str, str] = {}
    for block in of_kind("sh", "env", doc=doc):
        for line in shell_lines(block.text):
            name, _, value = line.partition("=")
            env[name] = value
    return env


def config_vars(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}", text))


def source_of(module: str) -> str:
    return "\n".join(block.text for block in of_kind("python", "tool") if block.args[:1] == (module,))


@dataclass(frozen=True, kw_only=True, slots=True)
class Block:
    """One fenced block of a guide."""

    doc: str
    line: int  # of the opening fence, 1-based
    lang: str
    kind: str
    args: tuple[str, ...]
    text: str

    @property
    def where(self) -> str:
        return f"docs/{self.doc}:{self.line}"


_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>.*)$")


def blocks(doc: str) -> list[Block]:
    """Every fenced block of ``docs/<doc>``, its lines dedented by the fence's own indentation."""
    found: list[Block] = []
    lines = (DOCS_DIR / doc).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, info = len(match["indent"]), match["info"].split()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        lang = info[0] if info else ""
        kind = info[1] if len(info) > 1 else ""
        found.append(Block(doc=doc, line=i + 1, lang=lang, kind=kind, args=tuple(info[2:]),
                           text="\n".join(body) + "\n"))  # fmt: skip
        i = j + 1
    return found


def all_blocks() -> list[Block]:
    return [block for doc in GUIDES for block in blocks(doc)]


def of_kind(lang: str, kind: str, *, doc: str | None = None) -> list[Block]:
    return [b for b in all_blocks() if b.lang == lang and b.kind == kind and (doc is None or b.doc == doc)]


def prose(doc: str) -> str:
    """The guide without its fenced blocks."""
    text = (DOCS_DIR / doc).read_text(encoding="utf-8")
    return re.sub(r"^\s*```.*?^\s*```\s*$", "", text, flags=re.DOTALL | re.MULTILINE)


# -- links and headings ----------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE)}


def links(doc: str) -> Iterator[str]:
    """The targets of the guide's Markdown links."""
    for match in re.finditer(r"\]\(([^)\s]+)\)", prose(doc)):
        yield match.group(1)


# -- supportbot command lines ----------------------------------------------------------------------

_SEPARATORS = {"|", "||", "&&", ";", "&"}
_WRAPPERS: dict[str, set[str]] = {"sudo": {"-u", "-g"}, "systemd-run": {"-p", "-u"}, "env": set(), "time": set()}


def shell_lines(text: str) -> Iterator[str]:
    """Logical lines of a shell block: continuations joined, comments and blanks left out."""
    pending = ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line and not line.startswith("#"):
            yield line


def invocations(line: str) -> Iterator[list[str]]:
    """The argument lists of every ``supportbot`` command in a shell line (after sudo, systemd-run, env)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token in _SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    for command in commands:
        i = 0
        while i < len(command):
            if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", command[i]):
                i += 1
                continue
            name = Path(command[i]).name
            if name not in _WRAPPERS:
                break
            i += 1
            while i < len(command) and command[i].startswith("-"):
                i += 2 if command[i] in _WRAPPERS[name] else 1
        if i < len(command) and Path(command[i]).name == "supportbot":
            yield command[i + 1 :]


def inline_invocations(doc: str) -> Iterator[list[str]]:
    """``supportbot …`` in inline code of the prose, placeholders' brackets and ellipses dropped."""
    for match in re.finditer(r"`supportbot ([^`]+)`", prose(doc)):
        cleaned = re.sub(r"[\[\]…]", " ", match.group(1))
        yield [token for token in cleaned.split() if token and token != "|"]


def check_cli(root: click.Group, args: list[str]) -> str | None:
    """Why ``supportbot <args>`` would not parse (unknown command, option or choice); None when it does."""
    command: click.Command = root
    path: list[str] = []
    i = 0
    while isinstance(command, click.Group) and i < len(args) and not args[i].startswith("-"):
        sub = command.commands.get(args[i])
        if sub is None:
            return f"supportbot {' '.join(path)} has no command {args[i]!r}"
        path.append(args[i])
        command = sub
        i += 1
    options: dict[str, click.Parameter] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in (*param.opts, *param.secondary_opts):
                options[opt] = param
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("-") or token == "-":
            continue
        name, equals, value = token.partition("=")
        if name in ("-h", "--help") or (not path and name == "--version"):
            continue
        param = options.get(name)
        if param is None:
            return f"supportbot {' '.join(path)} has no option {name}"
        takes_value = not (getattr(param, "is_flag", False) or getattr(param, "count", False))
        if takes_value and not equals:
            value = args[i] if i < len(args) else ""
            i += 1
        if (
            isinstance(param.type, click.Choice)
            and re.fullmatch(r"[a-z_]+", value or "")
            and value not in param.type.choices
        ):
            return f"supportbot {' '.join(path)} {name}: {value!r} is not one of {', '.join(param.type.choices)}"
    return None


# -- the guides' tools, and calling them as the model would -----------------------------------------


@contextmanager
def doc_tools(directory: Path) -> Iterator[ToolRegistry]:
    """The built-in tools and the guides' ``python tool MODULE`` blocks (each module's blocks joined in
    order), written to ``directory`` and imported from there; importable by name until the block ends."""
    names = sorted({block.args[0] for block in of_kind("python", "tool")})
    for name in names:
        (directory / f"{name}.py").write_text(source_of(name), encoding="utf-8")
    sys.path.insert(0, str(directory))
    try:
        tools = default_registry()
        tools.load_modules(names)
        yield tools
    finally:
        sys.path.remove(str(directory))
        for name in names:
            sys.modules.pop(name, None)


def context(customer: Customer, http: aiohttp.ClientSession, orders: OrderSource, **changes: Any) -> ToolContext:
    values: dict[str, Any] = {
        "customer": customer,
        "conversation": Conversation(id="conv-docs", customer_id=customer.id, channel="web", flow="warranty"),
        "channel": "web", "flow": "warranty", "store": MemoryStore(), "config": load_config(None, env={}),
        "http": http, "orders": orders, "tool_call_id": "call-1",
    }  # fmt: skip
    values.update(changes)
    return ToolContext(**values)


async def call(registry: ToolRegistry, ctx: ToolContext, name: str, arguments: dict[str, Any]) -> str:
    result = await registry.call(ToolCall(id=ctx.tool_call_id, name=name, arguments=json.dumps(arguments)), ctx)
    return result.content
