"""Two dispatchers on one PostgreSQL database, as two workers are: arrival order across them, takeover of a
stopped worker's lane when its lease expires, and a worker that lost its lease stopping its turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from supportbot.channels import InboundMessage
from supportbot.config import Config, DatabaseSettings, LLMSettings, RetrySettings
from supportbot.dispatch import Dispatcher, TurnEvent
from supportbot.errors import StorageError
from supportbot.events import TurnFailed
from supportbot.runtime import Runtime, open_runtime
from supportbot.store.sql import SQLStore
from supportbot.testing.fake_llm import FakeLLMServer, Hang
from tests.echo_model import echo, last_user_text, until

pytestmark = pytest.mark.postgres


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def two(fake: FakeLLMServer, pg_url: str) -> AsyncIterator[tuple[Dispatcher, Dispatcher]]:
    config = Config(
        llm=LLMSettings(base_url=fake.base_url, api_key="k", retries=RetrySettings(max_retries=0)),
        database=DatabaseSettings(url=pg_url),
    )
    runtimes: list[Runtime] = [await open_runtime(config), await open_runtime(config)]
    dispatchers = [
        Dispatcher(r.engine, r.store, shared=True, lease_s=0.6, sweep_s=0.1)  # type: ignore[arg-type]
        for r in runtimes
    ]
    for dispatcher in dispatchers:
        await dispatcher.start()
    try:
        yield dispatchers[0], dispatchers[1]
    finally:
        for dispatcher in dispatchers:
            await dispatcher.drain(2)
        for r in runtimes:
            await r.aclose()


async def open_conversation(dispatcher: Dispatcher) -> str:
    store = dispatcher.inbox
    customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
    started, _ = await dispatcher.engine.start_conversation(customer, channel="web")
    return started.id


def message(conversation_id: str, text: str) -> InboundMessage:
    return InboundMessage(channel="web", external_id=text, conversation_id=conversation_id, text=text)


async def answers(dispatcher: Dispatcher, conversation_id: str) -> list[str]:
    stored = await dispatcher.engine.store.list_messages(conversation_id)
    return [m.content or "" for m in stored if m.role == "assistant" and m.kind != "greeting" and m.content]


async def test_messages_submitted_to_two_workers_at_once_run_in_arrival_order(
    two: tuple[Dispatcher, Dispatcher], fake: FakeLLMServer
) -> None:
    fake.responder = echo
    a, b = two
    conversation_id = await open_conversation(a)
    for n in range(30):
        await (a if n % 3 else b).submit(message(conversation_id, f"m{n}"))
    await until(lambda: fake.request_count >= 30, 30, "thirty model calls")
    assert [last_user_text(r.body) for r in fake.requests] == [f"m{n}" for n in range(30)]
    await until(lambda: a.running == 0 and b.running == 0, 10, "both workers going idle")
    assert await answers(a, conversation_id) == [f"Answer to m{n}." for n in range(30)]


async def test_the_lane_of_a_worker_that_died_mid_turn_is_taken_over_when_its_lease_expires(
    two: tuple[Dispatcher, Dispatcher], fake: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two
    fake.script(Hang(30))  # the first worker's model call does not end: it dies while it waits
    fake.responder = echo
    conversation_id = await open_conversation(a)
    await a.submit(message(conversation_id, "hello"))
    await until(lambda: fake.request_count == 1, 5, "the first worker's model call")

    async def dead(name: str, owner: str) -> None:
        del name, owner  # a process killed -9 gives nothing back: its lease stays until it expires

    monkeypatch.setattr(a.inbox, "release_lease", dead)
    await a.drain(0)  # its turn ends without an answer, its database sessions close, its lease stays
    started = time.monotonic()
    await until(lambda: fake.request_count == 2, 10, "the second worker taking the lane over")
    assert time.monotonic() - started < 3  # its 0.6 s lease, then the next 0.1 s sweep
    await until(lambda: b.running == 0, 10, "the second worker finishing the turn")
    assert await answers(b, conversation_id) == ["Answer to hello."]


async def test_a_worker_that_lost_its_lane_stops_the_turn_so_it_never_runs_twice(
    two: tuple[Dispatcher, Dispatcher], fake: FakeLLMServer
) -> None:
    a, b = two
    await b.drain(1)  # one worker only here: the lane is taken by hand below
    fake.script(Hang(30))
    conversation_id = await open_conversation(a)
    subscription = a.subscribe(conversation_id)
    await a.submit(message(conversation_id, "hello"))
    await until(lambda: fake.request_count == 1, 5, "the model call")
    store = a.inbox
    assert isinstance(store, SQLStore)
    await store.release_lease(f"lane:{conversation_id}", a.worker_id)
    assert await store.take_lease(f"lane:{conversation_id}", "another-worker", 30)
    await until(lambda: a.running == 0, 3, "the turn stopping")
    events = []
    while (item := subscription._queue.get_nowait()) is not None:
        events.append(item)
        if subscription._queue.empty():
            break
    failed = [e.event for e in events if isinstance(e, TurnEvent) and isinstance(e.event, TurnFailed)]
    assert failed and failed[-1].reason == "the server stopped"
    [item] = await store.inbox_pending(statuses=("received", "stored"))
    assert item.conversation_id == conversation_id  # still unanswered: the lane's holder answers it


async def test_a_turn_that_failed_rests_its_lane_then_another_sweep_runs_it(
    two: tuple[Dispatcher, Dispatcher], fake: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two
    monkeypatch.setattr("supportbot.dispatch.RETRY_AFTER_S", (0.5, 0.5))
    fake.responder = echo
    conversation_id = await open_conversation(a)
    original = a.engine.store.begin_turn
    calls = 0

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StorageError("the database is away for a moment")
        return await original(*args, **kwargs)

    monkeypatch.setattr(a.engine.store, "begin_turn", flaky)
    monkeypatch.setattr(b.engine.store, "begin_turn", flaky)
    failed_at = time.monotonic()
    await a.submit(message(conversation_id, "hello"))
    await until(lambda: fake.request_count == 1, 10, "the turn being tried again")
    assert time.monotonic() - failed_at >= 0.5  # the lane rested first
    await until(lambda: a.running == 0 and b.running == 0, 10, "the turn finishing")
    assert await answers(a, conversation_id) == ["Answer to hello."]


async def test_the_failures_of_a_turn_add_up_over_the_workers_that_tried_it(
    two: tuple[Dispatcher, Dispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two
    monkeypatch.setattr("supportbot.dispatch.RETRY_AFTER_S", (0.05, 0.05))  # the third failure is the last
    conversation_id = await open_conversation(a)
    lane = f"lane:{conversation_id}"
    tries: list[str] = []
    turn = ["a"]  # the workers take the lane in turns, each after the other's failure

    def worker(name: str, dispatcher: Dispatcher, other: str) -> None:
        store = dispatcher.inbox
        assert isinstance(store, SQLStore)
        take = store.take_lease

        async def take_in_turn(lease: str, owner: str, seconds: float) -> bool:
            if lease == lane and turn[0] != name:
                return False
            return await take(lease, owner, seconds)

        async def failing(*args: Any, **kwargs: Any) -> Any:
            tries.append(name)
            turn[0] = other
            raise StorageError("the disk is full")

        monkeypatch.setattr(store, "take_lease", take_in_turn)
        monkeypatch.setattr(dispatcher.engine.store, "begin_turn", failing)

    worker("a", a, "b")
    worker("b", b, "a")
    store = a.inbox
    assert isinstance(store, SQLStore)
    await a.submit(message(conversation_id, "hello"))
    deadline = time.monotonic() + 10
    while not await store.inbox_pending(statuses=("failed",)):
        assert time.monotonic() < deadline, "the message was not given up on within 10 s"
        await asyncio.sleep(0.02)
    await until(lambda: a.running == 0 and b.running == 0, 10, "both workers going idle")
    assert tries == ["a", "b", "a"]
    [ticket] = await store.list_tickets(conversation_id=conversation_id)
    assert ticket.kind == "escalation" and "failed 3 times" in (ticket.description or "")
