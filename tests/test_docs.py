"""Every example of the user guides (docs/writing-flows.md … docs/security.md) is tested.

Each fenced block names its kind after the language (```` ```yaml flow ````), and each kind has a test
here or in ``tests/test_docs_operations.py``; ``test_every_block_has_a_kind`` fails on a block without
one, so no example goes untested. Besides the blocks: the links and anchors between the docs, every
``supportbot …`` command line the guides show (it must exist, with its options), and the worked example
of writing-flows.md run end to end through the engine with a scripted model.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from click.testing import CliRunner

from supportbot.cli import main as cli_main
from supportbot.config import EXAMPLE_FLOWS_DIR, load_config
from supportbot.engine import Engine
from supportbot.errors import ConfigError
from supportbot.events import ToolCallFinished, TurnFinished
from supportbot.flows import Flow, load_flows
from supportbot.llm.base import Completion, LLMRequest, StreamEvent, TextChunk
from supportbot.messages import ChatMessage, ToolCall
from supportbot.runtime import load_tools_and_flows
from supportbot.store.sql import SQLStore
from supportbot.tools import Tool, ToolRegistry, make_order_source
from supportbot.tools.orders import FileOrderSource
from tests.docs_blocks import (
    ANA,
    DOCS_DIR,
    ENV_VALUE,
    GUIDES,
    ROOT,
    Block,
    all_blocks,
    anchors,
    blocks,
    call,
    check_cli,
    config_vars,
    context,
    doc_tools,
    env_of,
    ids,
    inline_invocations,
    invocations,
    links,
    of_kind,
    shell_lines,
    source_of,
)

KINDS = {
    ("yaml", "flow"), ("yaml", "flow-part"), ("yaml", "flow-bad"), ("text", "messages"), ("yaml", "config"),
    ("python", "tool"), ("python", "example"), ("json", "schema"), ("csv", "orders"), ("yaml", "orders"),
    ("sql", "sqlite"), ("sql", "postgres"), ("python", "adapter"), ("yaml", "prometheus-rules"),
    ("yaml", "prometheus-scrape"), ("ini", "systemd"), ("sh", "cli"), ("sh", "env"), ("caddy", "proxy"),
    ("nginx", "proxy"), ("json", "log"), ("text", "rendered"),
    ("text", "output"),  # shown output, allowed untested
}  # fmt: skip


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolRegistry]:
    """The built-in tools and those of the guides' python tool blocks (importable while the module runs)."""
    with doc_tools(tmp_path_factory.mktemp("doc_tools")) as tools:
        yield tools


# -- every block has a kind; links -----------------------------------------------------------------


def test_every_block_has_a_kind() -> None:
    problems = [f"{b.where}: ```{b.lang} {b.kind}" for b in all_blocks() if (b.lang, b.kind) not in KINDS]
    assert problems == [], "fenced blocks without a test kind (see KINDS):\n" + "\n".join(problems)
    for doc in GUIDES:
        found = blocks(doc)
        for before, block in itertools.pairwise(found):
            if (block.lang, block.kind) == ("text", "messages"):
                assert (before.lang, before.kind) == ("yaml", "flow-bad"), f"{block.where}: follows no flow-bad block"
            if (block.lang, block.kind) == ("text", "rendered"):
                assert (before.lang, before.kind) == ("json", "log"), f"{block.where}: follows no log line"


@pytest.mark.parametrize("doc", GUIDES)
def test_links_and_anchors_resolve(doc: str) -> None:
    for target in links(doc):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (DOCS_DIR / file).resolve() if file else DOCS_DIR / doc
        assert path.exists(), f"docs/{doc}: link to {target}: no such file"
        if anchor:
            assert anchor in anchors(path), f"docs/{doc}: link to {target}: no heading with that anchor"


# -- tools -----------------------------------------------------------------------------------------


def test_tool_blocks_register(registry: ToolRegistry) -> None:
    assert {"warranty_status", "open_warranty_claim", "quote_spare_parts"} <= set(registry.names())
    for name in {block.args[0] for block in of_kind("python", "tool")}:
        assert any(isinstance(value, Tool) for value in vars(sys.modules[name]).values()), f"{name} defines no tool"


@pytest.mark.parametrize("block", of_kind("json", "schema"), ids=ids)
def test_schema_blocks_are_what_the_model_gets(block: Block, registry: ToolRegistry) -> None:
    tool = registry.get(block.args[0])
    assert tool is not None, f"{block.where}: no tool {block.args[0]!r} in the guides"
    shown = json.loads(block.text)
    assert shown == (tool.definition if shown.get("type") == "function" else tool.parameters), block.where


@pytest.mark.parametrize("block", of_kind("python", "example"), ids=ids)
async def test_example_blocks_run(block: Block, registry: ToolRegistry, tmp_path: Path) -> None:
    file = tmp_path / f"doc_example_{block.line}.py"
    file.write_text(block.text, encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(file.stem)
        tests = [getattr(module, name) for name in dir(module) if name.startswith("test_")]
        assert tests, f"{block.where}: an example block defines test_ functions to run"
        for test in tests:
            await test()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(file.stem, None)


BAD_ARGUMENTS = [
    ("quote_spare_parts", {"parts": [{"sku": "POLE-2P-SEG"}], "shipping": "overnight"}),
    ("quote_spare_parts", {"parts": [{"sku": "POLE-2P-SEG", "quantity": 0}]}),
    ("quote_spare_parts", {"parts": [{"sku": "POLE-2P-SEG"}], "colour": "red"}),
    ("warranty_status", {}),
]
"""The calls behind the error results writing-tools.md shows, in its order."""


async def test_the_spare_parts_tool_answers_as_the_guide_says(registry: ToolRegistry) -> None:
    async with aiohttp.ClientSession() as http:
        ctx = context(ANA, http, FileOrderSource(path=EXAMPLE_FLOWS_DIR.parent / "orders.yaml"))
        quote = json.loads(await call(registry, ctx, "quote_spare_parts", {"parts": [{"sku": "POLE-2P-SEG"}]}))
        assert quote == {"total": 17.4, "currency": "USD", "shipping": "standard", "discount": 0.0}
        discounted = await call(
            registry, ctx, "quote_spare_parts", {"parts": [{"sku": "POLE-2P-SEG"}], "coupon": "tentfix"}
        )
        assert json.loads(discounted)["total"] == 16.15
        shown = next(b.text for b in of_kind("text", "output", doc="writing-tools.md") if "invalid arguments" in b.text)
        for (name, arguments), expected in zip(BAD_ARGUMENTS, shown.splitlines(), strict=True):
            assert await call(registry, ctx, name, arguments) == expected


# -- flows -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", of_kind("yaml", "flow"), ids=ids)
def test_flow_blocks_load(block: Block, registry: ToolRegistry, tmp_path: Path) -> None:
    data = yaml.safe_load(block.text)
    Flow.from_dict(data, tool_names=registry.names(), source=block.where)
    (tmp_path / f"{data['name']}.yaml").write_text(block.text, encoding="utf-8")
    flows = load_flows(tmp_path, tool_names=registry.names(), include_examples=True)  # handoffs must resolve
    assert data["name"] in flows


@pytest.mark.parametrize("block", of_kind("yaml", "flow-part"), ids=ids)
def test_flow_parts_load(block: Block, registry: ToolRegistry) -> None:
    data = {"name": "example", "description": "An example flow.", "system_prompt": "You help customers."}
    data.update(yaml.safe_load(block.text))
    Flow.from_dict(data, tool_names=registry.names(), source=block.where)


@pytest.mark.parametrize("block", of_kind("yaml", "flow-bad"), ids=ids)
def test_bad_flows_give_the_messages_shown(
    block: Block, registry: ToolRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = blocks(block.doc)
    expected = found[found.index(block) + 1].text.splitlines()
    file = tmp_path / expected[0].split(":")[0]
    file.parent.mkdir(parents=True)
    file.write_text(block.text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as raised:
        load_flows(file.parent, tool_names=registry.names(), include_examples=True)
    assert str(raised.value).splitlines() == expected


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("block", of_kind("yaml", "config"), ids=ids)
def test_config_blocks_load(block: Block, tmp_path: Path) -> None:
    env = dict.fromkeys(config_vars(block.text), ENV_VALUE) | env_of(block.doc)
    file = tmp_path / "config.yaml"
    file.write_text(block.text, encoding="utf-8")
    config = load_config(file, env=env)
    assert config.source == file


@pytest.mark.parametrize("block", of_kind("sh", "env"), ids=ids)
def test_env_files_set_what_the_configs_need(block: Block) -> None:
    for line in shell_lines(block.text):
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S+", line), f"{block.where}: {line!r} is not NAME=value"
    needed = set()
    for config in of_kind("yaml", "config", doc=block.doc):
        needed |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", config.text))  # those without a default
    assert needed <= set(env_of(block.doc)), (
        f"docs/{block.doc}: the env file does not set {needed - set(env_of(block.doc))}"
    )


# -- the worked example, end to end ----------------------------------------------------------------


class ScriptedLLM:
    """Answers each model request with the next scripted tool call or text, and keeps the requests."""

    def __init__(self, *answers: ToolCall | str) -> None:
        self.answers = list(answers)
        self.requests: list[LLMRequest] = []

    async def stream(self, request: LLMRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, str):
            yield TextChunk(text=answer)
            yield Completion(message=ChatMessage(role="assistant", content=answer), finish_reason="stop")
        else:
            yield Completion(message=ChatMessage(role="assistant", tool_calls=(answer,)), finish_reason="tool_calls")

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def claims_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A workshop's claims API on 127.0.0.1 that records what it is sent."""
    received: list[dict[str, Any]] = []

    async def claim(request: web.Request) -> web.Response:
        received.append({"headers": dict(request.headers), "body": await request.json()})
        return web.json_response({"id": f"C-{len(received)}"})

    app = web.Application()
    app.router.add_post("/api/claims", claim)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/api/claims", received
    finally:
        await runner.cleanup()


def worked_example(tmp_path: Path) -> Path:
    """The project of writing-flows.md's worked example: config, acme_tools.py, warranty and general flows."""
    config = next(b for b in of_kind("yaml", "config", doc="writing-flows.md") if "tools:" in b.text)
    (tmp_path / "config.yaml").write_text(config.text, encoding="utf-8")
    (tmp_path / "acme_tools.py").write_text(source_of("acme_tools"), encoding="utf-8")
    flows = tmp_path / "flows"
    flows.mkdir()
    warranty = next(b for b in of_kind("yaml", "flow", doc="writing-flows.md") if "name: warranty" in b.text)
    (flows / "warranty.yaml").write_text(warranty.text, encoding="utf-8")
    general = yaml.safe_load((EXAMPLE_FLOWS_DIR / "general.yaml").read_text(encoding="utf-8"))
    route = next(b for b in of_kind("yaml", "flow-part", doc="writing-flows.md") if "warranty]" in b.text)
    general.update(yaml.safe_load(route.text))
    (flows / "general.yaml").write_text(yaml.safe_dump(general, sort_keys=False), encoding="utf-8")
    return tmp_path / "config.yaml"


async def test_the_worked_example_runs(
    tmp_path: Path, _sqlite_template: Path, claims_server: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    sys.modules.pop("acme_tools", None)
    config_file = worked_example(tmp_path)
    config = load_config(config_file, env={})
    try:
        validated = await asyncio.to_thread(CliRunner().invoke, cli_main, ["validate", "-c", str(config_file)])
        listed = re.search(r"`validate` lists `([^`]+)`", (DOCS_DIR / "writing-flows.md").read_text())
        assert validated.exit_code == 0 and listed is not None, validated.output
        assert " ".join(listed.group(1).split()) in validated.stdout.splitlines()
        assert validated.stdout.splitlines()[-1] == "OK"
        tools, flows = load_tools_and_flows(config)
        monkeypatch.setattr(sys.modules["acme_tools"], "CLAIMS_URL", claims_server[0])
    finally:
        sys.path[:] = [p for p in sys.path if p != str(tmp_path)]
    assert "warranty" in flows["general"].handoffs
    assert flows["warranty"].tools == ("warranty_status", "open_warranty_claim", "create_ticket", "handoff_to_human")

    shutil.copyfile(_sqlite_template, tmp_path / "supportbot.db")
    store = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}")
    claim = ToolCall(id="call-2", name="open_warranty_claim",
                     arguments=json.dumps({"order_id": "A1002", "problem": "The zip is torn"}))  # fmt: skip
    llm = ScriptedLLM(
        ToolCall(id="call-1", name="warranty_status", arguments='{"order_id": "A1002"}'),
        "Yes: until 30 October 2028.",
        claim,
        "The claim is open.",
    )
    try:
        async with aiohttp.ClientSession() as http:
            orders = make_order_source(config.orders, database_url=config.database.url, http=http)
            engine = Engine(config=config, flows=flows, tools=tools, llm=llm, store=store, http=http, orders=orders)
            customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
            conversation, greeting = await engine.start_conversation(customer, channel="web", flow="warranty")
            assert greeting == "Hi there! Which order is the item from? The number looks like A1001."

            events = [e async for e in engine.run_turn(conversation.id, "Is order A1002 still under warranty?")]
            result = next(e for e in events if isinstance(e, ToolCallFinished))
            assert not result.is_error and json.loads(result.result)["warranty_until"] == "2028-10-30"
            assert "warranty of\n2 years" in (llm.requests[0].messages[0].content or "")

            events = [e async for e in engine.run_turn(conversation.id, "The zip is torn, please open a claim")]
            asked = next(e for e in events if isinstance(e, TurnFinished))
            quoted = re.search(r"The customer reads `([^`]+)`", (DOCS_DIR / "writing-tools.md").read_text())
            assert quoted is not None and asked.awaiting_confirmation
            assert asked.text == " ".join(quoted.group(1).split())
            assert claims_server[1] == []

            events = [e async for e in engine.run_turn(conversation.id, "yes")]
            assert json.loads(next(e for e in events if isinstance(e, ToolCallFinished)).result)["claim_id"] == "C-1"
            (sent,) = claims_server[1]
            assert sent["headers"]["Idempotency-Key"] == f"{conversation.id}:call-2"
            assert sent["body"] == {"order_id": "A1002", "email": "ana@example.com", "problem": "The zip is torn"}

            ctx = context(ANA, http, orders, store=store, conversation=conversation, tool_call_id="call-2")
            again = await tools.call(claim, ctx)  # the same call once more: the tool's own claim refuses it
            assert again.content == "this claim was sent already; do not send it again"
            assert len(claims_server[1]) == 1
    finally:
        await store.close()
        sys.modules.pop("acme_tools", None)


# -- command lines ---------------------------------------------------------------------------------


def cli_lines() -> Iterator[tuple[str, list[str]]]:
    for block in of_kind("sh", "cli"):
        for line in shell_lines(block.text):
            for args in invocations(line):
                yield block.where, args
    for doc in GUIDES:
        for args in inline_invocations(doc):
            yield f"docs/{doc}", args


@pytest.mark.parametrize("block", of_kind("sh", "cli"), ids=ids)
def test_shell_blocks_parse(block: Block) -> None:
    done = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == 0, f"{block.where}: {done.stderr}"


def test_every_supportbot_command_shown_exists() -> None:
    shown = list(cli_lines())
    assert len(shown) > 30
    problems = [f"{where}: supportbot {' '.join(args)}: {why}" for where, args in shown
                if (why := check_cli(cli_main, args)) is not None]  # fmt: skip
    assert problems == []


def test_the_cli_check_catches_mistakes() -> None:
    assert check_cli(cli_main, ["tickets", "lst"]) == "supportbot tickets has no command 'lst'"
    assert check_cli(cli_main, ["logs", "--tool-failure"]) == "supportbot logs has no option --tool-failure"
    assert check_cli(cli_main, ["logs", "--outcome", "broken"]) is not None
    assert list(invocations("sudo -u supportbot /opt/venv/bin/supportbot db upgrade | cat")) == [["db", "upgrade"]]
    assert list(invocations("sudo -u postgres createdb --owner supportbot supportbot")) == []


def test_the_guides_are_linked_from_each_other() -> None:
    for doc in GUIDES:
        targets = {target.partition("#")[0] for target in links(doc)}
        others = set(GUIDES) - {doc}
        assert targets & others, f"docs/{doc} links to none of the other guides"
    assert (ROOT / "README.md").exists()
