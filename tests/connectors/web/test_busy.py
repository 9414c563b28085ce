"""A worker whose model calls are all taken and whose queue is full refuses new messages unstored (429)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from supportbot.config import ResilienceSettings
from supportbot.testing.fake_llm import Hang
from tests.connectors.web.conftest import WebServer
from tests.connectors.web.test_api import auth, stored_rows
from tests.connectors.web.test_ws import protocols, receive_until


async def until(check: Callable[[], bool]) -> None:
    """Wait (up to 10 s) for a condition of the model guard, which announces no events of its own."""
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def fill(server: WebServer) -> None:
    """One call hangs at the model, one waits for its slot: the queue is full."""
    guard = server.runtime.guard
    assert guard is not None
    guard.settings = ResilienceSettings(max_concurrent_calls=1, max_queued_calls=1, busy_retry_after_s=9)
    server.fake.script(Hang(30), Hang(30))
    for _ in range(2):
        opened = await server.open()
        async with server.http.post(
            f"{server.url}/api/v1/conversations/{opened['id']}/messages", json={"text": "hello"}, headers=auth(opened)
        ) as response:
            assert response.status == 200
            await response.content.readany()  # the stream has started: the message is stored
    await server.fake.wait_for_requests(1)
    await until(lambda: guard.stats().queued == 1)  # the second turn reaches the model's queue


async def test_a_full_queue_gets_429_with_retry_after_and_nothing_is_stored(server: WebServer) -> None:
    await fill(server)
    opened = await server.open()
    before = await stored_rows(server)
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages?stream=false", json={"text": "me too"},
        headers=auth(opened),
    ) as response:  # fmt: skip
        assert response.status == 429
        assert response.headers["Retry-After"] == "9"
        error = (await response.json())["error"]
    assert error["code"] == "busy" and "llm.resilience.max_queued_calls" in error["message"]
    assert await stored_rows(server) == before
    assert server.fake.request_count == 1
    metrics = await (await server.http.get(f"{server.url}/metrics")).text()
    assert "supportbot_busy_refusals_total 1.0" in metrics
    assert "supportbot_llm_calls_queued 1.0" in metrics and "supportbot_llm_calls_in_flight 1.0" in metrics
    await server.fake.close()  # the hanging calls end; the queue empties and messages are taken again
    guard = server.runtime.guard
    assert guard is not None
    await until(lambda: guard.stats().in_flight == 0)
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages", json={"text": "me too"}, headers=auth(opened)
    ) as response:
        assert response.status == 200


async def test_a_full_queue_gets_a_busy_frame_on_the_websocket(server: WebServer) -> None:
    await fill(server)
    opened = await server.open()
    before = await stored_rows(server)
    async with server.http.ws_connect(server.ws_url, protocols=protocols(opened["token"])) as ws:
        await receive_until(ws, "history")
        await ws.send_json({"type": "message", "text": "me too", "client_message_id": "m1"})
        frames: list[dict[str, Any]] = await receive_until(ws, "error")
    error = frames[-1]
    assert error["code"] == "busy" and error["retryable"] and error["retry_after"] == 9
    assert error["client_message_id"] == "m1"
    assert await stored_rows(server) == before
    await server.fake.close()
