"""The circuit breaker and the concurrency cap (``GuardedLLM``) around the real client, over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from supportbot.config import ResilienceSettings
from supportbot.errors import Busy, LLMCircuitOpen, LLMError, LLMHTTPError
from supportbot.llm.base import Completion
from supportbot.llm.breaker import GuardedLLM, endpoint_label, is_outage
from supportbot.llm.client import OpenAICompatibleLLM
from supportbot.metrics import Metrics
from supportbot.testing import Cut, Fail, FakeLLMServer, Hang, Reply
from tests.llm.conftest import RawServers, ask


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(llm: OpenAICompatibleLLM, clock: Clock | None = None, **settings: Any) -> GuardedLLM:
    values = {"failure_threshold": 3, "open_s": 30.0} | settings
    return GuardedLLM(llm, ResilienceSettings(**values), endpoint="http://127.0.0.1/v1", clock=clock or Clock())


async def call(llm: GuardedLLM, text: str = "hi") -> Completion:
    completions = [e async for e in llm.stream(ask(text)) if isinstance(e, Completion)]
    return completions[-1]


async def fails(llm: GuardedLLM) -> LLMError:
    with pytest.raises(LLMError) as caught:
        await call(llm)
    return caught.value


def no_retries(make_llm: Callable[..., OpenAICompatibleLLM], base_url: str) -> OpenAICompatibleLLM:
    return make_llm(base_url, retries={"max_retries": 0})


# -- the circuit breaker ----------------------------------------------------------------------------


async def test_the_breaker_opens_after_threshold_failures_and_then_sends_nothing(
    fake: FakeLLMServer, make_llm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supportbot.llm.breaker")
    llm = guard(no_retries(make_llm, fake.base_url))
    fake.script(Fail(503), Fail(500), Fail(429))
    for _ in range(3):
        assert isinstance(await fails(llm), LLMHTTPError)
    assert llm.state == "open" and fake.request_count == 3
    for _ in range(5):
        error = await fails(llm)
        assert isinstance(error, LLMCircuitOpen) and "llm.resilience.open_s" in str(error)
    assert fake.request_count == 3  # failed fast: not one request reached the provider
    assert llm.stats().fast_failures == 5
    # The state change is logged once, as a warning, not once per failed call.
    assert [(r.levelname, "circuit breaker open after 3 failed calls" in r.getMessage()) for r in caplog.records] == [
        ("WARNING", True)
    ]


async def test_a_success_in_between_resets_the_count(fake: FakeLLMServer, make_llm: Any) -> None:
    llm = guard(no_retries(make_llm, fake.base_url))
    fake.script(Fail(503), Fail(503), Reply("ok"), Fail(503), Fail(503))
    for expect_ok in (False, False, True, False, False):
        if expect_ok:
            await call(llm)
        else:
            await fails(llm)
    assert llm.state == "closed"


async def test_request_errors_do_not_open_the_breaker(fake: FakeLLMServer, make_llm: Any) -> None:
    llm = guard(no_retries(make_llm, fake.base_url))
    fake.script(*[Fail(400)] * 5)
    for _ in range(5):
        error = await fails(llm)
        assert isinstance(error, LLMHTTPError) and error.status == 400
    assert llm.state == "closed" and fake.request_count == 5


async def test_retries_count_as_one_failed_call(fake: FakeLLMServer, make_llm: Any) -> None:
    llm = guard(make_llm(fake.base_url, retries={"max_retries": 2, "backoff_initial_s": 0.001}))
    fake.script(*[Fail(503)] * 6)
    await fails(llm)
    await fails(llm)
    assert llm.state == "closed" and fake.request_count == 6


async def test_a_cut_stream_counts_as_a_failure(fake: FakeLLMServer, make_llm: Any) -> None:
    llm = guard(no_retries(make_llm, fake.base_url), failure_threshold=1)
    fake.script(Cut(1))
    await fails(llm)
    assert llm.state == "open"


async def test_after_open_s_one_probe_goes_through_failure_reopens_success_closes(
    fake: FakeLLMServer, make_llm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    llm = guard(no_retries(make_llm, fake.base_url), clock, failure_threshold=2, open_s=30)
    fake.script(Fail(503), Fail(503))
    await fails(llm)
    await fails(llm)
    clock.now += 29.9
    assert isinstance(await fails(llm), LLMCircuitOpen) and fake.request_count == 2
    clock.now += 0.1
    assert llm.state == "half_open"
    fake.script(Fail(502))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="supportbot.llm.breaker"):
        error = await fails(llm)  # the probe
    assert isinstance(error, LLMHTTPError) and fake.request_count == 3
    assert llm.state == "open"
    assert [r.getMessage().split(": ", 1)[1].split(";")[0] for r in caplog.records] == [
        "circuit breaker half-open",
        "the probe call failed",
    ]
    assert isinstance(await fails(llm), LLMCircuitOpen) and fake.request_count == 3  # open again for open_s
    clock.now += 30
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="supportbot.llm.breaker"):
        assert (await call(llm)).message.content == "Hello from the fake model. How can I help?"
    assert llm.state == "closed" and fake.request_count == 4
    assert "circuit breaker closed" in caplog.records[-1].getMessage()
    await call(llm)
    await call(llm)
    assert fake.request_count == 6  # recovered: every call goes through again


async def test_while_the_probe_runs_the_other_calls_still_fail_fast(make_llm: Any, raw_server: RawServers) -> None:
    arrived = asyncio.Event()
    answer = asyncio.Event()
    count = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        if count <= 1:
            return web.json_response({"error": {"message": "down"}}, status=503)
        arrived.set()
        await answer.wait()
        return await sse(request, "back")

    clock = Clock()
    llm = guard(no_retries(make_llm, await raw_server.start(handler)), clock, failure_threshold=1)
    await fails(llm)
    clock.now += 30
    probe = asyncio.create_task(call(llm))
    await arrived.wait()
    assert llm.state == "half_open"
    assert isinstance(await fails(llm), LLMCircuitOpen)
    answer.set()
    assert (await probe).message.content == "back"
    assert llm.state == "closed" and count == 2


def test_what_counts_as_an_outage() -> None:
    assert is_outage(LLMHTTPError("x", status=500)) and is_outage(LLMHTTPError("x", status=429))
    assert not is_outage(LLMHTTPError("x", status=401)) and not is_outage(LLMHTTPError("x", status=400))


def test_the_endpoint_label_has_no_credentials() -> None:
    assert endpoint_label("https://user:secret@api.example.com:8443/v1/?key=abc") == "https://api.example.com:8443/v1"


# -- the concurrency cap ----------------------------------------------------------------------------


async def sse(request: web.Request, text: str) -> web.StreamResponse:
    """A minimal OpenAI-style stream answering ``text``."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "raw"}
    for delta, finish in (({"role": "assistant", "content": text}, None), ({}, "stop")):
        chunk = head | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


class Gate:
    """A provider that holds each request until the test lets it go, and records what it saw."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.running = 0
        self.most = 0
        self.released = 0
        self.changed = asyncio.Condition()

    async def handler(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = body["messages"][-1]["content"]
        async with self.changed:
            self.order.append(text)
            place = len(self.order)
            self.running += 1
            self.most = max(self.most, self.running)
            self.changed.notify_all()
            await self.changed.wait_for(lambda: self.released >= place)  # let go in arrival order
            self.running -= 1
        return await sse(request, text)

    async def until(self, arrived: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.order) >= arrived)

    async def release(self, count: int = 1) -> None:
        async with self.changed:
            self.released += count
            self.changed.notify_all()


async def test_at_most_max_concurrent_calls_run_and_the_rest_wait_in_arrival_order(
    make_llm: Any, raw_server: RawServers
) -> None:
    gate = Gate()
    llm = guard(make_llm(await raw_server.start(gate.handler)), max_concurrent_calls=2, max_queued_calls=10)
    texts = [f"m{i}" for i in range(8)]
    tasks = []
    for text in texts:
        tasks.append(asyncio.create_task(call(llm, text)))
        await asyncio.sleep(0)  # let each call queue before the next starts: arrival order is defined
    await gate.until(2)
    stats = llm.stats()
    assert (stats.in_flight, stats.queued) == (2, 6)
    for arrived in range(3, 9):
        await gate.release()
        await gate.until(arrived)
    await gate.release(8)
    replies = await asyncio.gather(*tasks)
    assert [r.message.content for r in replies] == texts
    assert gate.order == texts  # first come, first served
    assert gate.most == 2
    assert (llm.stats().in_flight, llm.stats().queued) == (0, 0)


async def test_a_full_queue_refuses_new_messages_with_busy(make_llm: Any, raw_server: RawServers) -> None:
    gate = Gate()
    llm = guard(make_llm(await raw_server.start(gate.handler)), max_concurrent_calls=1, max_queued_calls=2,
                busy_retry_after_s=7)  # fmt: skip
    llm.check_capacity()
    tasks = [asyncio.create_task(call(llm, f"m{i}")) for i in range(3)]
    await gate.until(1)
    assert llm.stats().queued == 2  # the others queued as soon as they started
    with pytest.raises(Busy) as caught:
        llm.check_capacity()
    assert caught.value.retry_after == 7 and "llm.resilience.max_queued_calls" in str(caught.value)
    assert llm.stats().busy_refusals == 1
    await gate.release(3)
    await asyncio.gather(*tasks)
    llm.check_capacity()  # room again


async def test_a_waiting_call_that_is_cancelled_gives_up_its_place(make_llm: Any, raw_server: RawServers) -> None:
    gate = Gate()
    llm = guard(make_llm(await raw_server.start(gate.handler)), max_concurrent_calls=1)
    first = asyncio.create_task(call(llm, "first"))
    await gate.until(1)
    waiting = asyncio.create_task(call(llm, "cancelled"))
    third = asyncio.create_task(call(llm, "third"))
    await asyncio.sleep(0)  # one loop round: both start and queue at once
    assert llm.stats().queued == 2
    waiting.cancel()
    await gate.release(3)
    assert (await first).message.content == "first" and (await third).message.content == "third"
    assert gate.order == ["first", "third"]
    assert (llm.stats().in_flight, llm.stats().queued) == (0, 0)


async def test_a_hung_call_holds_its_slot_until_it_times_out(fake: FakeLLMServer, make_llm: Any) -> None:
    llm = guard(
        make_llm(fake.base_url, retries={"max_retries": 0}, timeouts={"first_byte_s": 0.2}), max_concurrent_calls=1
    )
    fake.script(Hang(5), Reply("after"))
    results = await asyncio.gather(call(llm, "a"), call(llm, "b"), return_exceptions=True)
    assert isinstance(results[0], LLMError) and isinstance(results[1], Completion)
    assert results[1].message.content == "after"


# -- metrics ----------------------------------------------------------------------------------------


async def test_metrics_show_the_breaker_state_queue_and_refusals(fake: FakeLLMServer, make_llm: Any) -> None:
    clock = Clock()
    llm = guard(no_retries(make_llm, fake.base_url), clock, failure_threshold=1)
    metrics = Metrics()
    metrics.watch_model(llm.stats)

    def value(line_start: str) -> float:
        lines = [line for line in metrics.render().decode().splitlines() if line.startswith(line_start)]
        assert len(lines) == 1, lines
        return float(lines[0].rsplit(" ", 1)[1])

    state = 'supportbot_llm_circuit_state{endpoint="http://127.0.0.1/v1"}'
    assert value(state) == 0
    fake.script(Fail(500))
    await fails(llm)
    await fails(llm)
    assert value(state) == 1
    assert value('supportbot_llm_fast_failures_total{endpoint="http://127.0.0.1/v1"}') == 1
    clock.now += 30
    assert value(state) == 2
    assert value("supportbot_llm_calls_in_flight ") == 0 and value("supportbot_llm_calls_queued ") == 0
    assert value("supportbot_busy_refusals_total ") == 0
