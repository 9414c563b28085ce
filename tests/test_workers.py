"""Several ``supportbot serve`` workers on one PostgreSQL: arrival order, takeover after kill -9, live events.

The tests share two real server processes (``tests/server_process.py``) on one PostgreSQL schema of the
module's, with the fake model on 127.0.0.1 in the test process: starting them once instead of per test saves
seconds a test. Each test opens conversations of its own, and checks only their messages and inbox rows;
between tests the model's script and record are emptied and every turn has ended. A worker a test killed is
started again for the next test. The schema is migrated first, so the workers start side by side.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from supportbot.store.sql import SQLStore
from supportbot.testing.fake_llm import FakeLLMServer, Hang, Reply
from tests.echo_model import echo, last_user_text, until
from tests.server_process import REPO, free_port, spawn_server, stop_server, wait_until_listening

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

ADMIN_TOKEN = "admin-token-for-the-workers-tests"


def write_config(tmp_path: Path, llm: FakeLLMServer, pg_url: str) -> Path:
    sections = {
        "llm": {"base_url": llm.base_url, "api_key": "test-key", "model": "fake-model", "retries": {"max_retries": 0}},
        "database": {"url": pg_url},
        "server": {"drain_timeout_s": 0.5},
        "admin": {"token": ADMIN_TOKEN},
        "logging": {"level": "WARNING"},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(sections))  # JSON is YAML
    return path


class Model(FakeLLMServer):
    """The fake model the workers of this module share; ``reset`` gives the next test a new one, as it were."""

    def reset(self) -> None:
        self._steps.clear()
        self.responder = None
        self.requests.clear()
        self.request_count = 0


class Workers:
    """The server processes the tests share, and an HTTP client."""

    def __init__(self, config: Path, cwd: Path, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.cwd = cwd
        self.http = http
        self.processes: list[subprocess.Popen[str]] = []
        self.urls: list[str] = []

    def start(self, count: int) -> None:
        """Until ``count`` workers run: start the missing ones (side by side), and again one a test killed."""
        starting: list[tuple[subprocess.Popen[str], int]] = []
        for index in range(count):
            if index < len(self.processes) and self.processes[index].poll() is None:
                continue
            port = free_port()
            process = spawn_server(self.config, port, self.cwd)
            starting.append((process, port))
            if index < len(self.processes):
                self.processes[index], self.urls[index] = process, f"http://127.0.0.1:{port}"
            else:
                self.processes.append(process)
                self.urls.append(f"http://127.0.0.1:{port}")
        for process, port in starting:
            wait_until_listening(process, port)

    def kill(self, index: int) -> None:
        process = self.processes[index]
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=10)  # reads and closes its stderr pipe

    async def stop(self) -> None:
        await asyncio.gather(*(stop_server(process) for process in self.processes))

    async def open(self, worker: int) -> dict[str, Any]:
        async with self.http.post(f"{self.urls[worker]}/api/v1/conversations", json={}) as response:
            assert response.status == 201, await response.text()
            opened: dict[str, Any] = await response.json()
            return opened

    async def send(self, worker: int, conversation: dict[str, Any], text: str) -> int:
        """Send a message and return once it is stored (the SSE stream's ``ack``); the turn goes on regardless."""
        url = f"{self.urls[worker]}/api/v1/conversations/{conversation['id']}/messages"
        headers = {"Authorization": f"Bearer {conversation['token']}", "Accept": "text/event-stream"}
        async with self.http.post(url, json={"text": text}, headers=headers) as response:
            assert response.status == 200, await response.text()
            async for line in response.content:
                if line.startswith(b"data: "):
                    ack = json.loads(line[6:])
                    assert ack["type"] == "ack", ack
                    return int(ack["turn"])
        raise AssertionError("the stream ended before its ack")

    async def history(self, worker: int, conversation: dict[str, Any]) -> list[dict[str, Any]]:
        url = f"{self.urls[worker]}/api/v1/conversations/{conversation['id']}/messages"
        async with self.http.get(url, headers={"Authorization": f"Bearer {conversation['token']}"}) as response:
            assert response.status == 200, await response.text()
            messages: list[dict[str, Any]] = (await response.json())["messages"]
            return messages


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def model() -> AsyncIterator[Model]:
    async with Model(token_delay=0.02) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_workers(
    tmp_path_factory: pytest.TempPathFactory, model: Model, module_pg_url: str
) -> AsyncIterator[Workers]:
    directory = tmp_path_factory.mktemp("workers")
    await (await SQLStore.open(module_pg_url)).close()  # migrated here, not raced by the workers starting together
    async with aiohttp.ClientSession() as http:
        running = Workers(write_config(directory, model, module_pg_url), directory, http)
        try:
            yield running
        finally:
            await running.stop()


@pytest.fixture
def llm(model: Model) -> Model:
    """The shared fake model, its script, responder and record empty."""
    model.reset()
    return model


@pytest_asyncio.fixture(loop_scope="module")
async def workers(shared_workers: Workers, llm: Model, module_pg_url: str) -> AsyncIterator[Workers]:
    """Two running workers; after the test, every turn it began has ended (none reaches the next test's model)."""
    await asyncio.to_thread(shared_workers.start, 2)
    yield shared_workers
    deadline = time.monotonic() + 30
    while set(await inbox_statuses(module_pg_url)) - {"done", "failed", "ignored"}:
        assert time.monotonic() < deadline, "turns still running 30 s after the test"
        await asyncio.sleep(0.1)


async def inbox_statuses(pg_url: str, conversation: dict[str, Any] | None = None) -> list[str]:
    """The statuses of the inbox rows (of ``conversation``'s only, when given), oldest first."""
    store = await SQLStore.open(pg_url, create=False)
    try:
        every = ("received", "stored", "done", "failed", "ignored")
        items = await store.inbox_pending(statuses=every, limit=1000)
        return [item.status for item in items if conversation is None or item.conversation_id == conversation["id"]]
    finally:
        await store.close()


async def test_messages_split_across_two_workers_reach_the_model_in_arrival_order(
    workers: Workers, llm: Model, module_pg_url: str
) -> None:
    llm.responder = echo
    conversation = await workers.open(0)
    for n in range(1, 11):
        await workers.send(n % 2, conversation, f"message {n}")  # 1 to the second worker, 2 to the first, ...
    await until(lambda: llm.request_count >= 10, 30, "ten model calls")
    seen = [last_user_text(request.body) for request in llm.requests]
    assert seen == [f"message {n}" for n in range(1, 11)]
    # The transcript is in the same order: each message, then its answer.
    expected = [("bot", conversation["greeting"])] if conversation.get("greeting") else []
    for n in range(1, 11):
        expected += [("customer", f"message {n}"), ("bot", f"Answer to message {n}.")]
    for worker in (0, 1):
        deadline = time.monotonic() + 10
        while True:
            texts = [(m["role"], m["text"]) for m in await workers.history(worker, conversation)]
            if len(texts) >= len(expected) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert texts == expected
    assert await inbox_statuses(module_pg_url, conversation) == ["done"] * 10


async def frames_until(ws: aiohttp.ClientWebSocketResponse, done: Callable[[dict[str, Any]], bool]) -> list[Any]:
    """The socket's frames up to and including the first for which ``done`` is true (within 15 s)."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(15):
        while True:
            frame = await ws.receive_json()
            frames.append(frame)
            if done(frame):
                return frames


def shows(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: frame.get("type") == "message" and (frame.get("message") or {}).get("text") == text


async def test_an_operator_reply_entered_on_one_worker_reaches_a_widget_on_another(
    workers: Workers, llm: Model
) -> None:
    conversation = await workers.open(0)
    protocols = ("supportbot.v1", f"token.{conversation['token']}")
    async with workers.http.ws_connect(workers.urls[0].replace("http", "ws") + "/widget/ws", protocols=protocols) as ws:
        await frames_until(ws, lambda frame: frame.get("type") == "history")
        async with workers.http.post(
            f"{workers.urls[1]}/api/v1/admin/conversations/{conversation['id']}/reply",
            json={"text": "Maria here, I'll sort it out."},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Operator": "maria"},
        ) as response:
            assert response.status == 201, await response.text()
        started = time.monotonic()
        frames = await frames_until(ws, shows("Maria here, I'll sort it out."))
        assert frames[-1]["message"]["role"] == "human"
        assert time.monotonic() - started < 3  # a notice over the bus, not a poll


async def test_a_turn_run_by_one_worker_streams_live_to_a_widget_on_another(workers: Workers, llm: Model) -> None:
    llm.script(Reply(text="one two three four five six seven eight"))
    conversation = await workers.open(0)
    protocols = ("supportbot.v1", f"token.{conversation['token']}")
    async with workers.http.ws_connect(workers.urls[0].replace("http", "ws") + "/widget/ws", protocols=protocols) as ws:
        await frames_until(ws, lambda frame: frame.get("type") == "history")
        await workers.send(1, conversation, "count for me")  # the second worker stores it, and runs its turn
        frames = await frames_until(ws, shows("one two three four five six seven eight"))
    kinds = [frame["type"] for frame in frames]
    assert "delta" in kinds, kinds  # streamed live, not only the final message
    deltas = "".join(frame["text"] for frame in frames if frame["type"] == "delta")
    assert deltas == "one two three four five six seven eight"


async def test_a_reply_from_the_command_line_reaches_a_widget_at_once(
    workers: Workers, llm: Model, tmp_path: Path
) -> None:
    llm.script(Reply(text="Let me get a person.", tool_calls=[("handoff_to_human", {"reason": "asked for one"})]))
    conversation = await workers.open(0)
    await workers.send(1, conversation, "a person please")
    store = await SQLStore.open(json.loads(workers.config.read_text())["database"]["url"], create=False)
    try:
        deadline = time.monotonic() + 15
        while not (tickets := await store.list_tickets(conversation_id=conversation["id"])):
            assert time.monotonic() < deadline, "no ticket"
            await asyncio.sleep(0.1)
    finally:
        await store.close()
    protocols = ("supportbot.v1", f"token.{conversation['token']}")
    async with workers.http.ws_connect(workers.urls[1].replace("http", "ws") + "/widget/ws", protocols=protocols) as ws:
        await frames_until(ws, lambda frame: frame.get("type") == "history")
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "supportbot", "tickets", "reply", "-c", str(workers.config),
            str(tickets[0].id), "Olga here: your parcel is on its way.",
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await cli.communicate()
        assert cli.returncode == 0, stderr.decode()
        stored = time.monotonic()
        await frames_until(ws, shows("Olga here: your parcel is on its way."))
        assert time.monotonic() - stored < 1  # woken by the command's notice, not found by the 5 s poll


# Last: it kills a worker, which the next test would wait for to start again.
async def test_a_worker_killed_mid_turn_leaves_the_message_to_another_which_answers_it_once(
    workers: Workers, llm: Model, module_pg_url: str
) -> None:
    llm.script(Hang(3600))  # the first worker's model call never ends: it is killed while it waits
    llm.responder = echo
    conversation = await workers.open(0)
    await workers.send(0, conversation, "where is my order?")
    await until(lambda: llm.request_count >= 1, 10, "the first worker's model call")
    killed_at = time.monotonic()
    workers.kill(0)
    await until(lambda: llm.request_count >= 2, 30, "the second worker taking the message over")
    took_over = time.monotonic() - killed_at
    await asyncio.sleep(1.0)  # time for a wrong second answer to show up
    shown = await workers.history(1, conversation)
    answers = [m for m in shown if m["role"] == "bot" and m["kind"] != "greeting"]
    assert [m["text"] for m in answers] == ["Answer to where is my order?."]
    assert llm.request_count == 2
    assert await inbox_statuses(module_pg_url, conversation) == ["done"]
    assert took_over < 20, f"the takeover took {took_over:.1f} s"
