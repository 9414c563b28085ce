"""Replies over SMTP against the sink on 127.0.0.1: headers, TLS modes and login, 4xx/5xx, the per-sender cap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connectors.email.channel import EmailChannel, compose_html
from connectors.email.settings import EmailSettings
from connectors.email.state import Keeper
from connectors.email.testing import SmtpSink
from supportbot.channels import DeliveryError, Reply
from supportbot.config import LimitSettings
from tests.connectors.email.conftest import SinkFactory

ADDRESS = "help@acme.example"
THREAD = {"to": "ana@example.com", "name": "Ana Example", "subject": "Order A1001", "tag": "K7F3Q2M9XA",
          "verified": True, "message_id": "<m2@example.com>",
          "references": ["<m1@example.com>", "<m2@example.com>"]}  # fmt: skip


def channel_for(sink: SmtpSink, **smtp: Any) -> tuple[EmailChannel, dict[str, str]]:
    state: dict[str, str] = {}

    async def get(key: str) -> str | None:
        return state.get(key)

    async def put(key: str, value: str) -> None:
        state[key] = value

    options = {"host": sink.host, "port": sink.port, **smtp}
    settings = EmailSettings.model_validate({"enabled": True, "address": ADDRESS, "smtp": options,
                                             "replies_per_sender_per_hour": 3})  # fmt: skip
    return EmailChannel(settings, Keeper(get, put), company="Acme Outdoor", limits=LimitSettings()), state


def reply(outbox_id: int = 1, **fields: Any) -> Reply:
    values: dict[str, Any] = {"outbox_id": outbox_id, "channel": "email", "kind": "answer", "key": "m:thread",
                              "text": "Your order has shipped.", "address": THREAD, **fields}  # fmt: skip
    return Reply(**values)


async def test_the_bots_reply_is_threaded_and_marked_automatic(smtp_sink: SmtpSink) -> None:
    channel, _ = channel_for(smtp_sink)
    message_id = await channel.deliver(reply(text="Your order **A1001** has shipped: https://acme.example/t/1 <ok>"))
    [sent] = smtp_sink.mails
    mail = sent.message
    assert sent.mail_from == ADDRESS and sent.rcpt_tos == ("ana@example.com",)
    assert mail["Message-ID"] == message_id and message_id.endswith("@acme.example>")
    assert mail["In-Reply-To"] == "<m2@example.com>" and mail["References"] == "<m1@example.com> <m2@example.com>"
    assert mail["Subject"] == "Re: Order A1001 [#K7F3Q2M9XA]"
    assert mail["Auto-Submitted"] == "auto-replied" and mail["X-Auto-Response-Suppress"] == "All"
    assert mail["X-Loop"] == ADDRESS and mail["Precedence"] is None
    assert mail["From"] == f"Acme Outdoor <{ADDRESS}>" and mail["To"] == "Ana Example <ana@example.com>"
    html = mail.get_body(("html",))
    assert html is not None
    content = html.get_content()
    assert "<strong>A1001</strong>" in content and '<a href="https://acme.example/t/1">' in content
    assert "&lt;ok&gt;" in content and "<ok>" not in content


async def test_an_operators_reply_is_a_persons_mail(smtp_sink: SmtpSink) -> None:
    channel, _ = channel_for(smtp_sink)
    await channel.deliver(reply(kind="operator", author="api:Olga", text="Olga here."))
    mail = smtp_sink.mails[0].message
    assert mail["Auto-Submitted"] is None and mail["X-Auto-Response-Suppress"] is None and mail["X-Loop"] is None
    assert mail["From"] == f'"Olga (Acme Outdoor)" <{ADDRESS}>'


async def test_the_same_row_is_the_same_mail_on_every_try(smtp_sink: SmtpSink) -> None:
    channel, state = channel_for(smtp_sink)
    first = await channel.deliver(reply(7))
    again = await channel.deliver(reply(7, attempt=2))
    other = await channel.deliver(reply(8))
    assert first == again != other
    assert state["install"] in first  # unique across databases, not only across rows


async def test_the_reply_answers_the_turns_mail(smtp_sink: SmtpSink) -> None:
    channel, _ = channel_for(smtp_sink)
    await channel.keeper.set_turn(5, {"message_id": "<m1@example.com>", "references": ["<m1@example.com>"]})
    await channel.deliver(reply(turn=5))
    assert smtp_sink.mails[0].message["In-Reply-To"] == "<m1@example.com>"


async def test_our_reply_is_remembered_for_the_customers_answer(smtp_sink: SmtpSink) -> None:
    channel, _ = channel_for(smtp_sink)
    message_id = await channel.deliver(reply())
    thread = await channel.keeper.thread_of(message_id)
    assert thread is not None and thread.key == "m:thread" and thread.sender == "ana@example.com" and thread.verified


@pytest.mark.parametrize(
    ("sink_options", "smtp"),
    [
        ({"mode": "starttls", "require_starttls": True, "username": "help", "password": "pw"},
         {"starttls": True, "username": "help", "password": "pw"}),
        ({"mode": "tls", "username": "help", "password": "pw"}, {"ssl": True, "username": "help", "password": "pw"}),
        ({"mode": "plain"}, {}),
    ],
)  # fmt: skip
async def test_tls_modes_and_login(
    make_smtp_sink: SinkFactory, sink_options: dict[str, Any], smtp: dict[str, Any]
) -> None:
    sink = await make_smtp_sink(**sink_options)
    channel, _ = channel_for(sink, ca_file=str(sink.ca_file), **smtp)
    await channel.deliver(reply())
    [sent] = sink.mails
    assert sent.tls == (sink_options["mode"] != "plain")
    assert sent.login == sink_options.get("username")


async def test_a_server_with_an_unknown_certificate_is_not_trusted(make_smtp_sink: SinkFactory) -> None:
    sink = await make_smtp_sink(mode="tls")
    channel, _ = channel_for(sink, ssl=True)  # the system's CAs do not know the test CA
    with pytest.raises(DeliveryError) as caught:
        await channel.deliver(reply())
    assert caught.value.retryable and sink.mails == []


@pytest.mark.parametrize(
    ("code", "stage", "retryable"),
    [(451, "DATA", True), (421, "RCPT", True), (550, "DATA", False), (550, "RCPT", False), (554, "DATA", False)],
)
async def test_4xx_is_retried_and_5xx_is_not(smtp_sink: SmtpSink, code: int, stage: Any, retryable: bool) -> None:
    channel, _ = channel_for(smtp_sink)
    smtp_sink.fail_next(code, "test", stage=stage)
    with pytest.raises(DeliveryError) as caught:
        await channel.deliver(reply())
    assert caught.value.retryable is retryable and str(code) in str(caught.value)
    if retryable:
        await channel.deliver(reply(attempt=2))
        assert len(smtp_sink.mails) == 1


async def test_no_server_is_retried(smtp_sink: SmtpSink) -> None:
    channel, _ = channel_for(smtp_sink)
    await smtp_sink.close()
    with pytest.raises(DeliveryError) as caught:
        await channel.deliver(reply())
    assert caught.value.retryable


async def test_the_bot_sends_at_most_the_cap_to_one_address_an_operator_is_not_capped(smtp_sink: SmtpSink) -> None:
    channel, _ = channel_for(smtp_sink)  # replies_per_sender_per_hour: 3
    for outbox_id in (1, 2, 3):
        await channel.deliver(reply(outbox_id))
    await channel.deliver(reply(2, attempt=2))  # a retry of a counted reply is not a new one
    with pytest.raises(DeliveryError) as caught:
        await channel.deliver(reply(4))
    assert not caught.value.retryable and "replies_per_sender_per_hour" in str(caught.value)
    await channel.deliver(reply(5, kind="operator", author="Olga"))
    await channel.deliver(reply(6, address={**THREAD, "to": "bob@example.org"}))
    assert [mail.rcpt_tos[0] for mail in smtp_sink.mails] == ["ana@example.com"] * 5 + ["bob@example.org"]


async def test_a_conversation_without_an_address_is_refused(smtp_sink: SmtpSink) -> None:
    channel, _ = channel_for(smtp_sink)
    with pytest.raises(DeliveryError) as caught:
        await channel.deliver(reply(address={}))
    assert not caught.value.retryable


def test_html_escapes_everything_but_paragraphs_links_and_bold() -> None:
    html = compose_html('Hi <b>Ana</b>,\n\nsee "https://acme.example/a?b=1&c=2".\nBye **now**')
    assert "&lt;b&gt;Ana&lt;/b&gt;" in html and "<p>Hi" in html and "<br>" in html
    assert '<a href="https://acme.example/a?b=1&amp;c=2">' in html and "<strong>now</strong>" in html


async def test_an_international_domain_is_sent_in_idna_and_a_non_ascii_local_part_is_refused(
    smtp_sink: SmtpSink,
) -> None:
    channel, _ = channel_for(smtp_sink)
    await channel.deliver(reply(1, address={**THREAD, "to": "ana@exämple.de"}))
    assert smtp_sink.mails[0].rcpt_tos == ("ana@xn--exmple-cua.de",)
    with pytest.raises(DeliveryError) as caught:
        await channel.deliver(reply(2, address={**THREAD, "to": "jörg@example.de"}))
    assert not caught.value.retryable and "SMTPUTF8" in str(caught.value)


async def test_the_cap_counts_plus_addresses_as_one_sender(smtp_sink: SmtpSink) -> None:
    channel, _ = channel_for(smtp_sink)  # replies_per_sender_per_hour: 3
    for n in (1, 2, 3):
        await channel.deliver(reply(n, address={**THREAD, "to": f"robot+{n}@robots.example"}))
    with pytest.raises(DeliveryError):
        await channel.deliver(reply(4, address={**THREAD, "to": "Robot+4@robots.example"}))


@pytest.mark.postgres
async def test_the_cap_holds_when_several_workers_reply_to_one_sender_at_once(pg_url: str) -> None:
    from supportbot.store.mailboxes import ChannelState
    from supportbot.store.sql import SQLStore

    store = await SQLStore.open(pg_url)
    try:

        async def get(key: str) -> str | None:
            return await store.channel_state("email", key)

        async def put(key: str, value: str) -> None:
            await store.set_channel_state(ChannelState(channel="email", key=key, value=value))

        workers = [Keeper(get, put, hold=store.hold_lease) for _ in range(3)]  # each its own in-process lock
        admitted = await asyncio.gather(*(
            workers[n % 3].reserve_reply("ana@example.com", outbox_id=n, cap=4) for n in range(12)
        ))  # fmt: skip
    finally:
        await store.close()
    assert admitted.count(True) == 4
