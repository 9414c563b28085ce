"""The bus between workers: two ``PostgresBus`` instances on one schema, as two workers would be.

Each bus has connections of its own, so A and B behave like two processes. A TCP relay on 127.0.0.1
stands between a bus and PostgreSQL where a test takes the database away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from supportbot.bus import LocalBus, PostgresBus, channel_name, notify_once, open_bus
from supportbot.store.sql import SQLStore

pytestmark = pytest.mark.postgres

FAST: dict[str, Any] = {"reconnect_delays": (0.05, 0.2), "timeout": 3.0}


@pytest.fixture
async def url(pg_url: str) -> str:
    """A migrated schema (the spill table is part of it)."""
    await (await SQLStore.open(pg_url)).close()
    return pg_url


@pytest.fixture
async def buses(url: str) -> AsyncIterator[Callable[..., Any]]:
    """Start buses on demand; all are closed after the test."""
    started: list[PostgresBus] = []

    async def start(bus_url: str = url, **options: Any) -> PostgresBus:
        bus = PostgresBus(bus_url, **{**FAST, **options})
        await bus.start()
        started.append(bus)
        return bus

    yield start
    for bus in started:
        await bus.close()


class Inbox:
    """What a bus's handlers received, and a way to wait for it."""

    def __init__(self, bus: PostgresBus | LocalBus, topic: str = "t") -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        bus.on(topic, self._add)

    def _add(self, data: dict[str, Any]) -> None:
        self.items.append(data)
        self._changed.set()

    async def wait_for(self, count: int, within: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(within):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql", query={}).render_as_string(hide_password=False)


async def test_an_event_reaches_the_other_worker_and_not_the_publisher(buses: Callable[..., Any]) -> None:
    a, b = await buses(worker_id="a"), await buses(worker_id="b")
    at_a, at_b, other_topic = Inbox(a), Inbox(b), Inbox(b, "other")

    await a.publish("t", {"n": 1, "text": "Grüße ✓"})
    await b.publish("t", {"n": 2})

    assert await at_b.wait_for(1) == [{"n": 1, "text": "Grüße ✓"}]
    assert await at_a.wait_for(1) == [{"n": 2}]
    await a.publish("t", {"n": 3})
    await at_b.wait_for(2)
    assert at_a.items == [{"n": 2}] and at_b.items == [{"n": 1, "text": "Grüße ✓"}, {"n": 3}]
    assert other_topic.items == []


async def test_a_thousand_events_arrive_in_order_in_few_notices(buses: Callable[..., Any], url: str) -> None:
    a, b = await buses(), await buses()
    at_b = Inbox(b)
    notices: list[str] = []
    all_seen = asyncio.Event()

    def count(*args: Any) -> None:
        notices.append(args[3])
        if sum(len(json.loads(notice)["e"]) for notice in notices) == 1000:
            all_seen.set()

    counter = await asyncpg.connect(_dsn(url))
    await counter.add_listener(a.channel, count)
    try:
        for n in range(1000):
            await a.publish("t", {"n": n, "conversation_id": f"c{n % 7}"})
        received = await at_b.wait_for(1000)
        async with asyncio.timeout(5):
            await all_seen.wait()
    finally:
        await counter.close()
    assert [item["n"] for item in received] == list(range(1000))
    assert 1 < len(notices) <= 20, "the 1,000 events were not batched"
    assert max(len(notice.encode()) for notice in notices) <= 7000


async def test_a_large_event_goes_through_the_spill_table_in_its_place(buses: Callable[..., Any], url: str) -> None:
    a, b = await buses(), await buses()
    at_b = Inbox(b)
    large = {"text": "x" * 100_000, "emoji": "🙂" * 1000}

    await a.publish("t", {"n": 1})
    await a.publish("t", large)
    await a.publish("t", {"n": 3})

    assert await at_b.wait_for(3) == [{"n": 1}, large, {"n": 3}]
    connection = await asyncpg.connect(_dsn(url), server_settings={"search_path": make_url(url).query["search_path"]})
    try:
        assert await connection.fetchval("SELECT count(*) FROM bus_spill WHERE length(payload) > 100000") == 1
    finally:
        await connection.close()


async def test_another_schema_is_another_deployment(buses: Callable[..., Any], url: str) -> None:
    other = make_url(url).update_query_dict({"search_path": f"t_{uuid.uuid4().hex[:16]}"}).render_as_string(False)
    assert channel_name(other) != channel_name(url)
    assert channel_name(url.replace("127.0.0.1", "localhost")) == channel_name(url)
    a, b = await buses(), await buses()
    c, d = await buses(other), await buses(other)
    at_b, at_c = Inbox(b), Inbox(c)

    await a.publish("t", {"for": "this deployment"})
    await at_b.wait_for(1)
    await d.publish("t", {"for": "the other one"})
    # PostgreSQL delivers notices in commit order: C has seen A's notice, if at all, before D's.
    assert await at_c.wait_for(1) == [{"for": "the other one"}]
    assert at_b.items == [{"for": "this deployment"}]


async def test_a_killed_listener_reconnects_resyncs_and_receives_again(
    buses: Callable[..., Any], url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await buses(worker_id="a"), await buses(worker_id="b")
    at_b = Inbox(b)
    resynced = asyncio.Event()
    b.on_resync(resynced.set)
    await a.publish("t", {"n": 1})
    await at_b.wait_for(1)

    admin = await asyncpg.connect(_dsn(url))
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            "supportbot bus listen b",
        )
        assert killed == 1
        with caplog.at_level(logging.WARNING, logger="supportbot.bus"):
            async with asyncio.timeout(5):
                await resynced.wait()
        await a.publish("t", {"n": 2})
        assert await at_b.wait_for(2) == [{"n": 1}, {"n": 2}]
        # B's sender (killed too) reconnects on its own; A hears B again
        await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            "supportbot bus send b",
        )
    finally:
        await admin.close()
    at_a = Inbox(a)
    await b.publish("t", {"n": 3})
    assert await at_a.wait_for(1) == [{"n": 3}]
    lost = [r for r in caplog.records if "was lost" in r.getMessage()]
    assert len(lost) == 1


async def test_notify_once_reaches_a_listening_bus(buses: Callable[..., Any], url: str, tmp_path: Any) -> None:
    b = await buses()
    at_b = Inbox(b)
    await notify_once(url, "t", {"reply": 7})
    await notify_once(url, "t", {"text": "y" * 20_000})
    assert await at_b.wait_for(2) == [{"reply": 7}, {"text": "y" * 20_000}]
    await notify_once(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", "t", {"reply": 8})  # no-op, no file made
    assert not (tmp_path / "x.db").exists()


async def test_the_local_bus_does_nothing(tmp_path: Any) -> None:
    bus = open_bus(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", worker_id="solo")
    assert isinstance(bus, LocalBus) and bus.worker_id == "solo"
    at_bus = Inbox(bus)
    await bus.start()
    await bus.publish("t", {"n": 1})
    await asyncio.sleep(0)
    await bus.close()
    assert at_bus.items == []


async def test_open_bus_picks_postgres_for_postgres_urls(url: str) -> None:
    bus = open_bus(url)
    assert isinstance(bus, PostgresBus)
    host, pid, _ = bus.worker_id.rsplit(":", 2)
    assert host and int(pid) > 0
    assert open_bus(url).worker_id != bus.worker_id


async def test_a_full_queue_drops_the_oldest_with_a_warning_and_receivers_resync(
    buses: Callable[..., Any], url: str, caplog: pytest.LogCaptureFixture
) -> None:
    b = await buses()
    at_b = Inbox(b)
    a = PostgresBus(url, max_queued=3, **FAST)
    with caplog.at_level(logging.WARNING, logger="supportbot.bus"):
        for n in range(6):
            await a.publish("t", {"n": n})  # not started: nothing is sent yet
    assert sum("dropping the oldest" in r.getMessage() for r in caplog.records) == 1
    resynced = asyncio.Event()
    b.on_resync(resynced.set)
    await a.start()
    try:
        assert [item["n"] for item in await at_b.wait_for(3)] == [3, 4, 5]
        assert not resynced.is_set()
        for n in range(6, 12):
            await a.publish("t", {"n": n})  # no await yields: the sender has no chance, three are dropped
        assert [item["n"] for item in await at_b.wait_for(6)][3:] == [9, 10, 11]
        assert resynced.is_set(), "B was not told that it missed events"
    finally:
        await a.close()


async def test_publish_rejects_what_is_not_json(buses: Callable[..., Any]) -> None:
    a = await buses()
    with pytest.raises(TypeError):
        await a.publish("t", {"when": object()})
    with pytest.raises(TypeError, match="publish a dict"):
        await a.publish("t", [1, 2])


async def test_a_failing_handler_is_logged_and_the_others_still_run(
    buses: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await buses(), await buses()

    def broken(data: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    b.on("t", broken)
    at_b = Inbox(b)
    with caplog.at_level(logging.ERROR, logger="supportbot.bus"):
        await a.publish("t", {"n": 1})
        await a.publish("t", {"n": 2})
        assert await at_b.wait_for(2) == [{"n": 1}, {"n": 2}]
    assert sum("handler of topic 't' failed" in r.getMessage() for r in caplog.records) == 2


async def test_close_leaves_no_task_and_no_connection(url: str) -> None:
    before = asyncio.all_tasks()
    bus = PostgresBus(url, **FAST)
    await bus.start()
    await bus.publish("t", {"n": 1})
    listener, sender = bus._listener, bus._sender
    await bus.close()
    assert asyncio.all_tasks() - before == set()
    assert listener is not None and listener.is_closed() and sender is not None and sender.is_closed()
    await bus.close()  # twice is fine
    await bus.publish("t", {"n": 2})  # after close: dropped, no error


async def test_start_says_which_database_it_could_not_reach() -> None:
    with contextlib.closing(__import__("socket").socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bus = PostgresBus(f"postgresql+asyncpg://bob:secret@127.0.0.1:{port}/app", **FAST)
    from supportbot.errors import StorageError

    with pytest.raises(StorageError, match=rf"127\.0\.0\.1:{port}/app.*check that PostgreSQL is running") as caught:
        await bus.start()
    assert "secret" not in str(caught.value)


# -- the database goes away --------------------------------------------------------------------


class Relay:
    """A TCP relay on 127.0.0.1 to PostgreSQL that can cut every connection and refuse new ones."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers.update((writer, upstream_writer))
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()
            self._writers.discard(sink)


async def test_while_the_database_is_away_publish_drops_and_everything_recovers(
    buses: Callable[..., Any], url: str, caplog: pytest.LogCaptureFixture
) -> None:
    parsed = make_url(url)
    relay = Relay(parsed.port or 5432)
    await relay.open()
    b = await buses(parsed.set(port=relay.port).render_as_string(False), worker_id="b", ping_every=0.2)
    a = await buses(worker_id="a")
    at_a, at_b = Inbox(a), Inbox(b)
    resynced = asyncio.Event()
    b.on_resync(resynced.set)

    with caplog.at_level(logging.WARNING, logger="supportbot.bus"):
        await relay.cut()
        for n in range(50):
            await b.publish("t", {"n": n})  # never raises
        await b.flush()
        await asyncio.sleep(0.5)  # several reconnection attempts fail meanwhile
        assert not resynced.is_set()
        messages = [r.getMessage() for r in caplog.records]
        assert sum("was lost" in m for m in messages) == 1
        assert sum("cannot send events" in m for m in messages) == 1
        assert sum("cannot listen yet" in m for m in messages) == 1

        await relay.open()  # the same port again
        async with asyncio.timeout(5):
            await resynced.wait()
        await a.publish("t", {"n": "after"})
        assert await at_b.wait_for(1) == [{"n": "after"}]
        await b.publish("t", {"n": "back"})
        assert (await at_a.wait_for(1))[-1] == {"n": "back"}
    assert at_a.items == [{"n": "back"}]
    assert any("sending events again" in r.getMessage() for r in caplog.records)
    await b.close()
    await relay.cut()
