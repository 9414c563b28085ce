"""Slack through the whole server: the real core, a database, the fake model and FakeSlack, all on 127.0.0.1.

The issue's cases: the same event four times (two at once) gets one reply; a 10 s model is
acknowledged within 3 s and answered later; kill -9 right after the acknowledgement, and the reply
comes exactly once after the restart; postMessage rate-limited twice still delivers once; an
operator's reply in a ticket's thread reaches a widget customer.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.slack.channel import METADATA_TYPE
from connectors.slack.testing import EventReply, FakeSlack, send_event
from supportbot.config import Config, load_config
from supportbot.server import serve
from supportbot.testing.fake_llm import FakeLLMServer, Hang, Reply
from tests.connectors.slack.conftest import CUSTOMER, DM, SIGNING_SECRET, TICKETS
from tests.server_process import free_port, start_server, stop_server

WIDGET_SECRET = "test-identity-secret-of-at-least-32-bytes"


def write_config(tmp_path: Path, llm: FakeLLMServer, slack: FakeSlack, **slack_settings: Any) -> Path:
    sections = {
        "llm": {"base_url": llm.base_url, "api_key": "test-key", "model": "fake-model", "retries": {"max_retries": 0}},
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'slack.db'}"},
        "server": {"drain_timeout_s": 0.5},
        "connectors": {
            "web": {"identity_secret": WIDGET_SECRET},
            "slack": {"enabled": True, "bot_token": slack.bot_token, "signing_secret": SIGNING_SECRET,
                      "api_url": slack.api_url, "tickets_channel": "#support-tickets", **slack_settings},
        },
        "logging": {"level": "WARNING"},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(sections))  # JSON is YAML
    return path


@dataclass
class Running:
    url: str
    slack: FakeSlack
    llm: FakeLLMServer
    http: aiohttp.ClientSession
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def send(self, event: dict[str, Any], **options: Any) -> EventReply:
        return await send_event(self.http, f"{self.url}/slack/events", event, SIGNING_SECRET, **options)


def replies(slack: FakeSlack, channel: str) -> list[dict[str, Any]]:
    """The bot's finished replies (posted by deliver: they carry the outbox row)."""
    return [
        m for m in slack.messages(channel)
        if m.get("bot_id") and (m.get("metadata") or {}).get("event_type") == METADATA_TYPE and not m.get("streaming")
    ]  # fmt: skip


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        fake.add_user(CUSTOMER, email="ana@example.com", real_name="Ana Example")
        fake.add_user("U0OP", real_name="Olga Operator")
        fake.add_channel(DM, is_im=True, user=CUSTOMER)
        fake.add_channel(TICKETS, "support-tickets")
        yield fake


async def start(config: Config, slack: FakeSlack, llm: FakeLLMServer, http: aiohttp.ClientSession) -> Running:
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, host="127.0.0.1", port=0, stop=stop, ready=ready.set_result))
    url = await asyncio.wait_for(ready, 15)
    return Running(url=url, slack=slack, llm=llm, http=http, stop=stop, task=task)


@pytest.fixture
async def running(tmp_path: Path, llm: FakeLLMServer, slack: FakeSlack) -> AsyncIterator[Running]:
    config = load_config(write_config(tmp_path, llm, slack), env={})
    async with aiohttp.ClientSession() as http:
        server = await start(config, slack, llm, http)
        try:
            yield server
        finally:
            server.stop.set()
            await asyncio.wait_for(server.task, 20)


async def test_the_same_event_four_times_gets_one_reply(running: Running, slack: FakeSlack, llm: FakeLLMServer) -> None:
    llm.script(Reply(text="Your order A1001 has shipped."), Reply(text="You're welcome!"))
    event = slack.user_message(DM, "Where is my order A1001?", user=CUSTOMER)
    first, second = await asyncio.gather(running.send(event), running.send(event))
    third = await running.send(event, retry_num=1, retry_reason="http_timeout")
    fourth = await running.send(event, retry_num=2, retry_reason="http_error")
    assert [r.status for r in (first, second, third, fourth)] == [200, 200, 200, 200]
    # A later message of the same conversation is answered after any twin of the first would have been.
    await running.send(slack.user_message(DM, "Thanks!", user=CUSTOMER))
    await slack.wait_until(lambda: len(replies(slack, DM)) >= 2, timeout=10)
    assert [m["text"] for m in replies(slack, DM)] == ["Your order A1001 has shipped.", "You're welcome!"]
    assert llm.request_count == 2


async def test_postmessage_rate_limited_twice_delivers_once(
    running: Running, slack: FakeSlack, llm: FakeLLMServer
) -> None:
    llm.script(Reply(text="Your order A1001 has shipped."))
    slack.fail("chat.postMessage", times=2, status=429, retry_after=1)
    assert (await running.send(slack.user_message(DM, "Where is A1001?", user=CUSTOMER))).status == 200
    await slack.wait_until(lambda: len(replies(slack, DM)) == 1, timeout=15)
    posts = slack.calls_to("chat.postMessage")
    assert [c.status for c in posts[:2]] == [429, 429]
    [reply] = replies(slack, DM)
    assert reply["text"] == "Your order A1001 has shipped."
    assert len([m for m in slack.messages(DM) if m.get("bot_id")]) == 1


async def test_a_slow_model_is_acknowledged_at_once_and_answered_later(tmp_path: Path, slack: FakeSlack) -> None:
    words = (
        "Your order A1001 left our warehouse on Monday, went through the sorting centre on Tuesday "
        "and arrives at your door on Thursday before noon."
    )
    assert len(words.split()) == 24
    # 24 words, one every 0.2 s: about 5 s, longer than Slack's 3 s for the ack, and 24 deltas where the live
    # message may take one edit a second (update_interval_s: 1.0 at least).
    async with FakeLLMServer(token_delay=0.2) as slow, aiohttp.ClientSession() as http:
        slow.script(Reply(text=words))
        server = await start(load_config(write_config(tmp_path, slow, slack), env={}), slack, slow, http)
        try:
            started = time.monotonic()
            acked = await server.send(slack.user_message(DM, "Where is A1001?", user=CUSTOMER))
            assert acked.status == 200 and time.monotonic() - started < 3.0
            await slow.wait_for_requests(1)
            await slack.wait_calls("chat.postMessage", timeout=10)  # shown while it is written
            await slack.wait_until(lambda: len(replies(slack, DM)) == 1, timeout=20)
            assert replies(slack, DM)[0]["text"] == words
            answered_in = time.monotonic() - started
            assert answered_in >= 4.4  # 23 pauses of 0.2 s
            live = [c for c in slack.calls if c.method in ("chat.postMessage", "chat.update")]
            assert len(live) <= answered_in + 3 < 24  # about one edit a second, not one per word
        finally:
            server.stop.set()
            await asyncio.wait_for(server.task, 20)


async def test_an_operators_slack_reply_reaches_a_widget_customer(
    running: Running, slack: FakeSlack, llm: FakeLLMServer
) -> None:
    llm.script(
        Reply(tool_calls=[("handoff_to_human", {"reason": "The customer wants to speak to a person."})]),
        Reply(text="A person from our team will reply here."),
    )
    async with running.http.post(f"{running.url}/api/v1/conversations", json={}) as response:
        opened = await response.json()
    headers = {"Authorization": f"Bearer {opened['token']}"}
    messages = f"{running.url}/api/v1/conversations/{opened['id']}/messages"
    async with running.http.post(f"{messages}?stream=false", json={"text": "I want a person"}, headers=headers) as r:
        assert r.status == 200, await r.text()
    # The new ticket is announced in the tickets channel.
    await slack.wait_until(lambda: len(replies(slack, TICKETS)) == 1, timeout=15)
    [announcement] = replies(slack, TICKETS)
    assert "Ticket #" in announcement["text"] and "Channel: web" in announcement["text"]
    # An operator answers in its thread (and Slack delivers that event twice).
    answer = slack.user_message(TICKETS, "Hi, this is Olga. I've sent you a new parcel.", user="U0OP",
                                thread_ts=announcement["ts"])  # fmt: skip
    assert (await running.send(answer)).status == 200
    assert (await running.send(answer, retry_num=1)).status == 200

    async def operator_messages() -> list[dict[str, Any]]:
        async with running.http.get(messages, headers=headers) as response:
            history = await response.json()
        return [m for m in history["messages"] if "Olga" in (m.get("text") or "")]

    deadline = time.monotonic() + 10
    while not (found := await operator_messages()):
        assert time.monotonic() < deadline, "the operator's reply did not reach the widget conversation"
        await asyncio.sleep(0.1)  # polling the customer's view, as the widget's history request does
    assert len(found) == 1 and found[0]["text"] == "Hi, this is Olga. I've sent you a new parcel."
    assert llm.request_count == 2  # the bot stays silent: a person has the conversation


# -- kill -9 ---------------------------------------------------------------------------------------------


async def test_kill_9_right_after_the_ack_answers_exactly_once_after_restart(
    tmp_path: Path, slack: FakeSlack, llm: FakeLLMServer
) -> None:
    llm.script(Hang(60), Reply(text="Your order A1001 has shipped."), Reply(text="Glad to help!"))
    config = write_config(tmp_path, llm, slack)
    port = free_port()
    url = f"http://127.0.0.1:{port}/slack/events"
    process = await asyncio.to_thread(start_server, config, port, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            event = slack.user_message(DM, "Where is A1001?", user=CUSTOMER)
            assert (await send_event(http, url, event, SIGNING_SECRET)).status == 200
            await asyncio.wait_for(llm.wait_for_requests(1), 10)  # the turn is running
            process.kill()  # SIGKILL: no drain, no goodbye
            await asyncio.to_thread(process.communicate)  # and close its pipe
            assert process.returncode == -signal.SIGKILL
            process = await asyncio.to_thread(start_server, config, port, tmp_path)
            await slack.wait_until(lambda: len(replies(slack, DM)) == 1, timeout=20)
            # Slack, not told in time, retries the event; and the customer writes again.
            assert (await send_event(http, url, event, SIGNING_SECRET, retry_num=1)).status == 200
            assert (
                await send_event(http, url, slack.user_message(DM, "Thanks", user=CUSTOMER), SIGNING_SECRET)
            ).status == 200
            await slack.wait_until(lambda: len(replies(slack, DM)) == 2, timeout=20)
        texts = [m["text"] for m in slack.messages(DM) if m.get("bot_id")]
        assert texts == ["Your order A1001 has shipped.", "Glad to help!"]
        assert llm.request_count == 3
    finally:
        await stop_server(process)


async def test_kill_9_while_the_reply_is_written_leaves_one_whole_reply(tmp_path: Path, slack: FakeSlack) -> None:
    words = " ".join(f"word{n}" for n in range(20))
    async with FakeLLMServer(token_delay=0.1) as llm:  # two seconds a reply: the kill lands while it is shown
        llm.script(Reply(text=words), Reply(text=words))
        config = write_config(tmp_path, llm, slack)
        port = free_port()
        process = await asyncio.to_thread(start_server, config, port, tmp_path)
        try:
            async with aiohttp.ClientSession() as http:
                event = slack.user_message(DM, "Tell me a story", user=CUSTOMER)
                url = f"http://127.0.0.1:{port}/slack/events"
                assert (await send_event(http, url, event, SIGNING_SECRET)).status == 200
                await slack.wait_calls("chat.update", timeout=10)  # the live message exists and grows
                process.kill()
                await asyncio.to_thread(process.communicate)
                [half] = [m for m in slack.messages(DM) if m.get("bot_id")]
                assert half["text"] != words
                process = await asyncio.to_thread(start_server, config, port, tmp_path)
                await slack.wait_until(lambda: len(replies(slack, DM)) == 1, timeout=20)
            [message] = [m for m in slack.messages(DM) if m.get("bot_id")]
            assert message["ts"] == half["ts"] and message["text"] == words
            assert llm.request_count == 2
        finally:
            await stop_server(process)
