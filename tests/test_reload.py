"""Hot reload: swapping flows and tools in the engine, reloading them from real files, watching, SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from supportbot.config import load_config
from supportbot.events import Event, Handoff, ToolCallFinished, TurnFinished, TurnStarted
from supportbot.flows import load_flows
from supportbot.llm.base import Completion, LLMRequest, StreamEvent, TextChunk
from supportbot.messages import ChatMessage, ToolCall
from supportbot.reload import Outcome, Reloader, Watcher, user_modules
from supportbot.runtime import Runtime, open_runtime
from supportbot.server import serve
from supportbot.store.memory import MemoryStore
from supportbot.tools import default_registry, tool
from tests.server_process import free_port, spawn_server, start_server, stop_server, wait_until_listening

GENERAL = """\
name: general
description: General questions
tools: [lookup_order, stamp]
handoffs: [returns]
system_prompt: GENERAL VERSION
"""

RETURNS = """\
name: returns
description: Returns and refunds
tools: [lookup_order]
handoffs: [general]
system_prompt: RETURNS VERSION
"""

TOOLS = '''\
from supportbot import tool


@tool
def stamp() -> str:
    """Says which version of this module ran."""
    return "stamp VERSION"
'''

NEW_TOOL = '''

@tool
def refund_status(order_id: str) -> str:
    """Tells where the refund of an order is.

    Args:
        order_id: the order number.
    """
    return "refunded " + order_id
'''


# -- a model in this process ----------------------------------------------------------------------


class ScriptedLLM:
    """Answers each request with the next scripted message (else "ok"); ``hold`` keeps the next request waiting."""

    def __init__(self) -> None:
        self.requests: list[LLMRequest] = []
        self.replies: list[ChatMessage] = []
        self._arrived = asyncio.Event()
        self._release: asyncio.Event | None = None

    def hold(self) -> asyncio.Event:
        """The next request waits until the returned event is set."""
        self._release = asyncio.Event()
        return self._release

    async def arrived(self, count: int) -> None:
        while len(self.requests) < count:
            self._arrived.clear()
            await self._arrived.wait()

    async def stream(self, request: LLMRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        self._arrived.set()
        if self._release is not None:
            release, self._release = self._release, None
            await release.wait()
        message = self.replies.pop(0) if self.replies else text("ok")
        if message.content:
            yield TextChunk(text=message.content)
        yield Completion(message=message, finish_reason="tool_calls" if message.tool_calls else "stop")

    async def aclose(self) -> None:
        pass


def text(content: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=content)


def calls(*named: tuple[str, dict[str, Any]]) -> ChatMessage:
    made = tuple(ToolCall(id=f"call_{i}", name=n, arguments=json.dumps(a)) for i, (n, a) in enumerate(named))
    return ChatMessage(role="assistant", tool_calls=made)


def system_prompt(request: LLMRequest) -> str | None:
    return request.messages[0].content


def offered(request: LLMRequest) -> set[str]:
    return {t["function"]["name"] for t in request.tools}


# -- a project on disk --------------------------------------------------------------------------------


class Project:
    """A config.yaml, flows/ and a tools module in a directory of their own."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.module = f"reload_tools_{uuid.uuid4().hex[:12]}"  # each test imports a module of its own
        self.write("config.yaml", f"""\
company: {{name: Acme Outdoor}}
llm: {{api_key: test-key}}
database: {{url: "sqlite+aiosqlite:///supportbot.db"}}
flows: {{dir: flows, default: general}}
tools:
  modules: [{self.module}]
""")  # fmt: skip
        self.write("flows/general.yaml", GENERAL.replace("VERSION", "V1"))
        self.write("flows/returns.yaml", RETURNS.replace("VERSION", "V1"))
        self.write(f"{self.module}.py", TOOLS.replace("VERSION", "V1"))

    @property
    def config_file(self) -> Path:
        return self.dir / "config.yaml"

    def write(self, relative: str, content: str) -> Path:
        path = self.dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    made = Project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield made
    for name in [n for n in sys.modules if n.startswith((made.module, "supportbot_local_tools"))]:
        del sys.modules[name]


@pytest.fixture
def llm() -> ScriptedLLM:
    return ScriptedLLM()


@pytest.fixture
async def runtime(project: Project, llm: ScriptedLLM) -> AsyncIterator[Runtime]:
    opened = await open_runtime(load_config(project.config_file), llm=llm, store=MemoryStore())
    yield opened
    await opened.aclose()


async def start(runtime: Runtime, flow: str | None = None) -> str:
    customer = await runtime.store.get_or_create_customer(email="ana@example.com", name="Ana", verified=True)
    conversation, _ = await runtime.engine.start_conversation(customer, channel="test", flow=flow)
    return conversation.id


async def turn(runtime: Runtime, conversation_id: str, message: str = "Hi") -> list[Event]:
    return [e async for e in runtime.engine.run_turn(conversation_id, message)]


def results(events: list[Event]) -> dict[str, str]:
    return {e.name: e.result for e in events if isinstance(e, ToolCallFinished)}


# -- the engine ---------------------------------------------------------------------------------------


async def test_a_turn_in_flight_finishes_on_its_version_and_the_next_turn_gets_the_new_one(
    runtime: Runtime, llm: ScriptedLLM, tmp_path: Path
) -> None:
    cid = await start(runtime)
    release = llm.hold()
    llm.replies = [calls(("stamp", {}), ("transfer_to_returns", {"reason": "a return"})), text("Sure.")]
    running = asyncio.create_task(turn(runtime, cid))
    await asyncio.wait_for(llm.arrived(1), 5)

    # The new version: other prompts, ``stamp`` answering otherwise, returns offering create_ticket.
    @tool(name="stamp")
    def stamp_v2() -> str:
        """Says which version ran."""
        return "stamp V2"

    tools = default_registry()
    tools.register(stamp_v2)
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "general.yaml").write_text(GENERAL.replace("VERSION", "V2"))
    (v2 / "returns.yaml").write_text(RETURNS.replace("VERSION", "V2").replace("[lookup_order]", "[create_ticket]"))
    before = runtime.engine.snapshot
    after = runtime.engine.swap(load_flows(v2, tool_names=tools.names(), default="general"), tools)
    assert runtime.engine.snapshot is after is not before
    assert runtime.flows["general"].system_prompt == "GENERAL V2" and runtime.tools is tools

    release.set()
    events = await asyncio.wait_for(running, 5)
    assert results(events)["stamp"] == "stamp V1"  # the tool of the version the turn started with
    assert any(isinstance(e, Handoff) and e.target == "returns" for e in events)
    assert isinstance(events[-1], TurnFinished) and events[-1].text == "Sure."
    # After the transfer, the old version's returns flow: its prompt and its tools.
    assert system_prompt(llm.requests[1]) == "RETURNS V1"
    assert offered(llm.requests[1]) == {"lookup_order", "transfer_to_general"}

    await turn(runtime, cid, "And my refund?")
    assert system_prompt(llm.requests[2]) == "RETURNS V2"
    assert offered(llm.requests[2]) == {"create_ticket", "transfer_to_general"}


# -- reloading from the files -----------------------------------------------------------------------


async def test_a_reload_brings_an_edited_prompt_an_edited_tool_and_a_new_tool_to_the_next_turn(
    project: Project, runtime: Runtime, llm: ScriptedLLM, caplog: pytest.LogCaptureFixture
) -> None:
    cid = await start(runtime)
    await turn(runtime, cid)
    assert system_prompt(llm.requests[0]) == "GENERAL V1"

    project.write("flows/general.yaml", GENERAL.replace("VERSION", "V2").replace("stamp]", "stamp, refund_status]"))
    project.write(f"{project.module}.py", TOOLS.replace("VERSION", "V2 (edited)") + NEW_TOOL)
    outcomes: list[Outcome] = []
    with caplog.at_level(logging.INFO, logger="supportbot.reload"):
        outcome = await Reloader(runtime, on_outcome=outcomes.append).reload(reason="changed: flows/general.yaml")

    assert outcome.ok and outcomes == [outcome] and runtime.engine.snapshot is outcome.snapshot
    assert [r.getMessage() for r in caplog.records if r.name == "supportbot.reload"] == [
        "reloaded: flows general, returns; 5 tools (changed: flows/general.yaml)"
    ]
    assert "refund_status" in runtime.tools
    llm.replies = [calls(("stamp", {}), ("refund_status", {"order_id": "A1001"})), text("Done.")]
    events = await turn(runtime, cid)
    assert system_prompt(llm.requests[1]) == "GENERAL V2"
    assert offered(llm.requests[1]) == {"lookup_order", "stamp", "refund_status", "transfer_to_returns"}
    assert results(events) == {"stamp": "stamp V2 (edited)", "refund_status": "refunded A1001"}


REFUSED = {
    "yaml syntax": (
        "flows/general.yaml",
        "name: general\ndescription: [General questions\nsystem_prompt: hello\n",
        r"flows/general\.yaml:\d+: invalid YAML: ",
    ),
    "unknown tool": (
        "flows/general.yaml",
        GENERAL.replace("VERSION", "V2").replace("[lookup_order, stamp]", "[lookup_order, lookup_ordr]"),
        r"flows/general\.yaml:3: tools\[1\]: unknown tool 'lookup_ordr'; did you mean 'lookup_order'\?",
    ),
    "tools module": (
        "TOOLS",
        TOOLS.replace("VERSION", "V2").replace("def stamp()", "def stamp(:"),
        r"config\.yaml:\d+: tools\.modules\[0\]: cannot import '\w+': SyntaxError: .*reload_tools_\w+\.py, line 5",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
async def test_a_bad_edit_is_refused_with_its_file_and_line_and_the_old_version_serves_on(
    case: str, project: Project, runtime: Runtime, llm: ScriptedLLM, caplog: pytest.LogCaptureFixture
) -> None:
    file, content, expected = REFUSED[case]
    module = sys.modules[project.module]
    cid = await start(runtime)
    before = runtime.engine.snapshot
    project.write(f"{project.module}.py" if file == "TOOLS" else file, content)
    if file != "TOOLS":  # the tools module is edited too, and must not be half taken
        project.write(f"{project.module}.py", TOOLS.replace("VERSION", "V2") + NEW_TOOL)

    with caplog.at_level(logging.INFO, logger="supportbot.reload"):
        outcome = await Reloader(runtime).reload()

    assert not outcome.ok and outcome.snapshot is before and runtime.engine.snapshot is before
    errors = [r.getMessage() for r in caplog.records if r.name == "supportbot.reload" and r.levelno == logging.ERROR]
    assert any(re.search(expected, line) for line in outcome.problems), outcome.problems
    assert errors[:-1] == list(outcome.problems)  # one line per problem
    loaded_at = before.loaded_at.isoformat(timespec="seconds")
    assert errors[-1] == f"reload refused; still serving the previous version (loaded at {loaded_at})"
    assert sys.modules[project.module] is module  # the old module is put back
    llm.replies = [calls(("stamp", {})), text("Done.")]
    events = await turn(runtime, cid)
    assert system_prompt(llm.requests[0]) == "GENERAL V1" and results(events) == {"stamp": "stamp V1"}

    # Fixed, it goes through.
    project.write("flows/general.yaml", GENERAL.replace("VERSION", "V3"))
    project.write(f"{project.module}.py", TOOLS.replace("VERSION", "V3") + NEW_TOOL)
    assert (await Reloader(runtime).reload()).ok
    llm.replies = [calls(("stamp", {})), text("Done.")]
    events = await turn(runtime, cid)
    assert system_prompt(llm.requests[2]) == "GENERAL V3" and results(events) == {"stamp": "stamp V3"}


async def test_an_edit_within_the_same_second_that_keeps_the_size_is_taken(
    project: Project, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's bytecode cache knows a source by its mtime in whole seconds and its size."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # the cache is written, as it is by default
    module = project.dir / f"{project.module}.py"
    second = int(module.stat().st_mtime)
    os.utime(module, ns=(second * 10**9 + 100_000_000,) * 2)
    runtime = await open_runtime(load_config(project.config_file), llm=llm, store=MemoryStore())
    try:
        project.write(f"{project.module}.py", TOOLS.replace("VERSION", "V2"))  # as long as V1's
        os.utime(module, ns=(second * 10**9 + 600_000_000,) * 2)
        assert (await Reloader(runtime).reload()).ok
        llm.replies = [calls(("stamp", {})), text("Done.")]
        assert results(await turn(runtime, await start(runtime))) == {"stamp": "stamp V2"}
    finally:
        await runtime.aclose()


async def test_a_conversation_in_a_removed_flow_continues_in_the_default_one(
    project: Project, runtime: Runtime, llm: ScriptedLLM
) -> None:
    cid = await start(runtime, flow="returns")
    (project.dir / "flows" / "returns.yaml").unlink()
    project.write("flows/general.yaml", GENERAL.replace("VERSION", "V2").replace("handoffs: [returns]\n", ""))

    outcome = await Reloader(runtime).reload()

    assert outcome.ok and list(runtime.flows) == ["general"]
    events = await turn(runtime, cid)
    assert isinstance(events[0], TurnStarted) and events[0].flow == "general"
    assert system_prompt(llm.requests[0]) == "GENERAL V2"


async def test_a_file_added_to_the_tools_directory_and_then_edited_is_taken(project: Project, runtime: Runtime) -> None:
    stem = f"extra_{uuid.uuid4().hex[:8]}"
    wrap = '''\
from supportbot import tool


@tool
def gift_wrap(order_id: str) -> str:
    """DESCRIPTION

    Args:
        order_id: the order number.
    """
    return "wrapped"
'''
    project.write(f"tools/{stem}.py", wrap.replace("DESCRIPTION", "Wraps an order as a gift."))
    project.write("flows/general.yaml", GENERAL.replace("VERSION", "V2").replace("stamp]", "stamp, gift_wrap]"))
    reloader = Reloader(runtime)
    assert (await reloader.reload()).ok
    assert project.dir / "tools" / f"{stem}.py" in reloader.watched_files()

    project.write(f"tools/{stem}.py", wrap.replace("DESCRIPTION", "Wraps each item of an order as a gift."))
    assert (await reloader.reload()).ok
    found = runtime.tools.get("gift_wrap")
    assert found is not None and found.definition["function"]["description"].startswith("Wraps each item")


async def test_a_helper_a_tools_file_imports_from_its_directory_is_taken_when_edited(
    project: Project, runtime: Runtime
) -> None:
    """docs/writing-tools.md: ``from . import _shop_api`` in a file of ``tools/``."""
    helper = f"_helper_{uuid.uuid4().hex[:8]}"
    project.write(f"tools/{helper}.py", "VALUE = 'helper V1'\n")
    project.write(
        f"tools/shop_{helper}.py",
        f'''\
from supportbot import tool

from . import {helper}


@tool
def helper_value() -> str:
    """Says what the helper holds."""
    return {helper}.VALUE
''',
    )
    reloader = Reloader(runtime)
    assert (await reloader.reload()).ok
    project.write(f"tools/{helper}.py", "VALUE = 'helper V2, edited'\n")

    assert (await reloader.reload()).ok

    found = runtime.tools.get("helper_value")
    assert found is not None and found.function() == "helper V2, edited"
    assert f"supportbot_local_tools.{helper}" in sys.modules  # and a next reload forgets it again
    project.write(f"tools/{helper}.py", "VALUE = 'helper V3'\n")
    assert (await reloader.reload()).ok
    found = runtime.tools.get("helper_value")
    assert found is not None and found.function() == "helper V3"


async def test_a_failed_reload_puts_the_tools_directory_package_back(project: Project, runtime: Runtime) -> None:
    helper = f"_helper_{uuid.uuid4().hex[:8]}"
    project.write(f"tools/{helper}.py", "VALUE = 'helper V1'\n")
    project.write(f"tools/shop_{helper}.py", f"from . import {helper}\n")
    reloader = Reloader(runtime)
    assert (await reloader.reload()).ok
    package = sys.modules["supportbot_local_tools"]
    project.write(f"tools/shop_{helper}.py", f"from . import {helper}\nraise RuntimeError('broken')\n")

    assert not (await reloader.reload()).ok

    assert sys.modules["supportbot_local_tools"] is package
    assert getattr(package, helper).VALUE == "helper V1"


async def test_a_reload_leaves_the_launch_script_and_the_python_installation_alone(
    project: Project, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A virtualenv inside the project (``.venv/bin/supportbot`` runs as ``__main__``) is not the user's code."""
    venv = project.dir / ".venv"
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "exec_prefix", str(venv))
    modules: dict[str, ModuleType] = {}
    for name, file in [
        ("__main__", venv / "bin" / "supportbot"),
        ("__mp_main__", project.dir / "run.py"),
        (f"installed_{uuid.uuid4().hex[:8]}", venv / "lib" / "installed.py"),
    ]:
        module = modules[name] = ModuleType(name)
        module.__file__ = str(file)
        monkeypatch.setitem(sys.modules, name, module)

    assert project.module in user_modules(runtime.config)
    assert not modules.keys() & user_modules(runtime.config).keys()
    assert (await Reloader(runtime).reload()).ok
    assert all(sys.modules[name] is module for name, module in modules.items())


async def test_requests_during_a_reload_make_exactly_one_more(runtime: Runtime) -> None:
    outcomes: list[Outcome] = []
    done = asyncio.Event()

    def seen(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if len(outcomes) == 1:  # the first reload is still under way (it holds its lock): ask twice more
            reloader.request("second")
            reloader.request("third")
        else:
            done.set()

    reloader = Reloader(runtime, on_outcome=seen)
    reloader.start(watch=False)
    try:
        reloader.request("first")
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await reloader.aclose()
    assert [o.reason for o in outcomes] == ["first", "second; third"]
    assert all(o.ok for o in outcomes)


# -- watching -----------------------------------------------------------------------------------------


def test_the_watcher_reports_a_burst_of_writes_once_after_it_settled(tmp_path: Path) -> None:
    flow = tmp_path / "general.yaml"
    flow.write_text(GENERAL)
    files = [flow, tmp_path / "new.yaml"]
    watcher = Watcher(lambda: files, settle=0.3, now=0.0)
    assert watcher.poll(1.0) == [] and not watcher.pending

    flow.write_text("name: gen")  # an editor writing in steps; each step changes the size
    assert watcher.poll(2.0) == [] and watcher.pending
    flow.write_text("name: general\n")
    assert watcher.poll(2.2) == []  # changed again: the wait starts over
    flow.write_text(GENERAL + "# edited\n")
    assert watcher.poll(2.4) == []
    assert watcher.poll(2.6) == []  # unchanged for 0.2 s only
    assert watcher.poll(2.75) == [flow] and not watcher.pending  # unchanged for 0.35 s: once
    assert watcher.poll(3.75) == []

    (tmp_path / "new.yaml").write_text(RETURNS)
    flow.unlink()
    assert watcher.poll(4.0) == []
    assert watcher.poll(4.5) == sorted(files)  # a new file and a removed one are changes too


class Observed(Reloader):
    """A reloader whose watcher's scans the test can wait for."""

    def __init__(self, runtime: Runtime, *, on_outcome: Callable[[Outcome], None]) -> None:
        super().__init__(runtime, on_outcome=on_outcome)
        self.scans = 0
        self.scanned = threading.Condition()

    def watched_files(self) -> list[Path]:
        files = super().watched_files()
        with self.scanned:
            self.scans += 1
            self.scanned.notify_all()
        return files

    async def scanned_again(self, times: int) -> None:
        """Wait until the watcher scanned ``times`` more times than now."""
        with self.scanned:
            target = self.scans + times

        def wait() -> None:
            with self.scanned:
                assert self.scanned.wait_for(lambda: self.scans >= target, timeout=10)

        await asyncio.to_thread(wait)


class LogWaiter(logging.Handler):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = pattern
        self.found = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if re.search(self.pattern, record.getMessage()):
            self.found.set()


async def test_the_watcher_reloads_once_an_edit_settled_and_only_warns_on_a_config_change(
    project: Project, runtime: Runtime, llm: ScriptedLLM
) -> None:
    outcomes: list[Outcome] = []
    reloaded = asyncio.Event()

    def seen(outcome: Outcome) -> None:
        outcomes.append(outcome)
        reloaded.set()

    reloader = Observed(runtime, on_outcome=seen)
    assert project.dir / "flows" / "general.yaml" in reloader.watched_files()
    assert project.dir / f"{project.module}.py" in reloader.watched_files()
    reloader.start(watch=True, interval=0.01, settle=1.0)
    waiter = LogWaiter(r"config\.yaml changed: the configuration is not reloaded")
    logging.getLogger("supportbot.reload").addHandler(waiter)
    try:
        # Half a file first: a reload now would be refused. The watcher sees it, then the rest comes.
        project.write("flows/general.yaml", "name: general\ndescription: [Gen")
        await reloader.scanned_again(2)
        project.write("flows/general.yaml", GENERAL.replace("VERSION", "V2"))
        await asyncio.wait_for(reloaded.wait(), 10)
        assert [(o.ok, o.reason) for o in outcomes] == [(True, f"changed: {project.dir / 'flows' / 'general.yaml'}")]
        cid = await start(runtime)
        await turn(runtime, cid)
        assert system_prompt(llm.requests[-1]) == "GENERAL V2"

        project.write("config.yaml", project.config_file.read_text() + "# a comment\n")
        await asyncio.wait_for(waiter.found.wait(), 10)
        assert len(outcomes) == 1  # the config file alone reloads nothing
    finally:
        logging.getLogger("supportbot.reload").removeHandler(waiter)
        await reloader.aclose()


class Requests(Observed):
    """An observed reloader that also notes what asked for a reload."""

    def __init__(self, runtime: Runtime, *, on_outcome: Callable[[Outcome], None]) -> None:
        super().__init__(runtime, on_outcome=on_outcome)
        self.requested: list[str] = []

    def request(self, reason: str = "") -> None:
        self.requested.append(reason)
        super().request(reason)


async def test_a_module_a_reload_starts_or_stops_watching_is_no_change(project: Project, runtime: Runtime) -> None:
    """The tools module imports a new helper: the helper is watched from then on, but not reported as changed."""
    helper = project.dir / f"{project.module}_helper.py"
    helper.write_text("VALUE = 'helper'\n")
    outcomes: list[Outcome] = []
    reloaded = asyncio.Event()

    def seen(outcome: Outcome) -> None:
        outcomes.append(outcome)
        reloaded.set()

    reloader = Requests(runtime, on_outcome=seen)
    assert helper not in reloader.watched_files()
    reloader.start(watch=True, interval=0.01, settle=0.03)
    try:
        for edit, watched in [(f"import {helper.stem}\n", True), ("", False)]:
            reloaded.clear()
            project.write(f"{project.module}.py", TOOLS.replace("VERSION", "edited") + edit)
            await asyncio.wait_for(reloaded.wait(), 10)
            assert (helper in reloader.watched_files()) is watched
            await reloader.scanned_again(20)  # 0.2 s at least: what the watcher reports has settled by then
        tools = project.dir / f"{project.module}.py"
        assert reloader.requested == [f"changed: {tools}"] * 2
        assert [o.ok for o in outcomes] == [True, True]
    finally:
        await reloader.aclose()


# -- supportbot serve ---------------------------------------------------------------------------------

ANOTHER_FLOW = """\
name: shipping
description: Shipping costs and times
system_prompt: You answer questions about shipping.
"""


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


def _flows_loaded(port: int) -> str:
    return str(json.loads(_get(port, "/readyz"))["checks"]["flows"])


async def _until_flows(port: int, expected: str) -> None:
    """Wait (20 s at most) until /readyz reports ``expected`` flows."""
    async with asyncio.timeout(20):
        while (found := await asyncio.to_thread(_flows_loaded, port)) != expected:
            assert found in ("2 loaded", expected), found
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("how", ["--reload", "SIGHUP"])
async def test_the_command_takes_a_new_flow_file(how: str, project: Project) -> None:
    port = free_port()
    args = ["--demo", "--reload"] if how == "--reload" else ["--demo"]
    process = await asyncio.to_thread(start_server, project.config_file, port, project.dir, args)
    try:
        assert await asyncio.to_thread(_flows_loaded, port) == "2 loaded"
        project.write("flows/shipping.yaml", ANOTHER_FLOW)
        if how == "SIGHUP":
            process.send_signal(signal.SIGHUP)
        await _until_flows(port, "3 loaded")
        assert 'supportbot_reloads_total{outcome="ok"} 1.0' in await asyncio.to_thread(_get, port, "/metrics")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=20)
        assert process.returncode == 0, stderr
        assert "reloaded: flows general, returns, shipping; 4 tools" in stderr
        assert ("on SIGHUP" if how == "SIGHUP" else "changed: flows/shipping.yaml") in stderr
        # --reload says what it watches: two flow files, the tools module, config.yaml.
        assert ("watching 4 files for changes" in stderr) == (how == "--reload"), stderr
    finally:
        await stop_server(process)


async def test_a_sighup_while_the_command_starts_reloads_once_it_is_up(project: Project) -> None:
    """systemd's ``ExecReload=/bin/kill -HUP $MAINPID`` may come before the server is up: it must not end it."""
    gate = "import sys\n\nprint('importing the tools', file=sys.stderr, flush=True)\nsys.stdin.readline()\n"
    project.write(f"{project.module}.py", TOOLS.replace("VERSION", "V1") + gate)
    port = free_port()
    gate_out, gate_in = os.pipe()
    process = spawn_server(project.config_file, port, project.dir, ["--demo"], stdin=gate_out)
    os.close(gate_out)
    try:
        assert process.stderr is not None
        while "importing the tools" not in (line := await asyncio.to_thread(process.stderr.readline)):
            assert line, "the server ended before it imported the tools"
        process.send_signal(signal.SIGHUP)  # while serve() loads the tools: the server is not up yet
        os.write(gate_in, b"go on\n")
        os.close(gate_in)  # the reload imports the tools again: readline() at the end of input returns at once
        await asyncio.to_thread(wait_until_listening, process, port)
        assert await asyncio.to_thread(_flows_loaded, port) == "2 loaded"
        async with asyncio.timeout(20):  # the SIGHUP was kept for later: one reload once the server is up
            while "reloaded: " not in (line := await asyncio.to_thread(process.stderr.readline)):
                assert line, "the server ended"
        assert "(on SIGHUP)" in line
        assert 'supportbot_reloads_total{outcome="ok"} 1.0' in await asyncio.to_thread(_get, port, "/metrics")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=20)
        assert process.returncode == 0, stderr
    finally:
        with contextlib.suppress(OSError):  # closed unless the test failed before
            os.close(gate_in)
        await stop_server(process)


async def test_serve_keeps_sighup_harmless_while_it_closes_and_restores_what_was_there(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []

    async def opened(config: Any, **kwargs: Any) -> Runtime:
        runtime = await open_runtime(config, **kwargs)
        runtime.closing.callback(lambda: seen.append(signal.getsignal(signal.SIGHUP)))  # the last thing closed
        return runtime

    def before(signum: int, frame: object) -> None:  # pragma: no cover - never called
        pass

    monkeypatch.setattr("supportbot.server.open_runtime", opened)
    monkeypatch.chdir(project.dir)
    previous = signal.signal(signal.SIGHUP, before)
    try:
        stop = asyncio.Event()
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            serve(load_config(project.config_file), port=0, demo=True, stop=stop, ready=ready.set_result)
        )
        await asyncio.wait_for(ready, 20)
        assert signal.getsignal(signal.SIGHUP) is not before  # serve's own: it reloads
        stop.set()
        await asyncio.wait_for(task, 20)
        assert len(seen) == 1 and seen[0] not in (signal.SIG_DFL, before)  # a SIGHUP now would not end it
        assert signal.getsignal(signal.SIGHUP) is before
    finally:
        signal.signal(signal.SIGHUP, previous)
