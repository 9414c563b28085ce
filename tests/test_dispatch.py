"""The dispatcher: durable intake, arrival order, fan-out, and turns that survive a stop (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from supportbot.channels import InboundMessage
from supportbot.config import Config, DatabaseSettings, LLMSettings, LoggingSettings, RetrySettings
from supportbot.dispatch import (
    CustomerMessage,
    Dispatcher,
    TurnEvent,
    Unavailable,
    check_size,
    data_url_bytes,
    lane_of,
)
from supportbot.errors import MessageTooLarge
from supportbot.events import TextDelta, TurnFailed, TurnFinished, TurnStarted
from supportbot.logs import configure_logging
from supportbot.messages import ImagePart
from supportbot.metrics import Metrics
from supportbot.runtime import Runtime, open_runtime
from supportbot.store.sql import SQLStore
from supportbot.testing.fake_llm import Fail, FakeLLMServer, Hang, Reply
from tests.echo_model import until


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


def config(fake: FakeLLMServer, db_url: str) -> Config:
    return Config(
        llm=LLMSettings(base_url=fake.base_url, api_key="k", retries=RetrySettings(max_retries=0)),
        database=DatabaseSettings(url=db_url),
    )


@pytest.fixture
async def runtime(fake: FakeLLMServer, db_url: str) -> AsyncIterator[Runtime]:
    opened = await open_runtime(config(fake, db_url))
    yield opened
    await opened.aclose()


@pytest.fixture
async def dispatcher(runtime: Runtime) -> AsyncIterator[Dispatcher]:
    running = Dispatcher(runtime.engine, runtime.store, metrics=Metrics())  # type: ignore[arg-type]
    yield running
    await running.drain(5)  # before the runtime closes: no turn may outlive its store


async def conversation(runtime: Runtime) -> str:
    customer = await runtime.store.get_or_create_customer(email="ana@example.com", verified=True)
    started, _ = await runtime.engine.start_conversation(customer, channel="web")
    return started.id


def inbound(conversation_id: str, text: str, external_id: str | None = None) -> InboundMessage:
    return InboundMessage(channel="web", external_id=external_id or text, conversation_id=conversation_id, text=text)


async def until_finished(subscription: object, count: int = 1) -> list[object]:
    items: list[object] = []
    finished = 0
    async with asyncio.timeout(10):
        async for item in subscription:  # type: ignore[attr-defined]
            items.append(item)
            if isinstance(item, TurnEvent) and isinstance(item.event, TurnFinished | TurnFailed):
                finished += 1
                if finished == count:
                    return items
    return items


async def test_a_message_is_stored_before_submit_returns_and_answered_once(
    runtime: Runtime, dispatcher: Dispatcher, fake: FakeLLMServer
) -> None:
    fake.script(Reply(text="Hello!"))
    store: SQLStore = runtime.store  # type: ignore[assignment]
    cid = await conversation(runtime)
    subscription = dispatcher.subscribe(cid)
    accepted = await dispatcher.submit(inbound(cid, "hi"))
    assert not accepted.duplicate
    assert [item.external_id for item in await store.inbox_pending("web", statuses=("received", "stored", "done"))] == [
        "hi"
    ]
    again = await dispatcher.submit(inbound(cid, "hi"))  # the channel redelivered it
    assert again.duplicate
    items = await until_finished(subscription)
    assert isinstance(items[0], CustomerMessage)
    events = [item.event for item in items if isinstance(item, TurnEvent)]
    assert isinstance(events[0], TurnStarted)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello!"
    assert await dispatcher.drain(5) == 0  # lets the turn mark its inbox row done
    assert await store.inbox_pending("web", statuses=("received", "stored")) == []
    assert fake.request_count == 1


async def test_the_engine_marks_the_inbox_row_stored_with_the_message(
    runtime: Runtime, dispatcher: Dispatcher, fake: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.script(Hang(30))
    store: SQLStore = runtime.store  # type: ignore[assignment]
    cid = await conversation(runtime)
    calls: list[tuple[int, str]] = []
    original = store.inbox_set_status

    async def spy(inbox_id: int, status: str, **kwargs: str | None) -> None:
        calls.append((inbox_id, status))
        await original(inbox_id, status, **kwargs)

    monkeypatch.setattr(store, "inbox_set_status", spy)
    accepted = await dispatcher.submit(inbound(cid, "where is my order?"))
    await fake.wait_for_requests(1)  # the engine stored the message, then asked the model
    (item,) = await store.inbox_pending("web", statuses=("received", "stored", "done"))
    assert (item.id, item.status) == (accepted.turn, "stored")
    assert [m.content for m in await store.list_messages(cid) if m.role == "user"] == ["where is my order?"]
    assert calls == []  # no write of its own on the way to the first token
    assert await dispatcher.drain(0.05) == 1  # stopped mid-reply: the row stays "stored" for resume
    (item,) = await store.inbox_pending("web", statuses=("received", "stored", "done"))
    assert item.status == "stored" and calls == []


async def test_turns_of_one_conversation_run_in_arrival_order(
    runtime: Runtime, dispatcher: Dispatcher, fake: FakeLLMServer
) -> None:
    fake.token_delay = 0.01
    fake.script(Reply(text="first reply"), Reply(text="second reply"), Reply(text="third reply"))
    cid = await conversation(runtime)
    subscription = dispatcher.subscribe(cid)
    for text in ("one", "two", "three"):
        await dispatcher.submit(inbound(cid, text))
    items = await until_finished(subscription, 3)
    finished = [i.event.text for i in items if isinstance(i, TurnEvent) and isinstance(i.event, TurnFinished)]
    assert finished == ["first reply", "second reply", "third reply"]
    messages = await runtime.store.list_messages(cid)
    assert [m.content for m in messages if m.role != "tool"][1:] == [
        "one", "first reply", "two", "second reply", "three", "third reply",
    ]  # fmt: skip


async def test_the_live_turn_holds_the_reply_so_far(
    runtime: Runtime, dispatcher: Dispatcher, fake: FakeLLMServer
) -> None:
    fake.token_delay = 0.02
    fake.script(Reply(text="alpha beta gamma delta epsilon"))
    cid = await conversation(runtime)
    subscription = dispatcher.subscribe(cid)
    await dispatcher.submit(inbound(cid, "hi"))
    async with asyncio.timeout(10):
        async for item in subscription:
            if isinstance(item, TurnEvent) and isinstance(item.event, TextDelta) and item.event.seq == 1:
                break
    live = dispatcher.live(cid)
    assert live is not None and live.seq == 1 and "alpha beta gamma delta epsilon".startswith(live.text)
    await until_finished(subscription)
    assert dispatcher.live(cid) is None


async def test_a_stop_hands_running_turns_back_and_the_next_start_finishes_them(
    fake: FakeLLMServer, db_url: str
) -> None:
    fake.script(Hang(30))
    first = await open_runtime(config(fake, db_url))
    try:
        dispatcher = Dispatcher(first.engine, first.store, metrics=Metrics())  # type: ignore[arg-type]
        cid = await conversation(first)
        subscription = dispatcher.subscribe(cid)
        await dispatcher.submit(inbound(cid, "where is my order?"))
        await fake.wait_for_requests(1)
        assert await dispatcher.drain(0.05) == 1
        with pytest.raises(Unavailable):
            await dispatcher.submit(inbound(cid, "later"))
        subscription.close()
    finally:
        await first.aclose()
    fake.script(Reply(text="It ships today."))
    second = await open_runtime(config(fake, db_url))
    try:
        dispatcher = Dispatcher(second.engine, second.store)  # type: ignore[arg-type]
        subscription = dispatcher.subscribe(cid)
        assert await dispatcher.resume() == 1
        items = await until_finished(subscription)
        finished = [i.event for i in items if isinstance(i, TurnEvent) and isinstance(i.event, TurnFinished)]
        assert finished[0].text == "It ships today."
        messages = await second.store.list_messages(cid)
        assert [m.content for m in messages if m.role == "user"] == ["where is my order?"]  # stored once
        assert messages[-1].content == "It ships today."
    finally:
        await dispatcher.drain(5)
        await second.aclose()


async def test_a_message_not_yet_taken_by_the_engine_is_run_at_the_next_start(
    runtime: Runtime, dispatcher: Dispatcher, fake: FakeLLMServer
) -> None:
    fake.script(Reply(text="Answered after the restart."))
    store: SQLStore = runtime.store  # type: ignore[assignment]
    cid = await conversation(runtime)
    # What a server that stopped right after acknowledging a message leaves behind:
    await store.inbox_add("web", f"{cid}:m1", {"text": "hello?", "images": []}, conversation_id=cid)
    subscription = dispatcher.subscribe(cid)
    assert await dispatcher.resume() == 1
    items = await until_finished(subscription)
    assert any(isinstance(i, TurnEvent) and isinstance(i.event, TurnFinished) for i in items)
    messages = await store.list_messages(cid)
    assert [(m.role, m.content) for m in messages[1:]] == [
        ("user", "hello?"),
        ("assistant", "Answered after the restart."),
    ]


async def test_each_turn_is_logged_with_its_outcome_and_cost_but_not_its_text(
    runtime: Runtime, dispatcher: Dispatcher, fake: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script(Reply(text="Hello!", usage=(100, 10)))
    cid = await conversation(runtime)
    subscription = dispatcher.subscribe(cid)
    with caplog.at_level("INFO", logger="supportbot.dispatch"):
        await dispatcher.submit(inbound(cid, "my card is 4111 1111 1111 1111"))
        await until_finished(subscription)
    record = next(r for r in caplog.records if getattr(r, "outcome", None) == "finished")
    assert record.conversation_id == cid  # type: ignore[attr-defined]
    assert record.output_tokens == 10  # type: ignore[attr-defined]
    assert record.cost_usd > 0  # type: ignore[attr-defined]
    assert "4111" not in caplog.text


@pytest.fixture
def json_log() -> io.StringIO:
    """The ``supportbot`` loggers write JSON lines, personal data redacted, to the returned buffer."""
    out = io.StringIO()
    configure_logging(LoggingSettings(format="json"), stream=out)
    return out  # the logger is put back as it was by conftest's autouse fixture


def turn_lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [entry for line in out.getvalue().splitlines() if (entry := json.loads(line)).get("event") == "turn"]


async def test_a_turn_with_a_transfer_and_a_failing_tool_is_one_json_line(
    runtime: Runtime, dispatcher: Dispatcher, fake: FakeLLMServer, json_log: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    async def refused(order_id: str) -> None:
        raise RuntimeError(f"the order system refused {order_id} for ana@example.com")

    monkeypatch.setattr(runtime.engine.orders, "get", refused)
    fake.script(
        Reply(tool_calls=[("transfer_to_order_status", {"reason": "asks about an order"})], usage=(100, 10)),
        Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})], usage=(120, 12)),
        Reply(text="Sorry, I can't see your order right now.", usage=(150, 15)),
    )
    cid = await conversation(runtime)
    subscription = dispatcher.subscribe(cid)
    await dispatcher.submit(inbound(cid, "where is A1001? write to ana@example.com"))
    await until_finished(subscription)

    (line,) = turn_lines(json_log)
    tools = line.pop("tools")
    assert [(t["name"], t["ok"]) for t in tools] == [("transfer_to_order_status", True), ("lookup_order", False)]
    assert tools[1]["error"] == "tool failed: RuntimeError: the order system refused A1001 for [email]"
    assert all(t["duration_ms"] >= 0 for t in tools)
    assert line["first_token_ms"] > 0 and line["duration_ms"] >= line["first_token_ms"]
    assert line["cost_usd"] > 0
    assert {k: line[k] for k in ("conversation_id", "channel", "flow", "transfers", "handoff", "outcome")} == {
        "conversation_id": cid, "channel": "web", "flow": "general", "transfers": ["order_status"],
        "handoff": None, "outcome": "finished",
    }  # fmt: skip
    assert (line["input_tokens"], line["output_tokens"], line["ticket_id"], line["reason"]) == (370, 37, None, None)
    assert line["level"] == "INFO" and isinstance(line["turn"], int)
    assert "ana@example.com" not in json_log.getvalue()
    assert "where is" not in json_log.getvalue() and "Sorry" not in json_log.getvalue()  # no conversation text


async def test_a_failed_turn_line_has_the_reason_and_the_ticket(
    runtime: Runtime, dispatcher: Dispatcher, fake: FakeLLMServer, json_log: io.StringIO
) -> None:
    fake.script(Fail(500))
    cid = await conversation(runtime)
    subscription = dispatcher.subscribe(cid)
    await dispatcher.submit(inbound(cid, "hi"))
    items = await until_finished(subscription)
    (failed,) = [i.event for i in items if isinstance(i, TurnEvent) and isinstance(i.event, TurnFailed)]
    (line,) = turn_lines(json_log)
    assert line["outcome"] == "failed" and line["level"] == "WARNING" and line["flow"] == "general"
    assert line["ticket_id"] == failed.ticket_id is not None and "500" in line["reason"]
    assert line["input_tokens"] is None and line["cost_usd"] is None and line["tools"] == []


async def test_a_storage_failure_mid_turn_still_tells_the_client_and_is_one_failed_line(
    runtime: Runtime, dispatcher: Dispatcher, fake: FakeLLMServer, json_log: io.StringIO
) -> None:
    fake.script(Reply(text="never stored"))
    cid = await conversation(runtime)
    subscription = dispatcher.subscribe(cid)
    original = runtime.store.add_messages

    async def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("disk full")

    runtime.store.add_messages = broken  # type: ignore[method-assign]
    try:
        await dispatcher.submit(inbound(cid, "hi"))
        items = await until_finished(subscription)
    finally:
        runtime.store.add_messages = original  # type: ignore[method-assign]
    failed = [i.event for i in items if isinstance(i, TurnEvent) and isinstance(i.event, TurnFailed)]
    assert failed and "saved" in failed[0].fallback_text
    (line,) = turn_lines(json_log)
    assert (line["outcome"], line["reason"], line["flow"]) == ("failed", "RuntimeError: disk full", "general")


class UntouchableInbox:
    """An inbox that fails the test on any use: a refused message must not reach storage at all."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the inbox was used ({name}) for a message that should have been refused")


PNG_4_BYTES = "data:image/png;base64,iVBORw=="  # 4 bytes; base64 padding is not content


@pytest.mark.parametrize(
    ("text", "images", "limit"),
    [
        ("x" * 8001, (), "limits.max_message_chars"),
        ("\u0958" * 4001, (), "limits.max_message_chars"),  # 8,002 characters once NFC
        ("look", (ImagePart(url=PNG_4_BYTES),) * 5, "limits.max_images_per_message"),
        ("look", (ImagePart(url="data:image/png;base64," + "A" * 6_666_668),), "limits.max_image_bytes"),
    ],
    ids=["text", "text-nfc", "images", "image-bytes"],
)
async def test_submit_refuses_an_oversized_message_without_touching_the_store(
    runtime: Runtime, text: str, images: tuple[ImagePart, ...], limit: str
) -> None:
    dispatcher = Dispatcher(runtime.engine, UntouchableInbox())  # type: ignore[arg-type]
    message = InboundMessage(channel="slack", external_id="e1", conversation_id="c1", text=text, images=images)
    with pytest.raises(MessageTooLarge, match=limit) as refused:
        await dispatcher.submit(message)
    assert refused.value.limit == limit
    assert refused.value.actual > refused.value.allowed
    assert dispatcher.running == 0


async def test_submit_takes_a_message_at_the_limits(
    runtime: Runtime, dispatcher: Dispatcher, fake: FakeLLMServer
) -> None:
    fake.script(Reply(text="ok"))
    cid = await conversation(runtime)
    subscription = dispatcher.subscribe(cid)
    accepted = await dispatcher.submit(inbound(cid, "x" * 8000, external_id="long"))
    assert not accepted.duplicate
    items = await until_finished(subscription)
    assert isinstance(items[-1], TurnEvent) and isinstance(items[-1].event, TurnFinished)
    assert items[-1].event.text == "ok"


@pytest.mark.parametrize("size", [4_999_998, 4_999_999, 5_000_000, 5_000_001])
async def test_an_image_passes_intake_exactly_when_the_engine_takes_it(runtime: Runtime, size: int) -> None:
    image = ImagePart(url="data:image/png;base64," + base64.b64encode(b"\0" * size).decode())
    message = InboundMessage(channel="web", external_id="e", conversation_id="c", text="look", images=(image,))
    try:
        check_size(message, runtime.config.limits)  # the default limit is 5,000,000 bytes
        passed = True
    except MessageTooLarge:
        passed = False
    assert passed == (runtime.engine._refusal("look", [image]) is None)
    assert passed == (size <= 4_999_998)  # base64 padding counts as content: 4,999,999 reads as 5,000,001
    assert data_url_bytes("https://example.com/x.png") == 0


async def test_the_failures_of_a_turn_are_counted_in_the_database_so_a_restart_does_not_reset_them(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two failures, then a rest longer than the test; the restarted server's first failure is the third: give up.
    monkeypatch.setattr("supportbot.dispatch.RETRY_AFTER_S", (0.05, 60.0))
    tries: list[str] = []

    async def failing(*args: Any, **kwargs: Any) -> Any:
        tries.append("try")
        raise RuntimeError("disk full")

    monkeypatch.setattr(runtime.engine.store, "begin_turn", failing)
    conversation_id = await conversation(runtime)
    first = Dispatcher(runtime.engine, runtime.store)  # type: ignore[arg-type]
    await first.start()
    await first.submit(inbound(conversation_id, "hello"))
    await until(lambda: len(tries) == 2 and first.running == 0, 10, "two failed tries")
    await first.drain(1)  # stopped while its lane rests

    second = Dispatcher(runtime.engine, runtime.store)  # type: ignore[arg-type]
    assert await second.start() == 1
    try:
        await until(lambda: second.running == 0, 10, "the restarted server's try")
    finally:
        await second.drain(1)
    assert len(tries) == 3
    assert [i.id for i in await runtime.store.inbox_pending(statuses=("failed",))]  # type: ignore[attr-defined]
    [ticket] = await runtime.store.list_tickets(conversation_id=conversation_id)
    assert ticket.kind == "escalation" and "failed 3 times" in (ticket.description or "")


async def test_resume_reads_every_unanswered_message_a_page_at_a_time(
    fake: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite, whose only worker keeps each lane's messages in memory (PostgreSQL's workers read them as they go).
    from datetime import UTC, datetime

    from supportbot.store._engine import make_engine
    from supportbot.store.models import inbox

    at = datetime.now(UTC)
    row = {"status": "received", "conversation_id": None, "created_at": at}
    rows = [row | {"channel": "web", "external_id": f"big{n}", "payload": {"text": f"m{n}", "key": "b"}, "lane": "big"}
            for n in range(1001)]  # fmt: skip
    rows += [row | {"channel": "web", "external_id": f"one{n}", "payload": {"text": "hi", "key": f"o{n}"},
                    "lane": f"l{n:04}"} for n in range(1000)]  # fmt: skip
    # Rows from before lanes existed: given theirs at start.
    rows += [row | {"channel": "chat", "external_id": f"old{n}", "payload": {"text": "hi", "key": f"k{n}"},
                    "lane": None} for n in range(1001)]  # fmt: skip
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
    runtime = await open_runtime(config(fake, db_url))
    engine = make_engine(db_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(inbox.insert(), rows)
    finally:
        await engine.dispose()
    old_lanes = {lane_of(InboundMessage(channel="chat", external_id="", text="", key=f"k{n}")) for n in range(1001)}

    dispatcher = Dispatcher(runtime.engine, runtime.store)  # type: ignore[arg-type]
    kicked: list[str] = []
    monkeypatch.setattr(dispatcher, "kick", kicked.append)  # no turn runs: what would be started is noted
    try:
        assert await dispatcher.resume() == 2002  # pages of 1,000
    finally:
        await runtime.aclose()
    assert sorted(kicked) == sorted({"big"} | {f"l{n:04}" for n in range(1000)} | old_lanes)
    assert [item.payload["text"] for item in dispatcher._queues["big"]] == [f"m{n}" for n in range(1001)]
