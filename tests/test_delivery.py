"""Delivery: replies out of the outbox exactly once, in order, retried, given up visibly; the channel
contract's intake (conversation keys, prepare, operators' replies) and ticket announcements. SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from supportbot import delivery
from supportbot.channels import (
    ChannelBase,
    DeliveryError,
    Identity,
    InboundMessage,
    OperatorReply,
    Reply,
    TurnInfo,
)
from supportbot.config import Config, DatabaseSettings, LLMSettings, RetrySettings
from supportbot.delivery import DeliveryStore, Hub
from supportbot.dispatch import Dispatcher, encode_message
from supportbot.errors import StorageError
from supportbot.events import Event, TurnFinished
from supportbot.runtime import Runtime, open_runtime
from supportbot.store.mailboxes import ChannelState
from supportbot.store.sql import SQLStore
from supportbot.testing.fake_llm import FakeLLMServer
from supportbot.testing.fake_llm import Reply as Say


class Recorder(ChannelBase):
    """A channel that keeps what it was given; ``failures`` are raised by the next deliveries, in order."""

    def __init__(self, name: str = "chat", *, announces_tickets: bool = False) -> None:
        self.name = name
        self.announces_tickets = announces_tickets
        self.delivered: list[Reply] = []
        self.attempts: list[Reply] = []
        self.failures: list[Exception] = []
        self.events: list[tuple[int, Event]] = []
        self.prepared: list[InboundMessage] = []
        self.identity: Identity | None = None
        self.ignore: set[str] = set()
        self.arrived = asyncio.Event()
        self.tried = asyncio.Event()

    async def deliver(self, reply: Reply) -> str:
        self.attempts.append(reply)
        self.tried.set()
        if self.failures:
            raise self.failures.pop(0)
        self.delivered.append(reply)
        self.arrived.set()
        return f"m{reply.outbox_id}"

    def render(self, turn: TurnInfo, event: Event) -> None:
        self.events.append((turn.turn, event))

    async def prepare(self, message: InboundMessage) -> InboundMessage | None:
        self.prepared.append(message)
        if message.text in self.ignore:
            return None
        if self.identity is not None:
            return InboundMessage(channel=message.channel, external_id=message.external_id, text=message.text,
                                  key=message.key, identity=self.identity, address=message.address)  # fmt: skip
        return message

    async def until(self, count: int) -> list[Reply]:
        async with asyncio.timeout(10):
            while len(self.delivered) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.delivered


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def runtime(fake: FakeLLMServer, db_url: str) -> AsyncIterator[Runtime]:
    config = Config(
        llm=LLMSettings(base_url=fake.base_url, api_key="k", retries=RetrySettings(max_retries=0)),
        database=DatabaseSettings(url=db_url),
    )
    opened = await open_runtime(config)
    yield opened
    await opened.aclose()


@pytest.fixture
async def two_workers(fake: FakeLLMServer, pg_url: str) -> AsyncIterator[list[Runtime]]:
    """Two runtimes (two workers) on one PostgreSQL schema, closed after the test."""
    config = Config(
        llm=LLMSettings(base_url=fake.base_url, api_key="k", retries=RetrySettings(max_retries=0)),
        database=DatabaseSettings(url=pg_url),
    )
    runtimes = [await open_runtime(config), await open_runtime(config)]
    try:
        yield runtimes
    finally:
        for r in runtimes:
            await r.aclose()


@pytest.fixture
async def channel() -> Recorder:
    return Recorder()


@pytest.fixture
async def hub(runtime: Runtime, channel: Recorder) -> AsyncIterator[Hub]:
    dispatcher = Dispatcher(runtime.engine, runtime.store)  # type: ignore[arg-type]
    running = Hub(dispatcher, runtime.store, give_up_after_s=60)  # type: ignore[arg-type]
    running.register(channel)
    await running.start()
    yield running
    await dispatcher.drain(5)
    await running.stop()


def store_of(runtime: Runtime) -> DeliveryStore:
    return runtime.store  # type: ignore[return-value]


def hub_of(runtime: Runtime, *, shared: bool = False, **settings: Any) -> Hub:
    """A delivery hub on the runtime's engine and store; ``shared``: as on a database that several workers use."""
    return Hub(Dispatcher(runtime.engine, runtime.store, shared=shared), store_of(runtime), **settings)  # type: ignore[arg-type]


def message(text: str, *, key: str = "T1/C1/1700.1", external_id: str | None = None, **extra: Any) -> InboundMessage:
    identity = Identity(external_id="T1/U1", name="Ana")
    return InboundMessage(channel="chat", external_id=external_id or text, text=text, key=key, identity=identity,
                          address={"thread": key}, **extra)  # fmt: skip


async def test_a_keyed_message_gets_one_conversation_and_one_reply_through_the_outbox(
    hub: Hub, channel: Recorder, fake: FakeLLMServer, runtime: Runtime
) -> None:
    fake.script(Say(text="Hello Ana."), Say(text="Still here."))
    first = await hub.submit(message("hi"))
    assert not first.duplicate
    assert (await hub.submit(message("hi"))).duplicate  # a redelivery is not answered twice
    [reply] = await channel.until(1)
    await hub.submit(message("and again"))
    replies = await channel.until(2)
    assert [r.text for r in replies] == ["Hello Ana.", "Still here."]
    assert replies[0].kind == "answer" and replies[0].turn == first.turn and replies[0].attempt == 1
    assert replies[0].conversation_id == replies[1].conversation_id  # one key, one conversation
    assert replies[0].address == {"thread": "T1/C1/1700.1"} and replies[0].key == "T1/C1/1700.1"
    assert any(isinstance(e, TurnFinished) for _, e in channel.events)  # the channel saw the turn live
    row = await store_of(runtime).outbox_get(reply.outbox_id)
    assert row is not None and row.status == "sent" and row.external_id == f"m{reply.outbox_id}"
    conversation = await runtime.store.get_conversation(reply.conversation_id or "")
    assert conversation is not None and conversation.channel == "chat"
    messages = await runtime.store.list_messages(conversation.id)
    assert [m.kind for m in messages if m.role == "assistant"] == ["normal", "normal"]  # no greeting stored


async def test_a_closed_conversation_is_not_reopened_by_its_key(
    hub: Hub, channel: Recorder, fake: FakeLLMServer, runtime: Runtime
) -> None:
    fake.script(Say(text="One."), Say(text="Two."))
    await hub.submit(message("first"))
    [first] = await channel.until(1)
    await runtime.store.update_conversation(first.conversation_id or "", status="closed")
    await hub.submit(message("second"))
    second = (await channel.until(2))[1]
    assert second.conversation_id != first.conversation_id


async def test_prepare_proves_who_wrote_or_drops_the_message(
    hub: Hub, channel: Recorder, fake: FakeLLMServer, runtime: Runtime
) -> None:
    channel.identity = Identity(external_id="T1/U1", email="ana@example.com", name="Ana Example", verified=True)
    channel.ignore = {"from a bot"}
    fake.script(Say(text="Hi Ana."))
    ignored = await hub.submit(message("from a bot", key="T1/C9/1"))
    await hub.submit(message("hello"))
    [reply] = await channel.until(1)
    conversation = await runtime.store.get_conversation(reply.conversation_id or "")
    assert conversation is not None
    customer = await runtime.store.get_customer(conversation.customer_id)
    assert customer is not None and customer.verified and customer.email == "ana@example.com"
    assert customer.external_id == "chat:T1/U1"
    store = store_of(runtime)
    assert await store.conversation_for_key("chat", "T1/C9/1") is None  # nothing was made for the dropped one
    assert not [i for i in await store.inbox_pending(statuses=("received", "stored")) if i.id == ignored.turn]


async def test_a_rate_limited_reply_is_retried_after_retry_after_and_sent_once_in_order(
    hub: Hub, channel: Recorder, fake: FakeLLMServer, runtime: Runtime
) -> None:
    channel.failures = [DeliveryError("ratelimited", retry_after=0.2), DeliveryError("ratelimited", retry_after=0.2)]
    fake.script(Say(text="First answer."), Say(text="Second answer."))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await hub.submit(message("one"))
    await hub.submit(message("two"))
    replies = await channel.until(2)
    assert loop.time() - started >= 0.4  # it waited as asked, twice
    assert [r.text for r in replies] == ["First answer.", "Second answer."]  # the second waited behind the first
    assert [r.attempt for r in channel.attempts[:3]] == [1, 2, 3]
    row = await store_of(runtime).outbox_get(replies[0].outbox_id)
    assert row is not None and row.status == "sent" and row.attempts == 3
    assert row.last_error is not None and "ratelimited" in row.last_error


async def test_a_reply_the_channel_refuses_is_given_up_and_shown_to_operators(
    hub: Hub, channel: Recorder, fake: FakeLLMServer, runtime: Runtime
) -> None:
    channel.failures = [DeliveryError("channel_not_found", retryable=False)]
    fake.script(Say(text="An answer nobody gets."))
    await hub.submit(message("hello"))
    store = store_of(runtime)
    async with asyncio.timeout(10):
        await channel.tried.wait()
        await hub.workers["chat"].idle()
    [failed] = await store.outbox_failed()
    assert failed.last_error is not None and "channel_not_found" in failed.last_error
    tickets = await runtime.store.list_tickets(conversation_id=failed.conversation_id)
    assert tickets[0].kind == "escalation" and "not delivered" in tickets[0].subject
    assert "An answer nobody gets." in tickets[0].description
    assert channel.delivered == []


async def test_replies_left_pending_by_a_stopped_server_are_sent_at_start_flagged_as_maybe_sent(
    runtime: Runtime, channel: Recorder
) -> None:
    store = store_of(runtime)
    customer = await runtime.store.get_or_create_customer(email="ben@example.com")
    conversation, _ = await runtime.engine.start_conversation(customer, channel="chat")
    unsent = await store.outbox_add("chat", {"kind": "answer", "text": "queued"}, conversation_id=conversation.id)
    maybe = await store.outbox_add("chat", {"kind": "answer", "text": "tried"}, conversation_id=conversation.id)
    await store.outbox_attempt(maybe)  # a crash came between the attempt and its outcome
    hub = hub_of(runtime)
    hub.register(channel)
    await hub.start()
    try:
        replies = await channel.until(2)
    finally:
        await hub.stop()
    assert [(r.outbox_id, r.text, r.attempt) for r in replies] == [(unsent, "queued", 1), (maybe, "tried", 2)]


async def test_a_reply_queued_by_another_process_is_delivered(
    hub: Hub, channel: Recorder, runtime: Runtime, db_url: str
) -> None:
    customer = await runtime.store.get_or_create_customer(email="ana@example.com")
    conversation, _ = await runtime.engine.start_conversation(customer, channel="chat")
    other = await SQLStore.open(db_url)  # as `supportbot tickets reply` does, in its own process
    try:
        from supportbot.operators import Operators

        await Operators(other).reply(actor="maria", text="Maria here.", conversation_id=conversation.id)
    finally:
        await other.close()
    [reply] = await channel.until(1)
    assert reply.kind == "operator" and reply.author == "maria" and reply.text == "Maria here."


async def test_an_operator_reply_from_a_channel_is_taken_once_and_reaches_the_customer_s_channel(
    runtime: Runtime, channel: Recorder, fake: FakeLLMServer
) -> None:
    web = Recorder("web")
    hub = hub_of(runtime)
    hub.register(channel)
    hub.register(web)
    await hub.start()
    try:
        customer = await runtime.store.get_or_create_customer(email="ana@example.com")
        conversation, _ = await runtime.engine.start_conversation(customer, channel="web")
        ticket = await runtime.store.create_ticket(subject="Broken pole", conversation_id=conversation.id,
                                                   customer_id=customer.id, channel="web")  # fmt: skip
        said = OperatorReply(channel="chat", external_id="C7:1.2", actor="Maria (chat)", text="On it.",
                             ticket_id=ticket.id)  # fmt: skip
        assert await hub.operator_reply(said) is True
        assert await hub.operator_reply(said) is False  # a redelivery
        [reply] = await web.until(1)
        assert reply.kind == "operator" and reply.text == "On it." and reply.conversation_id == conversation.id
        assert (await runtime.store.get_conversation(conversation.id)).status == "human"  # type: ignore[union-attr]
        await hub.operator_reply(OperatorReply(channel="chat", external_id="C7:1.3", actor="Maria (chat)",
                                               ticket_id=ticket.id, hand_back=True))  # fmt: skip
        handback = (await web.until(2))[1]
        assert handback.kind == "handback"
        assert (await runtime.store.get_conversation(conversation.id)).status == "bot"  # type: ignore[union-attr]
        assert channel.delivered == []
    finally:
        await hub.stop()


async def test_new_tickets_are_announced_once_to_a_channel_that_asks(runtime: Runtime) -> None:
    old = await runtime.store.create_ticket(subject="Before the channel existed")
    announcer = Recorder("team", announces_tickets=True)
    hub = hub_of(runtime, admin_url="https://support.acme.example/")
    hub.register(announcer)
    assert await hub.announce_new_tickets(announcer) == 0  # the first run starts from now
    customer = await runtime.store.get_or_create_customer(email="ana@example.com", name="Ana", verified=True)
    new = await runtime.store.create_ticket(subject="Tent pole", customer_id=customer.id, channel="web")
    assert await hub.announce_new_tickets(announcer) == 1
    assert await hub.announce_new_tickets(announcer) == 0  # the cursor moved with the queued row
    await hub.start()
    try:
        [reply] = await announcer.until(1)
    finally:
        await hub.stop()
    assert reply.kind == "ticket" and reply.data["ticket_id"] == new.id != old.id
    assert reply.data["customer"] == "Ana" and reply.data["channel"] == "web"
    assert reply.data["url"] == f"https://support.acme.example/admin/tickets/{new.id}"
    found = await hub.delivered("team", f"m{reply.outbox_id}")
    assert found is not None and found.data["ticket_id"] == new.id


async def test_a_ticket_is_announced_only_once_settled_so_a_slower_commit_is_not_passed(runtime: Runtime) -> None:
    store = store_of(runtime)
    announcer = Recorder("team", announces_tickets=True)
    hub = hub_of(runtime, ticket_settle_s=60)
    assert await hub.announce_new_tickets(announcer) == 0
    await runtime.store.create_ticket(subject="Just opened")
    assert await hub.announce_new_tickets(announcer) == 0  # too new: a lower id may still be committing
    assert await store.channel_state("team", "tickets_announced") == "0"  # the cursor did not pass it
    hub.ticket_settle_s = 0
    assert await hub.announce_new_tickets(announcer) == 1


async def test_a_message_redelivered_at_start_is_answered_once(
    runtime: Runtime, channel: Recorder, fake: FakeLLMServer
) -> None:
    # kill -9 right after the acknowledgement: the row waits in the inbox; at start the channel redelivers it.
    fake.script(Say(text="Answered once."))
    store = store_of(runtime)
    left = message("where is my order?")
    await store.inbox_add("chat", left.external_id, encode_message(left))
    dispatcher = Dispatcher(runtime.engine, runtime.store)  # type: ignore[arg-type]
    hub = Hub(dispatcher, store)
    hub.register(channel)
    await hub.start()  # resumes before any channel can bring a message
    try:
        assert hub.resumed == 1
        assert (await hub.submit(left)).duplicate
        assert await dispatcher.resume() in (0, 1)  # finds the turn running (not started twice) or done
        [reply] = await channel.until(1)
        await dispatcher.drain(5)
        await hub.workers["chat"].idle()
    finally:
        await hub.stop()
    assert reply.text == "Answered once." and len(channel.delivered) == 1
    messages = await runtime.store.list_messages(reply.conversation_id or "")
    assert [m.content for m in messages if m.role == "user"] == ["where is my order?"]


async def test_a_turn_that_failed_on_the_database_is_tried_again(
    hub: Hub, channel: Recorder, fake: FakeLLMServer, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("supportbot.dispatch.RETRY_AFTER_S", (0.05, 0.05))
    original = runtime.store.conversation_for_key  # type: ignore[attr-defined]
    calls = 0

    async def flaky(channel_name: str, key: str) -> str | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StorageError("the database is away for a moment")
        return await original(channel_name, key)  # type: ignore[no-any-return]

    monkeypatch.setattr(runtime.store, "conversation_for_key", flaky)
    fake.script(Say(text="Here after all."))
    await hub.submit(message("hello"))
    [reply] = await channel.until(1)
    assert reply.text == "Here after all." and calls == 2


async def test_an_operator_reply_stored_before_a_crash_is_not_stored_again_at_start(
    runtime: Runtime, channel: Recorder
) -> None:
    store = store_of(runtime)
    customer = await runtime.store.get_or_create_customer(email="ana@example.com")
    conversation, _ = await runtime.engine.start_conversation(customer, channel="chat")
    said = OperatorReply(channel="chat", external_id="C7:9.1", actor="Maria (chat)", text="On it.",
                         conversation_id=conversation.id)  # fmt: skip
    # Taken and stored, then killed before the inbox row was marked done.
    await store.inbox_add("chat", said.external_id, {"type": "operator", "actor": said.actor, "text": said.text,
                                                     "ticket_id": None, "conversation_id": conversation.id,
                                                     "hand_back": False})  # fmt: skip
    from supportbot.operators import Operators

    await Operators(store).reply(actor=said.actor, text=said.text, conversation_id=conversation.id)
    hub = hub_of(runtime)
    hub.register(channel)
    await hub.start()
    try:
        [reply] = await channel.until(1)
        await hub.workers["chat"].idle()
    finally:
        await hub.stop()
    assert reply.text == "On it." and len(channel.delivered) == 1
    human = [m for m in await runtime.store.list_messages(conversation.id) if m.kind == "human"]
    assert len(human) == 1
    assert not [i for i in await store.inbox_pending(statuses=("received",)) if i.external_id == "C7:9.1"]


async def test_an_operator_reply_the_database_refused_is_stored_when_the_channel_sends_it_again(
    hub: Hub, channel: Recorder, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = await runtime.store.get_or_create_customer(email="ana@example.com")
    conversation, _ = await runtime.engine.start_conversation(customer, channel="chat")
    said = OperatorReply(channel="chat", external_id="C7:9.2", actor="Maria (chat)", text="Coming.",
                         conversation_id=conversation.id)  # fmt: skip
    real = hub.operators.reply

    async def away(**kwargs: Any) -> Any:
        raise StorageError("the database is away for a moment")

    monkeypatch.setattr(hub.operators, "reply", away)
    with pytest.raises(StorageError):
        await hub.operator_reply(said)  # the channel is told it failed (Slack: a 500) and sends it again
    monkeypatch.setattr(hub.operators, "reply", real)
    assert await hub.operator_reply(said) is True
    assert await hub.operator_reply(said) is False
    [reply] = await channel.until(1)
    assert reply.text == "Coming."


async def test_a_reply_still_failing_after_the_give_up_time_is_given_up(runtime: Runtime, fake: FakeLLMServer) -> None:
    failing = Recorder()
    failing.failures = [DeliveryError("slack is down", retry_after=0.1) for _ in range(50)]
    dispatcher = Dispatcher(runtime.engine, runtime.store)  # type: ignore[arg-type]
    hub = Hub(dispatcher, store_of(runtime), give_up_after_s=1.0)
    hub.register(failing)
    fake.script(Say(text="Nobody hears this."))
    await hub.start()
    try:
        await hub.submit(message("hello"))
        async with asyncio.timeout(20):
            while not await store_of(runtime).outbox_failed():
                failing.tried.clear()
                await failing.tried.wait()
                await hub.workers["chat"].idle()
    finally:
        await dispatcher.drain(5)
        await hub.stop()
    [failed] = await store_of(runtime).outbox_failed()
    waits = [b.attempt for b in failing.attempts]
    assert waits == list(range(1, len(waits) + 1)) and len(waits) >= 2  # tried with backoff, then given up
    assert failed.last_error is not None and "slack is down" in failed.last_error
    assert failing.delivered == []


async def test_a_retry_another_worker_made_good_leaves_nothing_waiting_here(
    runtime: Runtime, channel: Recorder
) -> None:
    from supportbot.delivery import POLL_S, DeliveryWorker

    store = store_of(runtime)
    row = await store.outbox_add("chat", {"kind": "answer", "text": "hi"})
    worker = DeliveryWorker(channel, store, give_up_after_s=600, owner="w1")
    channel.failures.append(DeliveryError("503 from the channel", retryable=True))
    await worker.run_once()
    await asyncio.wait(list(worker._busy.values()))
    assert row in worker._retry_at and worker._next_wait() < POLL_S  # it waits to try again
    assert await store.outbox_mark_sent(row, "sent-by-w2")  # another worker sent it meanwhile
    await worker.run_once()
    assert worker._retry_at == {} and worker._next_wait() == POLL_S  # no 10 ms polling for a row gone


async def test_a_database_error_mid_send_gives_the_row_back(
    runtime: Runtime, channel: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from supportbot.delivery import DeliveryWorker

    store = store_of(runtime)
    row = await store.outbox_add("chat", {"kind": "answer", "text": "hi"})
    worker = DeliveryWorker(channel, store, give_up_after_s=600, owner="w1")

    async def away(outbox_id: int, external_id: str | None = None) -> bool:
        raise StorageError("the database went away after the channel took the reply")

    monkeypatch.setattr(store, "outbox_mark_sent", away)
    await worker.run_once()
    await asyncio.wait(list(worker._busy.values()))
    assert worker.sending == set()  # nothing left for the lease renewal to keep alive
    [pending] = await store.outbox_pending("chat")
    assert pending.id == row and pending.last_error is not None  # its lease given back, with a backoff


@pytest.mark.postgres
async def test_two_workers_starting_at_once_store_an_operator_reply_left_by_a_stopped_server_once(
    two_workers: list[Runtime],
) -> None:
    runtimes = two_workers
    hubs = [hub_of(r, shared=True) for r in runtimes]
    try:
        store = store_of(runtimes[0])
        customer = await runtimes[0].store.get_or_create_customer(email="ana@example.com")
        conversation, _ = await runtimes[0].engine.start_conversation(customer, channel="chat")
        # Taken by a server that stopped before it stored it.
        await store.inbox_add("chat", "C7:9.3", {"type": "operator", "actor": "Maria (chat)", "text": "On it.",
                                                 "ticket_id": None, "conversation_id": conversation.id,
                                                 "hand_back": False})  # fmt: skip
        await asyncio.gather(*(hub.resume() for hub in hubs))
        human = [m for m in await runtimes[0].store.list_messages(conversation.id) if m.kind == "human"]
        assert [m.content for m in human] == ["On it."]
        assert not await store.inbox_pending(statuses=("received",))
    finally:
        for hub in hubs:
            await hub.dispatcher.drain(1)
            await hub.stop()


OPERATOR_REPLY = {"type": "operator", "actor": "Maria (chat)", "text": "On it.", "ticket_id": None, "hand_back": False}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_resume_finds_an_operator_reply_behind_more_than_a_thousand_older_rows(
    fake: FakeLLMServer, db_url: str
) -> None:
    config = Config(
        llm=LLMSettings(base_url=fake.base_url, api_key="k", retries=RetrySettings(max_retries=0)),
        database=DatabaseSettings(url=db_url),
    )
    runtime = await open_runtime(config)
    try:
        store = store_of(runtime)
        customer = await runtime.store.get_or_create_customer(email="ana@example.com")
        conversation, _ = await runtime.engine.start_conversation(customer, channel="chat")
        for i in range(1001):  # rows of no customer's message, left unanswered (e.g. by an outage)
            await store.inbox_add("chat", f"x{i}", {"type": "noise"})
        await store.inbox_add("chat", "C7:9.3", {**OPERATOR_REPLY, "conversation_id": conversation.id})
        hub = hub_of(runtime)
        await hub.resume()
        await hub.dispatcher.drain(1)
        await hub.stop()
        human = [m for m in await runtime.store.list_messages(conversation.id) if m.kind == "human"]
        assert [m.content for m in human] == ["On it."]
    finally:
        await runtime.aclose()


@pytest.mark.postgres
async def test_each_worker_sweeps_for_left_operator_replies_by_itself(
    two_workers: list[Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop as ``serve`` runs it on a shared database, at 0.5 s instead of 10 s.
    monkeypatch.setattr(delivery, "REPLY_SWEEP_S", 0.5)
    runtime = two_workers[0]
    hub = hub_of(runtime, shared=True)
    sweeps: list[tuple[float, int]] = []  # when each sweep began, and how many replies it stored
    apply = hub.apply_left_replies

    async def counted(*, older_than_s: float = 0.0) -> int:
        began = time.monotonic()
        stored = await apply(older_than_s=older_than_s)
        sweeps.append((began, stored))
        return stored

    monkeypatch.setattr(hub, "apply_left_replies", counted)
    await hub.start()
    started = time.monotonic()  # the loop's first sweep comes 0.5 s after this
    try:
        customer = await runtime.store.get_or_create_customer(email="ana@example.com")
        conversation, _ = await runtime.engine.start_conversation(customer, channel="chat")
        await asyncio.sleep(0.25 - (time.monotonic() - started))  # halfway between two sweeps
        # Taken by a worker that died before storing it, after this one had started.
        added = time.monotonic()
        await store_of(runtime).inbox_add("chat", "C7:9.5", {**OPERATOR_REPLY, "conversation_id": conversation.id})
        while not [m for m in await runtime.store.list_messages(conversation.id) if m.kind == "human"]:
            assert time.monotonic() - added < 5, f"no sweep stored the reply: {sweeps}"
            await asyncio.sleep(0.05)
        # The first sweep after it (0.25 s old) left it alone, as its own worker might still be storing it;
        # the next (0.75 s old) took it.
        after = [stored for began, stored in sweeps if began >= added]
        assert after[:2] == [0, 1], sweeps
    finally:
        await hub.stop()


@pytest.mark.postgres
async def test_an_operator_reply_a_dead_worker_took_is_stored_by_another_workers_sweep_once(
    two_workers: list[Runtime],
) -> None:
    runtimes = two_workers
    hubs = [hub_of(r, shared=True) for r in runtimes]
    store = store_of(runtimes[0])
    customer = await runtimes[0].store.get_or_create_customer(email="ana@example.com")
    conversation, _ = await runtimes[0].engine.start_conversation(customer, channel="chat")
    # Taken (acknowledged) by a worker that died before it stored it; the others are running.
    await store.inbox_add("chat", "C7:9.4", {**OPERATOR_REPLY, "conversation_id": conversation.id})
    assert await hubs[0].apply_left_replies(older_than_s=60) == 0  # too fresh: its worker may be storing it
    counts = await asyncio.gather(*(hub.apply_left_replies() for hub in hubs))
    assert sorted(counts) == [0, 1]
    assert await hubs[1].apply_left_replies() == 0
    human = [m for m in await runtimes[0].store.list_messages(conversation.id) if m.kind == "human"]
    assert [m.content for m in human] == ["On it."]


@pytest.mark.postgres
async def test_a_reply_stored_slower_than_its_claim_is_not_stored_again_by_another_worker(
    two_workers: list[Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "APPLY_LEASE_S", 0.3)
    runtimes = two_workers
    slow, other = (hub_of(r, shared=True) for r in runtimes)
    store = store_of(runtimes[0])
    customer = await runtimes[0].store.get_or_create_customer(email="ana@example.com")
    conversation, _ = await runtimes[0].engine.start_conversation(customer, channel="chat")
    await store.inbox_add("chat", "C7:9.5", {**OPERATOR_REPLY, "conversation_id": conversation.id})
    storing = asyncio.Event()
    reply = slow.operators.reply

    async def slow_reply(**kwargs: Any) -> Any:
        storing.set()
        await asyncio.sleep(1.0)  # the database slow: longer than three claims
        return await reply(**kwargs)

    slow.operators.reply = slow_reply  # type: ignore[method-assign]
    first = asyncio.create_task(slow.apply_left_replies())
    await storing.wait()
    await asyncio.sleep(0.6)  # the first claim would have run out twice by now
    assert await other.apply_left_replies() == 0
    assert await first == 1
    human = [m for m in await runtimes[0].store.list_messages(conversation.id) if m.kind == "human"]
    assert [m.content for m in human] == ["On it."]


async def two_announcers(runtimes: list[Runtime]) -> tuple[Hub, Hub, DeliveryStore]:
    """Two workers' hubs, the "team" channel's announcements at the start, and two tickets to announce."""
    store = store_of(runtimes[0])
    await store.set_channel_state(ChannelState(channel="team", key="tickets_announced", value="0"))
    for subject in ("first", "second"):
        await runtimes[0].store.create_ticket(subject=subject)
    slow, fast = (hub_of(r) for r in runtimes)
    return slow, fast, store


@pytest.mark.postgres
async def test_a_slow_round_of_ticket_announcements_stops_at_its_deadline_so_another_worker_announces_each_once(
    two_workers: list[Runtime],
) -> None:
    slow, fast, store = await two_announcers(two_workers)
    stuck, taken_over = asyncio.Event(), asyncio.Event()
    ticket_data = slow._ticket_data

    async def slow_ticket_data(ticket: Any) -> dict[str, Any]:
        stuck.set()
        await taken_over.wait()  # the database slow for longer than the lease
        return await ticket_data(ticket)

    slow._ticket_data = slow_ticket_data  # type: ignore[method-assign]
    # The lease on the announcements is half over 0.05 s from now; the other worker takes them over after it.
    round_ = asyncio.create_task(slow.announce_new_tickets(Recorder("team"), until=time.monotonic() + 0.05))
    await stuck.wait()
    await asyncio.sleep(0.05)  # the lease runs out while the slow round waits for the database
    assert await fast.announce_new_tickets(Recorder("team")) == 2
    taken_over.set()
    assert await round_ == 0  # past its deadline: it queues nothing
    announced = [row.payload["data"]["ticket_id"] for row in await store.outbox_pending("team")]
    assert sorted(announced) == [1, 2]
    assert await fast.announce_new_tickets(Recorder("team"), until=time.monotonic() + 10) == 0


@pytest.mark.postgres
async def test_an_announcement_written_after_another_worker_took_over_is_refused_and_the_cursor_never_goes_back(
    two_workers: list[Runtime],
) -> None:
    slow, fast, store = await two_announcers(two_workers)
    stuck, taken_over = asyncio.Event(), asyncio.Event()
    real_add = store.outbox_add

    async def slow_add(*args: Any, **kwargs: Any) -> int:
        stuck.set()  # past the deadline check, the write waits (a busy pool, a lock) longer than the lease
        await taken_over.wait()
        return await real_add(*args, **kwargs)

    store.outbox_add = slow_add  # type: ignore[method-assign]
    round_ = asyncio.create_task(slow.announce_new_tickets(Recorder("team"), until=time.monotonic() + 0.05))
    await stuck.wait()
    await asyncio.sleep(0.1)
    assert await fast.announce_new_tickets(Recorder("team")) == 2
    taken_over.set()
    assert await round_ == 0  # its write found the cursor moved: refused, nothing queued
    store.outbox_add = real_add  # type: ignore[method-assign]
    assert await store.channel_state("team", "tickets_announced") == "2"
    assert await fast.announce_new_tickets(Recorder("team")) == 0
    announced = [row.payload["data"]["ticket_id"] for row in await store.outbox_pending("team")]
    assert sorted(announced) == [1, 2]


class Reader(Recorder):
    """A channel whose receiver one worker at a time may run (like the IMAP reader); it notes when it ran."""

    def __init__(self) -> None:
        super().__init__("mail")
        self.exclusive_receiver = True
        self.started_at: float | None = None
        self.stopped = asyncio.Event()
        self.stopped_at: float | None = None

    async def start(self, intake: Any) -> None:
        self.started_at = asyncio.get_running_loop().time()

    async def stop(self) -> None:
        self.stopped_at = asyncio.get_running_loop().time()
        self.stopped.set()


@pytest.mark.parametrize("outage", ["errors", "hangs"])
async def test_a_receiver_whose_lease_cannot_be_renewed_stops_before_the_lease_runs_out(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, outage: str
) -> None:
    monkeypatch.setattr("supportbot.delivery.LEAD_LEASE_S", 0.6)
    store = store_of(runtime)
    hub = hub_of(runtime, shared=True)
    reader = Reader()
    taken: list[float] = []
    take = store.take_lease

    async def away_after_the_first(name: str, owner: str, seconds: float) -> bool:
        if taken:  # the database went away after the lease was taken
            if outage == "errors":
                raise StorageError("the database is away")
            await asyncio.Event().wait()
        taken.append(asyncio.get_running_loop().time())
        return await take(name, owner, seconds)

    monkeypatch.setattr(store, "take_lease", away_after_the_first)
    lead = asyncio.create_task(hub._lead(reader))
    try:
        async with asyncio.timeout(5):
            await reader.stopped.wait()
    finally:
        lead.cancel()
        await asyncio.gather(lead, return_exceptions=True)
    assert reader.started_at is not None and reader.stopped_at is not None
    assert reader.stopped_at - taken[0] < 0.6  # stopped before its lease could pass to another worker
