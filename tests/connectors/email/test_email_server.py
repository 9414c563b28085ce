"""Email through the whole server: the real core, SQLite, the fake model, Dovecot and an SMTP sink, on 127.0.0.1.

The issue's cases: a mail answered end to end and threaded; the reply continues the conversation; the
same Message-ID twice gets one reply; an auto-responder that answers everything stops; an
operator's reply reaches the customer as a person; a 4xx is retried and a 5xx reaches operators;
kill -9 right after a mail is fetched gives one reply in all after the restart.
"""

from __future__ import annotations

import asyncio
import imaplib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.email.testing import Dovecot, SentMail, SmtpSink
from supportbot.config import load_config
from supportbot.server import serve
from supportbot.store.mailboxes import ChannelState
from supportbot.store.sql import SQLStore
from supportbot.testing.fake_llm import FakeLLMServer, Hang, Reply
from tests.server_process import free_port, start_server, stop_server

ADDRESS = "help@acme.example"
MX = "mx.acme.example"
ADMIN_TOKEN = "admin-token-for-the-email-tests-0123456789"


def customer_mail(
    text: str,
    *,
    sender: str = "ana@example.com",
    subject: str = "Where is my order?",
    message_id: str | None = None,
    reply_to: SentMail | None = None,
    dmarc: str | None = "pass",
    headers: dict[str, str] | None = None,
) -> tuple[bytes, str]:
    """A customer's mail as their provider would deliver it, and its Message-ID."""
    message = EmailMessage()
    if dmarc is not None:
        domain = sender.rpartition("@")[2]
        message["Authentication-Results"] = f"{MX}; spf=pass smtp.mailfrom={domain}; dmarc={dmarc} header.from={domain}"
    message["From"] = f"Ana Example <{sender}>"
    message["To"] = ADDRESS
    message["Subject"] = subject if reply_to is None else str(reply_to.message["Subject"])
    message_id = message_id or make_msgid(domain=sender.rpartition("@")[2])
    message["Message-ID"] = message_id
    if reply_to is not None:
        message["In-Reply-To"] = str(reply_to.message["Message-ID"])
        message["References"] = f"{reply_to.message.get('References', '')} {reply_to.message['Message-ID']}".strip()
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(text)
    return message.as_bytes(), message_id


def write_config(
    tmp_path: Path, llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink, database: str | None = None, **email: Any
) -> Path:
    sections = {
        "company": {"name": "Acme Outdoor"},
        "llm": {"base_url": llm.base_url, "api_key": "test-key", "model": "fake-model", "retries": {"max_retries": 0}},
        "database": {"url": database or f"sqlite+aiosqlite:///{tmp_path / 'email.db'}"},
        "server": {"drain_timeout_s": 0.5},
        "admin": {"token": ADMIN_TOKEN},
        "connectors": {
            "email": {
                "enabled": True, "address": ADDRESS, "trusted_authserv_id": MX,
                "imap": {"host": dovecot.host, "port": dovecot.port, "starttls": True, "ca_file": str(dovecot.ca_file),
                         "username": dovecot.username, "password": dovecot.password},
                "smtp": {"host": sink.host, "port": sink.port},
                **email,
            },
        },
        "logging": {"level": "WARNING"},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(sections))  # JSON is YAML
    return path


@dataclass
class Running:
    url: str
    stop: asyncio.Event
    task: asyncio.Task[None]
    http: aiohttp.ClientSession

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 20)
        await self.http.close()

    async def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Operator": "Olga"}
        async with self.http.request(method, f"{self.url}/api/v1/admin{path}", headers=headers, **kwargs) as response:
            assert response.status < 300, await response.text()
            return await response.json()


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as server:
        yield server


async def start(config: Path) -> Running:
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(load_config(config, env={}), host="127.0.0.1", port=0, stop=stop, ready=ready.set_result)
    )
    url = await asyncio.wait_for(ready, 15)
    return Running(url=url, stop=stop, task=task, http=aiohttp.ClientSession())


@pytest.fixture
async def server_for(
    tmp_path: Path, llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Running] = []

    async def make(**email: Any) -> Running:
        running = await start(write_config(tmp_path, llm, dovecot, sink, **email))
        started.append(running)
        return running

    yield make
    for running in started:
        await running.close()


async def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def last_user_text(request_body: dict[str, Any]) -> str:
    """The text of the newest message in a chat-completions request (its text parts, when it has images)."""
    content = request_body["messages"][-1]["content"]
    return content if isinstance(content, str) else " ".join(part.get("text", "") for part in content)


def tools_offered(request_body: dict[str, Any]) -> set[str]:
    return {tool["function"]["name"] for tool in request_body.get("tools") or ()}


async def test_a_mail_is_answered_in_its_thread_and_the_reply_continues_the_conversation(
    server_for: Callable[..., Any], llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink
) -> None:
    llm.script(
        Reply(tool_calls=[("transfer_to_order_status", {})]),
        Reply(text="Your order A1001 has **shipped**."),
        Reply(text="You're welcome!"),
    )
    await server_for()
    raw, message_id = customer_mail("Hello,\n\nwhere is my order A1001?\n\nAna\n\n-- \nAna Example, Lisbon")
    uid = await dovecot.append(raw)
    [answer] = await sink.wait_for(1, timeout=20)
    mail = answer.message
    assert answer.rcpt_tos == ("ana@example.com",) and answer.mail_from == ADDRESS
    assert mail["In-Reply-To"] == message_id and mail["References"] == message_id
    assert mail["Subject"].startswith("Re: Where is my order? [#") and mail["Subject"].count("Re:") == 1
    assert mail["Auto-Submitted"] == "auto-replied" and mail["X-Auto-Response-Suppress"] == "All"
    assert "Acme Outdoor" in mail["From"] and ADDRESS in mail["From"]
    plain = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert plain is not None and "Your order A1001 has **shipped**." in plain.get_content()
    assert html is not None and "<strong>shipped</strong>" in html.get_content()
    assert "\\Seen" in await dovecot.flags(uid)
    # What the model saw: the subject, the body without its signature; a verified customer.
    first = llm.requests[0].body
    user_text = last_user_text(first)
    assert "Subject: Where is my order?" in user_text and "A1001" in user_text and "Lisbon" not in user_text
    assert "lookup_order" in tools_offered(llm.requests[1].body)  # the order flow, for a verified sender

    # The customer answers our mail: the same conversation, threaded on our reply.
    raw, second_id = customer_mail("Thanks!\n\nOn Mon, Ana wrote:\n> old text", reply_to=answer)
    await dovecot.append(raw)
    [_, again] = await sink.wait_for(2, timeout=20)
    assert again.message["In-Reply-To"] == second_id
    assert again.message["Subject"] == mail["Subject"]
    assert str(answer.message["Message-ID"]) in again.message["References"]
    history = [m["content"] for m in llm.requests[2].body["messages"] if m["role"] == "assistant"]
    assert any("shipped" in str(text) for text in history)


@pytest.mark.postgres
async def test_a_thread_on_postgresql(
    tmp_path: Path, pg_url: str, llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink
) -> None:
    llm.script(Reply(text="Your order A1001 has shipped."), Reply(text="You're welcome!"), Reply(text="never"))
    running = await start(write_config(tmp_path, llm, dovecot, sink, database=pg_url))
    try:
        raw, _ = customer_mail("Where is my order A1001?")
        await dovecot.append(raw)
        [answer] = await sink.wait_for(1, timeout=20)
        await dovecot.append(raw)  # the same mail again: recognised
        raw, _ = customer_mail("Thanks!", reply_to=answer)
        await dovecot.append(raw)
        [_, again] = await sink.wait_for(2, timeout=20)
        assert again.message["Subject"] == answer.message["Subject"]
        assert str(answer.message["Message-ID"]) in again.message["References"]
        await asyncio.sleep(0.5)
        assert len(sink.mails) == 2 and llm.request_count == 2
    finally:
        await running.close()


async def test_an_unverified_sender_is_not_offered_account_tools(
    server_for: Callable[..., Any], llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink
) -> None:
    llm.script(
        Reply(tool_calls=[("transfer_to_order_status", {})]),
        Reply(text="Please write from the address you ordered with."),
    )
    await server_for()
    raw, _ = customer_mail("Where is A1001?", dmarc="fail")
    await dovecot.append(raw)
    await sink.wait_for(1, timeout=20)
    order_flow = llm.requests[1].body
    assert "lookup_order" not in tools_offered(order_flow)
    assert "identity not verified" in order_flow["messages"][0]["content"]


async def test_the_same_message_id_twice_gets_one_reply(
    server_for: Callable[..., Any], llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink
) -> None:
    llm.script(Reply(text="Your order has shipped."), Reply(text="second"))
    await server_for()
    raw, _ = customer_mail("Where is A1001?", message_id="<same-id-1@example.com>")
    await dovecot.append(raw)
    await sink.wait_for(1, timeout=20)
    uid = await dovecot.append(raw)
    await wait_until(lambda: _seen(dovecot, uid))
    await asyncio.sleep(1.0)  # time for a wrong second reply to leave
    assert len(sink.mails) == 1 and llm.request_count == 1


async def _seen(dovecot: Dovecot, uid: int) -> bool:
    return "\\Seen" in await dovecot.flags(uid)


async def test_an_auto_responder_that_answers_everything_is_stopped_by_the_cap(
    server_for: Callable[..., Any], llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink
) -> None:
    llm.script(*(Reply(text=f"Answer {n}") for n in range(20)))
    running = await server_for(replies_per_sender_per_hour=3)
    # A robot that replies to every mail, without marking its replies as automatic.
    raw, _ = customer_mail("Hello", sender="robot@robots.example")
    await dovecot.append(raw)
    answered = 0
    while answered < 3:
        mails = await sink.wait_for(answered + 1, timeout=20)
        raw, _ = customer_mail("Thank you for your message!", sender="robot@robots.example", reply_to=mails[-1])
        await dovecot.append(raw)
        answered += 1

    async def escalated() -> bool:
        tickets = (await running.admin("GET", "/tickets"))["tickets"]
        return any("not delivered on email" in t["subject"] for t in tickets)

    await wait_until(escalated, timeout=20)
    assert len(sink.mails) == 3 and llm.request_count == 4  # the fourth answer was written, not sent


async def test_marked_auto_replies_and_bounces_are_left_unanswered(
    server_for: Callable[..., Any], llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink
) -> None:
    llm.script(Reply(text="Hello Ana"))
    await server_for()
    out_of_office, _ = customer_mail("I am away", headers={"Auto-Submitted": "auto-replied"})
    bounce, _ = customer_mail("Undeliverable", sender="mailer-daemon@example.com")
    skipped = [await dovecot.append(out_of_office), await dovecot.append(bounce)]
    raw, _ = customer_mail("A real question")
    await dovecot.append(raw)
    await sink.wait_for(1, timeout=20)
    await asyncio.sleep(0.5)
    assert len(sink.mails) == 1 and llm.request_count == 1
    for uid in skipped:
        assert "\\Seen" not in await dovecot.flags(uid)  # left for the people who read the mailbox


async def test_an_operators_reply_reaches_the_customer_as_a_person(
    server_for: Callable[..., Any], llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink
) -> None:
    llm.script(
        Reply(tool_calls=[("handoff_to_human", {"reason": "The customer wants to speak to a person."})]),
        Reply(text="A person from our team will answer you here."),
    )
    running = await server_for()
    raw, message_id = customer_mail("I want to talk to a person")
    await dovecot.append(raw)
    [bot] = await sink.wait_for(1, timeout=20)
    [ticket] = (await running.admin("GET", "/tickets"))["tickets"]
    await running.admin("POST", f"/tickets/{ticket['id']}/reply", json={"text": "Hi Ana, Olga here. Sorted!"})
    [_, person] = await sink.wait_for(2, timeout=20)
    assert "Olga here" in person.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert person.message["Auto-Submitted"] is None and person.message["X-Auto-Response-Suppress"] is None
    assert person.message["In-Reply-To"] == message_id and person.rcpt_tos == ("ana@example.com",)
    assert person.message["Subject"] == bot.message["Subject"]


async def test_a_deferred_reply_is_sent_once_the_server_takes_mail_again(
    server_for: Callable[..., Any], llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink
) -> None:
    llm.script(Reply(text="Your order has shipped."))
    sink.fail_until_cleared(451, "4.3.0 Try again later")
    await server_for(retry_max_s=2)
    raw, _ = customer_mail("Where is A1001?")
    await dovecot.append(raw)
    await wait_until(lambda: _refused(sink, 2), timeout=20)
    sink.clear_failures()
    cleared = time.monotonic()
    [mail] = await sink.wait_for(1, timeout=20)
    assert time.monotonic() - cleared < 5 and mail.rcpt_tos == ("ana@example.com",)


async def _refused(sink: SmtpSink, count: int) -> bool:
    return len(sink.refused) >= count


async def test_a_refused_reply_reaches_the_operators(
    server_for: Callable[..., Any], llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink
) -> None:
    llm.script(Reply(text="Your order has shipped."))
    sink.fail_next(550, "5.1.1 No such user")
    running = await server_for()
    raw, _ = customer_mail("Where is A1001?")
    await dovecot.append(raw)

    async def escalated() -> list[Any]:
        tickets = (await running.admin("GET", "/tickets"))["tickets"]
        return [t for t in tickets if "not delivered on email" in t["subject"]]

    await wait_until(escalated, timeout=20)
    assert sink.mails == []


async def test_a_20_mb_mail_is_answered_without_its_attachment(
    server_for: Callable[..., Any], llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink
) -> None:
    llm.script(Reply(text="I can't open attachments, but tell me what is wrong with A1001."))
    await server_for(max_mail_bytes=5_000_000)
    message = EmailMessage()
    message["Authentication-Results"] = f"{MX}; dmarc=pass header.from=example.com"
    message["From"] = "Ana Example <ana@example.com>"
    message["Subject"] = "Log attached"
    message["Message-ID"] = "<big@example.com>"
    message.set_content("My order A1001 is wrong, see the log.")
    message.add_attachment(os.urandom(15_000_000), maintype="application", subtype="octet-stream", filename="log.bin")
    raw = message.as_bytes()
    assert len(raw) > 20_000_000
    uid = await dovecot.append(raw)
    [reply] = await sink.wait_for(1, timeout=30)
    assert reply.rcpt_tos == ("ana@example.com",) and "\\Seen" in await dovecot.flags(uid)
    seen = last_user_text(llm.requests[0].body)
    assert "My order A1001 is wrong" in seen and "log.bin" in seen and "only its beginning was read" in seen


# -- kill -9 ---------------------------------------------------------------------------------------------


async def test_kill_9_right_after_a_mail_is_fetched_gives_one_reply_after_restart(
    tmp_path: Path, llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink
) -> None:
    llm.script(Hang(60), Reply(text="Your order A1001 has shipped."))
    config = write_config(tmp_path, llm, dovecot, sink)
    port = free_port()
    process = await asyncio.to_thread(start_server, config, port, tmp_path)
    try:
        raw, _ = customer_mail("Where is A1001?")
        uid = await dovecot.append(raw)
        await asyncio.wait_for(llm.wait_for_requests(1), 20)  # fetched, stored, its turn running
        process.kill()
        await asyncio.to_thread(process.communicate)
        assert process.returncode == -signal.SIGKILL
        process = await asyncio.to_thread(start_server, config, port, tmp_path)
        [mail] = await sink.wait_for(1, timeout=20)
        assert "shipped" in mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "\\Seen" in await dovecot.flags(uid)
        await asyncio.sleep(1.0)
        assert len(sink.mails) == 1 and llm.request_count == 2
    finally:
        await stop_server(process)


def _mark_unread(dovecot: Dovecot, uid: int) -> None:
    with imaplib.IMAP4(dovecot.host, dovecot.port) as imap:
        imap.login(dovecot.username, dovecot.password)
        imap.select("INBOX")
        imap.uid("STORE", str(uid), "-FLAGS", "(\\Seen)")


@pytest.mark.parametrize("renumbered", [False, True])
async def test_a_mail_stored_but_not_flagged_before_a_crash_is_answered_once(
    tmp_path: Path, llm: FakeLLMServer, dovecot: Dovecot, sink: SmtpSink, renumbered: bool
) -> None:
    # The window between storing a mail and flagging it: the mail is in the inbox, still unread on the
    # server, and the cursor is behind it. The next start fetches it again; the inbox knows it.
    llm.script(Reply(text="Your order A1001 has shipped."), Reply(text="second"))
    config = write_config(tmp_path, llm, dovecot, sink)
    raw, _ = customer_mail("Where is A1001?")
    first = await start(config)
    try:
        uid = await dovecot.append(raw)
        await sink.wait_for(1, timeout=20)
        await wait_until(lambda: _seen(dovecot, uid))
    finally:
        await first.close()
    # Undo what followed the storing: unread again, and the cursor back before it; or, as well, the server
    # gives the mailbox a new UIDVALIDITY (a restore): only the Message-ID tells that the mail was stored.
    await asyncio.to_thread(_mark_unread, dovecot, uid)
    if renumbered:
        await dovecot.reset_uidvalidity()
    store = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'email.db'}")
    try:
        state = json.loads(await store.channel_state("email", "imap:INBOX") or "{}")
        await store.set_channel_state(ChannelState(channel="email", key="imap:INBOX",
                                                   value=json.dumps({**state, "last_uid": uid - 1})))  # fmt: skip
    finally:
        await store.close()
    second = await start(config)
    try:
        [(uid, _, _)] = [(m.uid, m.flags, m.raw) for m in await dovecot.messages()]
        await wait_until(lambda: _seen(dovecot, uid))
        await asyncio.sleep(1.0)
        assert len(sink.mails) == 1 and llm.request_count == 1
    finally:
        await second.close()
