"""The IMAP reading loop against a real Dovecot on 127.0.0.1: IDLE, polling, the cursor, UIDVALIDITY,
reconnects, flags set only after a mail is stored, and big mail read in part."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from connectors.email.imap import Cursor, Handled, Mailbox
from connectors.email.settings import ImapSettings
from connectors.email.testing import Dovecot


def mail(n: int, body: bytes = b"Where is my order?") -> bytes:
    return (b"From: Ana <ana@example.com>\r\nTo: help@acme.example\r\nSubject: Question %d\r\n"
            b"Message-ID: <q%d@example.com>\r\n\r\n" % (n, n)) + body + b"\r\n"  # fmt: skip


@dataclass
class Reader:
    """The mailbox loop with a handler that records what it got, and a cursor kept in memory."""

    dovecot: Dovecot
    settings: dict[str, Any] = field(default_factory=dict)
    got: list[tuple[bytes, bool]] = field(default_factory=list)
    cursor: Cursor | None = None
    fail: BaseException | None = None
    skip: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    mailbox: Mailbox | None = None
    max_mail_bytes: int = 25_000_000

    async def handle(self, raw: bytes, truncated: bool) -> Handled:
        if self.fail is not None:
            self.changed.set()
            raise self.fail
        self.got.append((raw, truncated))
        self.changed.set()
        return "skipped" if self.skip else "stored"

    async def load(self) -> Cursor | None:
        return self.cursor

    async def save(self, cursor: Cursor) -> None:
        self.cursor = cursor

    def start(self, **overrides: Any) -> Mailbox:
        d = self.dovecot
        options = {"host": d.host, "port": d.port, "starttls": True, "ca_file": str(d.ca_file),
                   "username": d.username, "password": d.password, **self.settings, **overrides}  # fmt: skip
        self.mailbox = Mailbox(
            ImapSettings.model_validate(options), handle=self.handle, load_cursor=self.load, save_cursor=self.save,
            max_mail_bytes=self.max_mail_bytes, poll_interval_s=0.5,
        )  # fmt: skip
        self.mailbox.start()
        return self.mailbox

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while len(self.got) < count:
                self.changed.clear()
                await self.changed.wait()


async def seen(dovecot: Dovecot, uid: int) -> None:
    """Until the server shows the mail flagged (the server has no event to wait on: it is asked)."""
    for _ in range(200):
        if "\\Seen" in await dovecot.flags(uid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"mail {uid} was not flagged \\Seen")


@pytest.fixture
async def reader(dovecot: Dovecot) -> AsyncIterator[Reader]:
    found = Reader(dovecot)
    yield found
    if found.mailbox is not None:
        await found.mailbox.stop()


async def test_idle_takes_new_mail_at_once_and_flags_it_after_it_is_stored(reader: Reader, dovecot: Dovecot) -> None:
    mailbox = reader.start()
    await asyncio.wait_for(mailbox.connected.wait(), 10)
    started = time.monotonic()
    uid = await dovecot.append(mail(1))
    await reader.wait_for(1)
    assert time.monotonic() - started < 3.0  # pushed by IDLE, not found by a poll
    assert reader.got[0] == (mail(1), False)
    await seen(dovecot, uid)
    assert reader.cursor is not None and reader.cursor.last_uid == uid


async def test_first_start_takes_unread_mail_only_then_everything_new(reader: Reader, dovecot: Dovecot) -> None:
    await dovecot.append(mail(1), flags=["\\Seen"])  # read by a person before the bot started
    unread = await dovecot.append(mail(2))
    reader.start()
    await reader.wait_for(1)
    await dovecot.append(mail(3))
    await reader.wait_for(2)
    assert [raw for raw, _ in reader.got] == [mail(2), mail(3)]
    assert unread == 2


async def test_mail_arriving_while_others_are_read_is_not_left_waiting(reader: Reader, dovecot: Dovecot) -> None:
    # The server's new-mail notice can come with the answer to a FETCH or STORE, where aioimaplib drops it;
    # the loop must look again rather than wait in IDLE for a notice that already came.
    slow = reader.handle

    async def handle(raw: bytes, truncated: bool) -> Handled:
        await asyncio.sleep(0.05)  # storing takes a moment: more mail arrives meanwhile
        return await slow(raw, truncated)

    reader.handle = handle  # type: ignore[method-assign]
    mailbox = reader.start()
    await asyncio.wait_for(mailbox.connected.wait(), 10)
    for n in range(30):
        await dovecot.append(mail(n))
    await reader.wait_for(30, timeout=15)
    assert [raw for raw, _ in reader.got] == [mail(n) for n in range(30)]


async def test_idle_is_renewed_before_the_server_would_drop_it(reader: Reader, dovecot: Dovecot) -> None:
    mailbox = reader.start(idle_renew_s=1)
    await asyncio.wait_for(mailbox.connected.wait(), 10)
    for _ in range(100):
        if mailbox.idles >= 3:
            break
        await asyncio.sleep(0.05)
    assert mailbox.idles >= 3  # each renewal ends IDLE, looks for mail, and starts it again
    started = time.monotonic()
    await dovecot.append(mail(1))
    await reader.wait_for(1)
    assert time.monotonic() - started < 3.0


async def test_polling_without_idle(reader: Reader, dovecot: Dovecot) -> None:
    mailbox = reader.start(idle=False)
    await asyncio.wait_for(mailbox.connected.wait(), 10)
    await dovecot.append(mail(1))
    await reader.wait_for(1, timeout=5)  # poll_interval_s is 0.5 here


async def test_a_mail_that_could_not_be_stored_stays_unread_and_is_read_again(reader: Reader, dovecot: Dovecot) -> None:
    reader.fail = RuntimeError("the database is away")
    reader.start()
    uid = await dovecot.append(mail(1))
    async with asyncio.timeout(10):
        await reader.changed.wait()
    assert "\\Seen" not in await dovecot.flags(uid)
    assert reader.cursor is None or reader.cursor.last_uid < uid
    reader.fail = None
    await reader.wait_for(1, timeout=15)  # after the reconnect's backoff
    await seen(dovecot, uid)


async def test_a_skipped_mail_is_left_unread_and_not_read_again(reader: Reader, dovecot: Dovecot) -> None:
    reader.skip = True
    reader.start()
    uid = await dovecot.append(mail(1))
    await reader.wait_for(1)
    reader.skip = False
    await dovecot.append(mail(2))
    await reader.wait_for(2)
    assert "\\Seen" not in await dovecot.flags(uid)
    assert [raw for raw, _ in reader.got] == [mail(1), mail(2)]


async def test_a_new_uidvalidity_reads_the_unread_mail_again(reader: Reader, dovecot: Dovecot) -> None:
    reader.start()
    await seen(dovecot, await dovecot.append(mail(1)))
    for _ in range(100):  # the cursor is saved right after the flag
        if (before := reader.cursor) is not None:
            break
        await asyncio.sleep(0.01)
    # The server renumbers the mailbox (a restore from a backup) while the loop runs; it reconnects and
    # takes what is unread (mail 1 was flagged once stored), whatever its new UID.
    await dovecot.reset_uidvalidity()
    await dovecot.append(mail(2))
    await reader.wait_for(2, timeout=20)
    assert [raw for raw, _ in reader.got] == [mail(1), mail(2)]
    assert before is not None
    for _ in range(200):  # saved once the unread mail is taken
        if reader.cursor is not None and reader.cursor.uidvalidity != before.uidvalidity:
            break
        await asyncio.sleep(0.01)
    assert reader.cursor is not None and reader.cursor.uidvalidity != before.uidvalidity


async def test_it_reconnects_when_the_server_restarts(reader: Reader, dovecot: Dovecot) -> None:
    mailbox = reader.start()
    await asyncio.wait_for(mailbox.connected.wait(), 10)
    await dovecot.restart()
    await dovecot.append(mail(1))
    await reader.wait_for(1, timeout=20)


async def test_implicit_tls(reader: Reader, dovecot: Dovecot) -> None:
    reader.start(port=dovecot.ssl_port, ssl=True, starttls=False)
    await dovecot.append(mail(1))
    await reader.wait_for(1)


async def test_a_wrong_certificate_authority_is_refused(reader: Reader, dovecot: Dovecot) -> None:
    mailbox = reader.start(port=dovecot.ssl_port, ssl=True, starttls=False, ca_file=None)  # the system's CAs
    await dovecot.append(mail(1))
    await asyncio.sleep(1.0)
    assert not mailbox.connected.is_set() and reader.got == []


async def test_a_big_mail_is_read_up_to_the_cap(reader: Reader, dovecot: Dovecot) -> None:
    reader.max_mail_bytes = 200_000
    reader.start()
    big = mail(1, b"Please look at the attached log.\r\n" + b"x" * 998 + b"\r\n" * 1 + (b"y" * 998 + b"\r\n") * 1000)
    await dovecot.append(big)
    await reader.wait_for(1)
    raw, truncated = reader.got[0]
    assert truncated and len(raw) == 200_000 and raw.startswith(big[:1000])


async def test_a_stored_mail_is_moved_when_move_to_is_set(reader: Reader, dovecot: Dovecot) -> None:
    reader.start(move_to="Processed")
    uid = await dovecot.append(mail(1))
    await reader.wait_for(1)
    for _ in range(200):
        if not [m for m in await dovecot.messages() if m.uid == uid]:
            break
        await asyncio.sleep(0.05)
    assert await dovecot.messages() == []  # out of the INBOX, into Processed
