"""The email test harness itself (``connectors.email.testing``), through the clients the connector uses.

Dovecot: login over plain IMAP, STARTTLS and implicit TLS with the test CA; APPEND and ``BODY.PEEK[]`` round
trip; IDLE pushes EXISTS; UIDVALIDITY changes; restart keeps the mail and the ports; kill and close leave no
process or file. The SMTP sink: aiosmtplib sends in every TLS mode and with AUTH; injected 4xx/5xx answers and a
dropped connection reach the client as they would from a real server.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aioimaplib
import aiosmtplib
import pytest
import trustme

from connectors.email.testing import Dovecot, DovecotError, SmtpSink, client_context
from connectors.email.testing import dovecot as dovecot_module
from tests.connectors.email.conftest import SinkFactory, require_dovecot

RAW = (
    b"From: Ana Example <ana@example.com>\r\n"
    b"To: help@acme.example\r\n"
    b"Subject: Where is order A1001?\r\n"
    b"Message-ID: <a1001.1@example.com>\r\n"
    b"Date: Mon, 03 Feb 2025 10:00:00 +0000\r\n"
    b"\r\n"
    b"Hello, my order has not arrived.\r\n"
)


async def starttls(client: Any, context: ssl.SSLContext) -> None:
    """STARTTLS for an aioimaplib client (aioimaplib 2.0.3 has none): the command, then ``loop.start_tls`` on
    the same protocol, then CAPABILITY again, since a server may announce more once encrypted (RFC 3501 6.2.1)."""
    protocol = client.protocol
    response = await protocol.execute(aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop))
    if response.result != "OK":
        raise ConnectionError(f"STARTTLS refused: {response.lines}")
    loop = asyncio.get_running_loop()
    protocol.transport = await loop.start_tls(protocol.transport, protocol, context, server_hostname=client.host)
    await protocol.capability()


async def connect(server: Dovecot, how: str, on_lost: Callable[[Exception | None], None] | None = None) -> Any:
    if how == "tls":
        client = aioimaplib.IMAP4_SSL(server.host, server.ssl_port, ssl_context=client_context())
    else:
        client = aioimaplib.IMAP4(server.host, server.port, conn_lost_cb=on_lost)
    await client.wait_hello_from_server()
    if how == "starttls":
        await starttls(client, client_context())
    return client


@pytest.fixture
async def client(dovecot: Dovecot) -> AsyncIterator[Any]:
    """An aioimaplib client logged in to the default user with INBOX selected."""
    imap = await connect(dovecot, "plain")
    assert (await imap.login(dovecot.username, dovecot.password)).result == "OK"
    assert (await imap.select("INBOX")).result == "OK"
    yield imap
    if imap.get_state() != "LOGOUT" and imap.protocol.transport is not None:
        await imap.logout()


# -- Dovecot ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["plain", "starttls", "tls"])
async def test_a_client_logs_in_over_plain_starttls_and_tls(dovecot: Dovecot, how: str) -> None:
    imap = await connect(dovecot, how)
    encrypted = imap.protocol.transport.get_extra_info("ssl_object") is not None
    assert encrypted == (how != "plain")
    assert imap.has_capability("STARTTLS") == (how == "plain")  # offered only before TLS
    assert (await imap.login(dovecot.username, dovecot.password)).result == "OK"
    assert (await imap.select("INBOX")).result == "OK"
    await imap.logout()


async def test_tls_fails_without_the_test_ca_and_a_wrong_password_is_refused(dovecot: Dovecot) -> None:
    other = ssl.create_default_context(cafile=None, cadata=trustme.CA().cert_pem.bytes().decode())
    imap = aioimaplib.IMAP4_SSL(dovecot.host, dovecot.ssl_port, ssl_context=other)
    with pytest.raises(ssl.SSLCertVerificationError):
        await imap.wait_hello_from_server()
    imap = await connect(dovecot, "plain")
    assert (await imap.login(dovecot.username, "wrong")).result == "NO"
    await imap.logout()


async def test_append_then_fetch_body_peek_returns_the_bytes_and_flags_follow_the_client(
    dovecot: Dovecot, client: Any
) -> None:
    uid = await dovecot.append(RAW)
    await client.noop()  # the selected session learns of new mail at a command's end (or by IDLE)
    fetched = await client.uid("fetch", str(uid), "(BODY.PEEK[] FLAGS)")
    assert fetched.result == "OK"
    assert fetched.lines[1] == RAW
    assert await dovecot.flags(uid) == frozenset()  # PEEK left it unseen

    assert (await client.uid("store", str(uid), "+FLAGS.SILENT (\\Seen)")).result == "OK"
    assert await dovecot.flags(uid) == {"\\Seen"}
    [stored] = await dovecot.messages()
    assert (stored.uid, stored.flags, stored.raw) == (uid, frozenset({"\\Seen"}), RAW)
    assert {path.name for path in dovecot.maildir.iterdir()} >= {"cur", "new", "tmp"}


async def test_append_keeps_flags_and_counts_uids_up(dovecot: Dovecot) -> None:
    first = await dovecot.append(RAW, flags=["\\Seen", "\\Flagged"])
    second = await dovecot.append(RAW.replace(b"a1001.1", b"a1001.2"))
    assert (first, second) == (1, 2)
    assert await dovecot.flags(first) == {"\\Seen", "\\Flagged"}
    with pytest.raises(KeyError, match="no message with UID 3"):
        await dovecot.flags(3)


async def test_users_have_their_own_mailboxes_and_can_be_added_while_running(dovecot: Dovecot) -> None:
    dovecot.add_user("sales@acme.example", "pw-sales")
    await dovecot.append(RAW, user="sales@acme.example")
    assert await dovecot.messages() == []
    assert [mail.raw for mail in await dovecot.messages("sales@acme.example")] == [RAW]
    imap = await connect(dovecot, "plain")
    assert (await imap.login("sales@acme.example", "pw-sales")).result == "OK"
    await imap.logout()


async def test_idle_gets_exists_when_mail_arrives_through_another_connection(dovecot: Dovecot, client: Any) -> None:
    idle = await client.idle_start(timeout=30)
    uid = await dovecot.append(RAW)

    async def exists() -> list[bytes]:
        while True:
            lines = await client.wait_server_push()
            if any(line.endswith(b"EXISTS") for line in lines):
                return list(lines)

    assert b"1 EXISTS" in await asyncio.wait_for(exists(), 10)
    client.idle_done()
    assert (await asyncio.wait_for(idle, 10)).result == "OK"
    assert (await client.uid("fetch", str(uid), "(BODY.PEEK[])")).lines[1] == RAW


async def test_reset_uidvalidity_gives_a_new_value_and_keeps_the_mail(dovecot: Dovecot) -> None:
    await dovecot.append(RAW)
    before = await dovecot.uidvalidity()
    after = await dovecot.reset_uidvalidity()
    assert after != before
    assert after == await dovecot.uidvalidity()
    imap = await connect(dovecot, "plain")
    await imap.login(dovecot.username, dovecot.password)
    selected = await imap.select("INBOX")
    assert f"[UIDVALIDITY {after}]".encode() in b" ".join(selected.lines)
    assert [(mail.uid, mail.raw) for mail in await dovecot.messages()] == [(1, RAW)]
    await imap.logout()


async def test_restart_says_bye_to_clients_and_keeps_ports_and_mail(dovecot: Dovecot) -> None:
    uid = await dovecot.append(RAW)
    reader, writer = await asyncio.open_connection(dovecot.host, dovecot.port)
    assert (await reader.readline()).startswith(b"* OK")
    writer.write(f"a1 LOGIN {dovecot.username} {dovecot.password}\r\n".encode())
    while not (await reader.readline()).startswith(b"a1 OK"):
        pass
    ports = (dovecot.port, dovecot.ssl_port)

    await dovecot.restart()
    assert await asyncio.wait_for(reader.read(), 10) == b"* BYE Server shutting down.\r\n"  # then EOF
    writer.close()
    await writer.wait_closed()
    assert (dovecot.port, dovecot.ssl_port) == ports
    assert [mail.uid for mail in await dovecot.messages()] == [uid]
    again = await connect(dovecot, "tls")
    assert (await again.login(dovecot.username, dovecot.password)).result == "OK"
    await again.logout()


async def test_kill_ends_every_process_at_once_and_start_brings_the_mail_back(dovecot: Dovecot) -> None:
    uid = await dovecot.append(RAW)
    lost = asyncio.Event()
    imap = await connect(dovecot, "plain", on_lost=lambda error: lost.set())
    await imap.login(dovecot.username, dovecot.password)
    await imap.select("INBOX")  # an imap process serves this client; it must die with the master
    assert len(dovecot.processes()) >= 3

    await dovecot.kill()
    assert dovecot.processes() == []
    await asyncio.wait_for(lost.wait(), 10)
    await dovecot.start()
    assert [mail.uid for mail in await dovecot.messages()] == [uid]


async def test_closing_leaves_no_process_and_no_directory() -> None:
    require_dovecot()
    async with Dovecot(users={"a@example.com": "pw-a", "b@example.com": "pw-b"}) as server:
        directory = server.directory
        await server.append(RAW, user="b@example.com")
        assert server.processes()
        assert server.username == "a@example.com"
    assert server.processes() == []
    assert not directory.exists()


async def test_a_port_taken_between_pick_and_bind_is_retried_on_fresh_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_dovecot()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        real = dovecot_module._free_ports
        picks = iter([[taken.getsockname()[1], real(1)[0]]])
        monkeypatch.setattr(dovecot_module, "_free_ports", lambda count: next(picks, None) or real(count))
        async with Dovecot() as server:
            assert server.port != taken.getsockname()[1]
            assert "Address already in use" in server.log()


async def test_a_server_that_does_not_start_fails_with_its_output(tmp_path: Path) -> None:
    require_dovecot()  # the users it runs as come with the package
    binary = tmp_path / "dovecot"
    binary.write_text("#!/bin/sh\necho 'Fatal: Invalid configuration: nonsense' >&2\nexit 89\n")
    binary.chmod(0o755)
    with pytest.raises(DovecotError, match=r"(?s)exited with status 89.*Fatal: Invalid configuration: nonsense"):
        async with Dovecot(binary=str(binary)):
            pass


# -- the SMTP sink ---------------------------------------------------------------------------------------------------


def reply(subject: str = "Re: Where is order A1001?") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "help@acme.example"
    message["To"] = "ana@example.com"
    message["Subject"] = subject
    message.set_content("It ships today.")
    return message


async def send(sink: SmtpSink, message: EmailMessage, **options: Any) -> None:
    await aiosmtplib.send(
        message, hostname=sink.host, port=sink.port, tls_context=client_context(), timeout=10, **options
    )


@pytest.mark.parametrize(
    ("sink_options", "client_options", "encrypted"),
    [
        ({}, {}, False),
        ({"mode": "starttls"}, {"start_tls": True}, True),
        ({"mode": "starttls", "require_starttls": True}, {}, True),  # aiosmtplib upgrades when offered
        ({"mode": "tls"}, {"use_tls": True}, True),
        ({"username": "bot", "password": "pw"}, {"username": "bot", "password": "pw"}, False),
        (
            {"mode": "tls", "username": "bot", "password": "pw"},
            {"use_tls": True, "username": "bot", "password": "pw"},
            True,
        ),
    ],
    ids=["plain", "starttls", "starttls-required", "tls", "plain-auth", "tls-auth"],
)
async def test_the_sink_records_what_aiosmtplib_sends_in_each_mode(
    make_smtp_sink: SinkFactory, sink_options: dict[str, Any], client_options: dict[str, Any], encrypted: bool
) -> None:
    sink = await make_smtp_sink(**sink_options)
    await send(sink, reply(), **client_options)
    [mail] = await sink.wait_for(1)
    assert (mail.mail_from, mail.rcpt_tos) == ("help@acme.example", ("ana@example.com",))
    assert mail.message["Subject"] == "Re: Where is order A1001?"
    assert mail.message.get_content().strip() == "It ships today."
    assert b"\r\nSubject: Re: Where is order A1001?\r\n" in mail.raw
    assert mail.tls == encrypted
    assert mail.login == sink_options.get("username")


@pytest.mark.parametrize(
    ("sink_options", "client_options", "code"),
    [
        ({"mode": "starttls", "require_starttls": True}, {"start_tls": False}, 530),
        ({"username": "bot", "password": "pw"}, {}, 530),
        ({"username": "bot", "password": "pw"}, {"username": "bot", "password": "nope"}, 535),
    ],
    ids=["starttls-required", "auth-required", "wrong-password"],
)
async def test_the_sink_refuses_a_client_that_skips_tls_or_auth(
    make_smtp_sink: SinkFactory, sink_options: dict[str, Any], client_options: dict[str, Any], code: int
) -> None:
    sink = await make_smtp_sink(**sink_options)
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await send(sink, reply(), **client_options)
    assert refused.value.code == code
    assert sink.mails == []


@pytest.mark.parametrize("mechanism", ["auth_plain", "auth_login"])
async def test_the_sink_takes_auth_plain_and_login(make_smtp_sink: SinkFactory, mechanism: str) -> None:
    sink = await make_smtp_sink(username="bot", password="pw")
    async with aiosmtplib.SMTP(hostname=sink.host, port=sink.port, start_tls=False, timeout=10) as smtp:
        await smtp.ehlo()
        await getattr(smtp, mechanism)("bot", "pw")
        await smtp.send_message(reply())
    [mail] = await sink.wait_for(1)
    assert mail.login == "bot"


async def test_fail_next_answers_451_once_then_accepts(smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_next(451, "4.3.0 Try again later")
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await send(smtp_sink, reply())
    assert (refused.value.code, refused.value.message) == (451, "4.3.0 Try again later")
    assert smtp_sink.mails == []
    await send(smtp_sink, reply())
    assert len(await smtp_sink.wait_for(1)) == 1
    assert smtp_sink.refused == [("DATA", "451 4.3.0 Try again later")]


async def test_fail_until_cleared_refuses_every_recipient_until_cleared(smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_until_cleared(550, "5.1.1 No such user", stage="RCPT")
    for _ in range(2):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await send(smtp_sink, reply())
        assert [error.code for error in refused.value.recipients] == [550]
    smtp_sink.clear_failures()
    await send(smtp_sink, reply())
    assert len(await smtp_sink.wait_for(1)) == 1


async def test_a_dropped_connection_after_data_keeps_the_mail_so_a_retry_duplicates_it(smtp_sink: SmtpSink) -> None:
    smtp_sink.drop_connection_after_data_once()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await send(smtp_sink, reply())
    assert len(smtp_sink.mails) == 1  # taken, though the client could not know
    await send(smtp_sink, reply())
    assert len(await smtp_sink.wait_for(2)) == 2


async def test_wait_for_wakes_on_each_mail_and_says_what_it_saw_on_timeout(smtp_sink: SmtpSink) -> None:
    waiting = asyncio.create_task(smtp_sink.wait_for(2))
    await send(smtp_sink, reply("Re: one"))
    await send(smtp_sink, reply("Re: two"))
    assert [mail.message["Subject"] for mail in await waiting] == ["Re: one", "Re: two"]
    with pytest.raises(TimeoutError, match="2 mails, not 3"):
        await smtp_sink.wait_for(3, timeout=0.05)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"mode": "ssl"}, "mode must be"),
        ({"require_starttls": True}, "require_starttls needs"),
        ({"username": "bot"}, "both username and password"),
    ],
)
def test_the_sink_rejects_contradictory_options(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        SmtpSink(**options)


def test_failure_codes_must_be_4xx_or_5xx() -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        SmtpSink().fail_next(250, "OK")


def test_only_tests_import_the_harness() -> None:
    package = Path(__file__).resolve().parents[3] / "connectors" / "email"
    importers = [
        path.relative_to(package.parent).as_posix()
        for path in package.rglob("*.py")
        if "testing" not in path.relative_to(package).parts
        and re.search(r"^\s*(from|import)\s+connectors\.email\.testing", path.read_text(), re.MULTILINE)
    ]
    assert importers == []
