"""The live ticket list is pushed (server-sent events): a new ticket reaches an open list at once, from this
worker or from another worker on the same PostgreSQL database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from supportbot._json import loads
from supportbot.admin import OPERATORS
from supportbot.admin.live import GATHER_S, HEARTBEAT_S, NewTickets
from supportbot.runtime import open_runtime
from supportbot.server import DISPATCHER, build_app
from supportbot.testing.fake_llm import FakeLLMServer
from tests.admin.conftest import sign_in
from tests.connectors.web.conftest import WebServer, write_config


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` of a server-sent event stream; comments as ``("", comment)``."""
    event, data = "", ""
    while line := (await response.content.readline()).decode():
        line = line.rstrip("\n")
        if line.startswith(":"):
            yield "", line[1:].strip()
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and event:
            yield event, data
            event, data = "", ""


async def _new_ticket(site: WebServer, subject: str) -> int:
    store = site.runtime.store
    customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
    conversation = await store.create_conversation(customer_id=customer.id, channel="web", flow="general")
    return (await store.create_ticket(subject=subject, conversation_id=conversation.id, customer_id=customer.id)).id


async def _pushed_within(response: aiohttp.ClientResponse, ticket_id: int, seconds: float) -> float:
    """Seconds until ``ticket_id`` arrives on the stream; fails after ``seconds``."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        async for event, data in _events(response):
            if event == "tickets" and ticket_id in [t["id"] for t in loads(data)["tickets"]]:
                return time.monotonic() - started
    raise AssertionError("the stream ended")


async def _opened(jar: aiohttp.ClientSession, site: WebServer, after: int) -> aiohttp.ClientResponse:
    """An open stream of the tickets above ``after``, past its first read (so what comes next is pushed)."""
    response = await jar.get(f"{site.url}/admin/tickets/stream?after={after}")
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
    first = await anext(_events(response))
    assert first == ("", "waiting for new tickets")
    return response


async def test_a_new_ticket_is_pushed_to_an_open_list_at_once(server: WebServer, browserish: Any) -> None:
    before = await _new_ticket(server, "before the list was opened")
    await sign_in(server, browserish)
    response = await _opened(browserish, server, before)
    try:
        ticket_id = await _new_ticket(server, "opened while the list is open")
        # Far below the heartbeat, when the list would read anyway: the ticket was pushed.
        assert await _pushed_within(response, ticket_id, HEARTBEAT_S / 3) < 1.0
    finally:
        response.close()


async def test_a_burst_of_tickets_wakes_a_list_once() -> None:
    new = NewTickets()
    seen = new.count
    waiter = asyncio.create_task(new.wait(seen))
    await asyncio.sleep(0)
    started = time.monotonic()
    for ticket_id in range(50):
        new.opened(ticket_id)
    await waiter
    # One read for the burst, after it gathered: not fifty.
    assert GATHER_S <= time.monotonic() - started < HEARTBEAT_S and new.count == seen + 50
    closing = asyncio.create_task(new.wait(new.count))
    await asyncio.sleep(0)
    new.close()
    async with asyncio.timeout(GATHER_S / 2):
        await closing


async def test_a_burst_of_more_tickets_than_a_page_reaches_the_list_whole(server: WebServer, browserish: Any) -> None:
    await sign_in(server, browserish)
    response = await _opened(browserish, server, 0)
    try:
        opened = set(await asyncio.gather(*(_new_ticket(server, f"outage {n}") for n in range(55))))
        pushed: set[int] = set()
        async with asyncio.timeout(10):
            async for event, data in _events(response):
                if event == "tickets":
                    pushed |= {t["id"] for t in loads(data)["tickets"]}
                    if pushed >= opened:
                        break
        assert pushed == opened
    finally:
        response.close()


async def test_the_stream_needs_a_session_and_ends_when_it_does(server: WebServer, browserish: Any) -> None:
    async with server.http.get(f"{server.url}/admin/tickets/stream?after=0") as refused:
        assert refused.status == 401
    await sign_in(server, browserish)
    async with browserish.get(f"{server.url}/admin/tickets/stream?after=0&per_page=nope") as bad:
        assert bad.status == 400
    response = await _opened(browserish, server, 0)
    try:
        await server.app[OPERATORS].store.purge_admin_sessions(now=datetime(9999, 1, 1, tzinfo=UTC))  # all of them
        await _new_ticket(server, "wakes the list, whose session has ended")
        async with asyncio.timeout(5):
            events = [event async for event, _ in _events(response) if event]
        assert events == ["signed-out"]
    finally:
        response.close()


@contextlib.asynccontextmanager
async def _worker(folder: Path, fake: FakeLLMServer, db_url: str, settings: dict[str, Any]) -> AsyncIterator[WebServer]:
    runtime = await open_runtime(write_config(folder, fake, db_url, settings))
    app = build_app(runtime)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    async with aiohttp.ClientSession() as http:
        try:
            yield WebServer(url=f"http://127.0.0.1:{runner.addresses[0][1]}", app=app, runtime=runtime, fake=fake,
                            http=http)  # fmt: skip
        finally:
            await app[DISPATCHER].drain(5)
            await runner.cleanup()
            await runtime.aclose()


@pytest.mark.postgres
async def test_a_ticket_opened_on_another_worker_is_pushed_over_the_bus(
    tmp_path_factory: pytest.TempPathFactory,
    fake: FakeLLMServer,
    settings: dict[str, Any],
    pg_url: str,
    browserish: Any,
) -> None:
    async with (
        _worker(tmp_path_factory.mktemp("worker-a"), fake, pg_url, settings) as a,
        _worker(tmp_path_factory.mktemp("worker-b"), fake, pg_url, settings) as b,
    ):
        await sign_in(a, browserish)
        response = await _opened(browserish, a, 0)
        try:
            ticket_id = await _new_ticket(b, "opened on worker B")
            assert await _pushed_within(response, ticket_id, HEARTBEAT_S / 3) < 2.0
        finally:
            response.close()
