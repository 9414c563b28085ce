"""Reading the support mailbox over IMAP (aioimaplib): IDLE or polling, a UID cursor, nothing lost.

One loop per mailbox, on a task of its own:

    connect (TLS, STARTTLS or plain) → LOGIN → SELECT (UIDVALIDITY, UIDNEXT)
      → new mail: UID SEARCH UID last+1:*      (first start or a new UIDVALIDITY: UID SEARCH UNSEEN)
          → per UID, oldest first: RFC822.SIZE, then BODY.PEEK[] (capped at max_mail_bytes; PEEK keeps it unread)
          → handle(raw)                        stored in the core's inbox, or recognised as stored before
          → UID STORE +FLAGS (\\Seen), or UID MOVE to ``move_to``
          → the cursor (UIDVALIDITY, last UID) is saved
      → wait: IDLE (re-issued every ``idle_renew_s``, before servers drop it at 30 min) or sleep
        ``poll_interval_s`` when the server has no IDLE
    any error → close, wait (1 s doubling to 60 s), connect again

A mail is flagged or moved only after ``handle`` returned, so a crash in between fetches it again at
the next start; the core's inbox recognises it by its Message-ID (the external id), also after the
server changed UIDVALIDITY, and it is answered once. A mail ``handle`` declines (an auto-reply, a
bounce) is left unread for the people who read the mailbox.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aioimaplib import aioimaplib

from connectors.email.settings import ImapSettings

__all__ = ["Cursor", "Handled", "ImapError", "Mailbox", "tls_context"]

log = logging.getLogger("supportbot.email")

Handled = Literal["stored", "skipped"]
"""``stored``: in the core's inbox (now or before), flag it; ``skipped``: not for the bot, leave it unread."""

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_EXISTS = re.compile(rb"^\* \d+ EXISTS")
_RECONNECT_MAX_S = 60.0


class ImapError(Exception):
    """The server refused a command (the reason is its answer)."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where reading stopped: the mailbox's UIDVALIDITY and the last UID handled."""

    uidvalidity: int
    last_uid: int


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A client TLS context checking the server's certificate against the system's CAs or ``ca_file``."""
    return ssl.create_default_context(cafile=ca_file)


class Mailbox:
    """The reading loop of one mailbox; see the module's docstring.

    Args:
        settings: the IMAP server and mailbox.
        handle: takes one raw mail (and whether it was cut at ``max_mail_bytes``); returns once it is
            stored. An exception leaves the mail unflagged, to be fetched again.
        load_cursor, save_cursor: where the cursor is kept (the core's channel state).
        max_mail_bytes: a bigger mail is fetched only up to this size.
        poll_interval_s: the wait between two looks when the server has no IDLE.
    """

    def __init__(
        self,
        settings: ImapSettings,
        *,
        handle: Callable[[bytes, bool], Awaitable[Handled]],
        load_cursor: Callable[[], Awaitable[Cursor | None]],
        save_cursor: Callable[[Cursor], Awaitable[None]],
        max_mail_bytes: int,
        poll_interval_s: float,
    ) -> None:
        self.settings = settings
        self.handle = handle
        self.load_cursor = load_cursor
        self.save_cursor = save_cursor
        self.max_mail_bytes = max_mail_bytes
        self.poll_interval_s = poll_interval_s
        self.connected = asyncio.Event()
        """Set while logged in with the mailbox selected (tests wait on it)."""
        self.fetched = 0
        """Mails fetched since the start (tests and the benchmark read it)."""
        self.idles = 0
        """IDLE commands issued since the start (renewed every ``idle_renew_s``)."""
        self._task: asyncio.Task[None] | None = None
        self._client: aioimaplib.IMAP4 | None = None
        self._lost = asyncio.Event()
        self._new_mail = asyncio.Event()
        self._folder_made = False

    @classmethod
    async def probe(cls, settings: ImapSettings) -> str:
        """Log in and select the mailbox once, reading nothing; what was found, as one line (for a set-up
        check). Raises what the connection or the server raised."""

        async def skip(raw: bytes, truncated: bool) -> Handled:
            return "skipped"  # never called: nothing is read

        async def no_cursor() -> Cursor | None:
            return None

        async def keep(cursor: Cursor) -> None:
            return None

        mailbox = cls(settings, handle=skip, load_cursor=no_cursor, save_cursor=keep, max_mail_bytes=1,
                      poll_interval_s=60)  # fmt: skip
        try:
            client = await mailbox._connect()
            selected = await mailbox._command(client.select(mailbox._quoted(settings.mailbox)), "SELECT")
            count = next((bytes(line).split()[0].decode() for line in selected.lines
                          if isinstance(line, bytes) and line.endswith(b"EXISTS")), "?")  # fmt: skip
            waits = "IDLE" if settings.idle and client.has_capability("IDLE") else "polling (no IDLE)"
            moves = "; MOVE available" if client.has_capability("MOVE") else ""
            return f"{settings.mailbox} has {count} mails; new mail by {waits}{moves}"
        finally:
            await mailbox._close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="email-imap")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._close()

    async def run(self) -> None:
        """Read the mailbox until cancelled, reconnecting with backoff."""
        wait = 1.0
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server went away, refused, or a mail could not be stored
                if time.monotonic() - started > _RECONNECT_MAX_S:
                    wait = 1.0  # it had worked for a while: a new failure starts the backoff again
                log.warning("email: IMAP %s:%d: %s: %s; connecting again in %.0f s", self.settings.host,
                            self.settings.effective_port, type(exc).__name__, exc, wait)  # fmt: skip
            self.connected.clear()
            await self._close()
            await asyncio.sleep(wait)
            wait = min(_RECONNECT_MAX_S, wait * 2)

    async def _session(self) -> None:
        client = await self._connect()
        selected = await self._command(client.select(self._quoted(self.settings.mailbox)), "SELECT")
        uidvalidity, uidnext = _number(_UIDVALIDITY, selected.lines), _number(_UIDNEXT, selected.lines)
        if uidvalidity is None:
            raise ImapError("the server's SELECT answer has no UIDVALIDITY")
        self.connected.set()
        idle = self.settings.idle and client.has_capability("IDLE")
        log.info("email: reading %s on %s:%d (%s)", self.settings.mailbox, self.settings.host,
                 self.settings.effective_port, "IDLE" if idle else f"every {self.poll_interval_s:.0f} s")  # fmt: skip
        while True:
            self._new_mail.clear()
            await self._read_new(client, uidvalidity, uidnext)
            uidnext = None
            if self._new_mail.is_set():
                continue  # mail arrived while reading: look again before waiting
            if idle:
                await self._idle(client)
            else:
                await asyncio.sleep(self.poll_interval_s)
                await self._command(client.noop(), "NOOP")

    async def _connect(self) -> aioimaplib.IMAP4:
        settings = self.settings
        context = tls_context(settings.ca_file) if settings.ssl or settings.starttls else None
        client: aioimaplib.IMAP4
        if settings.ssl:
            client = aioimaplib.IMAP4_SSL(settings.host, settings.effective_port, timeout=settings.timeout_s,
                                          ssl_context=context)  # fmt: skip
        else:
            client = aioimaplib.IMAP4(settings.host, settings.effective_port, timeout=settings.timeout_s)
        self._client = client
        # aioimaplib leaves a command waiting forever when the connection drops: notice it ourselves.
        self._lost = lost = asyncio.Event()
        client.protocol.conn_lost_cb = lambda exc: lost.set()
        # A server tells of new mail (* N EXISTS) whenever it likes; aioimaplib drops the notice when it
        # comes with the answer to another command (a FETCH, a STORE). Catch every one on its way in.
        self._new_mail = news = asyncio.Event()
        untagged = client.protocol._untagged_response

        def notice(line: bytes) -> Any:
            if _EXISTS.match(line):
                news.set()
            return untagged(line)

        client.protocol._untagged_response = notice
        await client.wait_hello_from_server()
        if settings.starttls:
            assert context is not None
            await _starttls(client, context, settings.host)
        if settings.username is not None and settings.password is not None:
            await self._command(client.login(settings.username, settings.password.get_secret_value()), "LOGIN")
        return client

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if client.has_pending_idle():
                client.idle_done()
            await asyncio.wait_for(client.logout(), 2)
        except Exception:
            pass
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            transport.close()

    async def _read_new(self, client: aioimaplib.IMAP4, uidvalidity: int, uidnext: int | None) -> None:
        cursor = await self.load_cursor()
        if cursor is None or cursor.uidvalidity != uidvalidity:
            # First start, or the server renumbered the mailbox: what is unread is new to us; the inbox
            # recognises by Message-ID any of it that was stored before.
            if cursor is not None:
                log.warning("email: %s has a new UIDVALIDITY (%d, was %d); reading its unread mail again",
                            self.settings.mailbox, uidvalidity, cursor.uidvalidity)  # fmt: skip
            uids = await self._search(client, "UNSEEN")
            last = max((uidnext or 1) - 1, max(uids, default=0))
            # The cursor moves only at the end: read mail lies between these UIDs, and a crash halfway
            # must not make it look new; the next start takes the unread mail again instead.
            await self._take(client, uids, None)
            await self.save_cursor(Cursor(uidvalidity, last))
            return
        uids = [uid for uid in await self._search(client, "UID", f"{cursor.last_uid + 1}:*") if uid > cursor.last_uid]
        await self._take(client, uids, uidvalidity)

    async def _take(self, client: aioimaplib.IMAP4, uids: list[int], uidvalidity: int | None) -> None:
        for uid in sorted(uids):
            fetched = await self._fetch(client, uid)
            if fetched is not None:
                self.fetched += 1
                if await self.handle(*fetched) == "stored":
                    await self._done(client, uid)
            if uidvalidity is not None:
                await self.save_cursor(Cursor(uidvalidity, uid))

    async def _fetch(self, client: aioimaplib.IMAP4, uid: int) -> tuple[bytes, bool] | None:
        """The mail (cut at ``max_mail_bytes``) and whether it was cut; None when it is gone (deleted by
        someone else since the search)."""
        sized = await self._command(client.uid("fetch", str(uid), "(RFC822.SIZE)"), "FETCH")
        size = _number(_SIZE, sized.lines) or 0
        truncated = size > self.max_mail_bytes
        part = f"BODY.PEEK[]<0.{self.max_mail_bytes}>" if truncated else "BODY.PEEK[]"
        if truncated:
            log.warning("email: mail UID %d is %d bytes; reading its first %d", uid, size, self.max_mail_bytes)
        # A big mail takes its time: at least 100 KB/s is expected of the server.
        slow = self.settings.timeout_s + min(size, self.max_mail_bytes) / 100_000
        fetched = await self._command(client.uid("fetch", str(uid), f"({part})"), "FETCH", wait=slow)
        for line in fetched.lines:
            if isinstance(line, bytearray):
                return bytes(line), truncated
        log.warning("email: mail UID %d is gone from %s (deleted meanwhile?); passed over", uid, self.settings.mailbox)
        return None

    async def _done(self, client: aioimaplib.IMAP4, uid: int) -> None:
        folder = self.settings.move_to
        if folder is not None and client.has_capability("MOVE"):
            if not self._folder_made:
                await self._command(client.create(self._quoted(folder)), "CREATE", ok=False)  # "exists" is fine
                self._folder_made = True
            await self._command(client.uid("move", str(uid), self._quoted(folder)), "MOVE")
            return
        await self._command(client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Seen)"), "STORE")

    async def _search(self, client: aioimaplib.IMAP4, *criteria: str) -> list[int]:
        found = await self._command(client.uid_search(*criteria, charset=None), "SEARCH")
        uids: list[int] = []
        for line in found.lines[:-1]:  # the last is the completion's text
            # aioimaplib strips "* SEARCH" from the untagged answer; servers may send it in several lines
            words = bytes(line).split()
            if words[:1] == [b"SEARCH"]:
                words = words[1:]
            if words and all(word.isdigit() for word in words):
                uids.extend(int(word) for word in words)
        return uids

    async def _idle(self, client: aioimaplib.IMAP4) -> None:
        """Wait in IDLE until the server reports new mail or ``idle_renew_s`` passes (then IDLE is renewed)."""
        idle = await self._command(client.idle_start(timeout=self.settings.idle_renew_s), "IDLE", ok=False)
        self.idles += 1
        news = asyncio.ensure_future(self._new_mail.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({news, lost}, timeout=self.settings.idle_renew_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            news.cancel()
            lost.cancel()
        if self._lost.is_set():
            idle.cancel()
            raise ConnectionError("IDLE: the server closed the connection")
        if client.has_pending_idle():
            client.idle_done()
        await self._command(idle, "IDLE")
        queue = client.protocol.idle_queue  # what aioimaplib queued meanwhile is known already
        while not queue.empty():
            queue.get_nowait()

    async def _command(self, call: Awaitable[Any], name: str, *, wait: float | None = None, ok: bool = True) -> Any:
        """Await one command, failing at once if the connection drops, or after ``wait`` s (``timeout_s``)."""
        if self._lost.is_set():
            if inspect.iscoroutine(call):
                call.close()
            raise ConnectionError(f"{name}: the server closed the connection")
        command = asyncio.ensure_future(call)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({command, lost}, timeout=wait or self.settings.timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            lost.cancel()
        if command not in done:
            command.cancel()
            if lost in done:
                raise ConnectionError(f"{name}: the server closed the connection")
            raise TimeoutError(f"{name}: no answer from the server in {wait or self.settings.timeout_s:.0f} s")
        response = command.result()
        if ok and getattr(response, "result", "OK") != "OK":
            raise ImapError(f"{name}: {_text(response.lines)}")
        return response

    @staticmethod
    def _quoted(mailbox: str) -> str:
        return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _starttls(client: aioimaplib.IMAP4, context: ssl.SSLContext, host: str) -> None:
    """Upgrade the connection with STARTTLS (aioimaplib has the command but no helper), then ask for the
    capabilities again (RFC 3501: those from before TLS must not be trusted)."""
    protocol = client.protocol
    if "STARTTLS" not in protocol.capabilities:
        raise ImapError("the server does not offer STARTTLS; set imap.ssl: true (port 993) or imap.starttls: false")
    command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
    response = await asyncio.wait_for(protocol.execute(command), client.timeout)
    if response.result != "OK":
        raise ImapError(f"STARTTLS: {_text(response.lines)}")
    loop = asyncio.get_running_loop()
    transport = await loop.start_tls(protocol.transport, protocol, context, server_hostname=host)
    if transport is None:
        raise ImapError("STARTTLS: the TLS handshake did not complete")
    protocol.transport = transport
    await asyncio.wait_for(protocol.capability(), client.timeout)


def _number(pattern: re.Pattern[bytes], lines: list[Any]) -> int | None:
    for line in lines:
        if isinstance(line, bytes | bytearray) and (found := pattern.search(bytes(line[:200]))):
            return int(found.group(1))
    return None


def _text(lines: list[Any]) -> str:
    return " ".join(bytes(line).decode("utf-8", "replace") for line in lines if isinstance(line, bytes))[:300]
