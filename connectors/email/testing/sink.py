"""``SmtpSink``: an SMTP server on 127.0.0.1 (aiosmtpd) that records the mail it accepts, for tests and benchmarks.

It speaks plain SMTP, STARTTLS (offered, or required) or implicit TLS ("SMTPS") with the test CA's certificate
(``ca_file``), with AUTH PLAIN/LOGIN required when a username is given (also without TLS, so plain tests can
authenticate). Failures are injected per stage: ``fail_next(451, ...)`` answers the next DATA with a 4xx so a
client retries, ``fail_until_cleared(550, ...)`` keeps refusing, ``drop_connection_after_data_once()`` keeps a
mail but closes the connection before answering (the client cannot know it was taken).

It serves on the event loop that starts it, not in aiosmtpd's ``Controller`` thread: ``wait_for`` and the
failure switches then need no locking, and the sink's work is counted with the code under test, as FakeSlack's.

Example::

    async with SmtpSink(mode="starttls", username="bot", password="pw") as sink:
        await aiosmtplib.send(message, hostname=sink.host, port=sink.port, start_tls=True,
                              tls_context=client_context(), username="bot", password="pw")
        [mail] = await sink.wait_for(1)
        assert mail.tls and mail.message["Subject"] == "Re: Order A1001"
"""

from __future__ import annotations

import asyncio
import ssl
import time
import warnings
import weakref
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from connectors.email.testing.certs import server_certs, server_context

Mode = Literal["plain", "starttls", "tls"]
Stage = Literal["RCPT", "DATA"]


@dataclass(frozen=True, kw_only=True, slots=True)
class SentMail:
    """A mail the sink accepted.

    Attributes:
        mail_from: the envelope sender (``MAIL FROM``; ``""`` for a null sender).
        rcpt_tos: the envelope recipients (``RCPT TO``), in order.
        raw: the message as sent (after dot-unstuffing), CRLF line ends.
        message: ``raw`` parsed with the stdlib's default (modern) policy.
        received_at: ``time.monotonic()`` when the DATA ended.
        tls: whether the session was encrypted (STARTTLS or implicit TLS).
        login: the user who authenticated, if any.
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    received_at: float
    tls: bool
    login: str | None


@dataclass(kw_only=True, slots=True)
class _Failure:
    stage: Stage
    reply: str
    remaining: int | None  # None: until cleared


class SmtpSink:
    """An SMTP server recording the mail it accepts; an async context manager.

    Args:
        mode: ``"plain"``, ``"starttls"`` (offered after EHLO) or ``"tls"`` (TLS from the first byte).
        require_starttls: in ``"starttls"`` mode, refuse every command but EHLO/NOOP/QUIT before STARTTLS (530).
        username, password: when given, AUTH PLAIN/LOGIN with them is required before MAIL (530 otherwise).
        data_size_limit: the SIZE the sink announces and enforces (552 above it).

    Attributes:
        host: ``127.0.0.1``.
        port: the port it listens on, once started.
        ca_file: the PEM file of the CA a client must trust for STARTTLS or TLS.
        mails: the mails accepted, in order.
        refused: ``(stage, reply)`` of each injected failure answered, in order.
        connections: the connections accepted so far.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        mode: Mode = "plain",
        require_starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        data_size_limit: int = 64 * 1024 * 1024,
    ) -> None:
        if mode not in ("plain", "starttls", "tls"):
            raise ValueError(f"SmtpSink: mode must be 'plain', 'starttls' or 'tls', got {mode!r}")
        if require_starttls and mode != "starttls":
            raise ValueError("SmtpSink: require_starttls needs mode='starttls'")
        if (username is None) != (password is None):
            raise ValueError("SmtpSink: give both username and password, or neither")
        self.mode: Mode = mode
        self.require_starttls = require_starttls
        self.username = username
        self.password = password
        self.data_size_limit = data_size_limit
        self.ca_file = server_certs().ca_file
        self.port = 0
        self.mails: list[SentMail] = []
        self.refused: list[tuple[Stage, str]] = []
        self.connections = 0
        self._failures: list[_Failure] = []
        self._drops = 0
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()  # open ones, to drop on close
        self._context: ssl.SSLContext | None = None
        self._changed = asyncio.Condition()  # bound to a loop at its first use

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts listening on a free port of 127.0.0.1, on the running event loop."""
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()  # this loop's
        self._context = server_context()
        self._server = await loop.create_server(
            self._protocol, self.host, 0, ssl=self._context if self.mode == "tls" else None
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stops listening and drops the open connections."""
        if self._server is None:
            return
        self._server.close()
        tasks: list[asyncio.Future[Any]] = []
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.abort()  # type: ignore[attr-defined]
            task = getattr(session, "_handler_coroutine", None)  # aiosmtpd's task for the connection
            if task is not None:
                tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> SmtpSink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- what a test reads ----------------------------------------------------------------------------------------

    async def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[SentMail]:  # noqa: ASYNC109 - how long a test waits
        """Waits until ``count`` mails were accepted (woken by each one, no polling); returns all accepted so far.

        Raises:
            TimeoutError: fewer arrived within ``timeout`` seconds (the message says how many, and what was refused).
        """
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: len(self.mails) >= count), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"SmtpSink: {len(self.mails)} mails, not {count}, within {timeout}s "
                    f"(refused: {self.refused or 'none'}; connections: {self.connections})"
                ) from None
        return list(self.mails)

    # -- failure injection ------------------------------------------------------------------------------------------

    def fail_next(self, code: int, text: str, times: int = 1, *, stage: Stage = "DATA") -> None:
        """Answers the next ``times`` commands of ``stage`` with ``code text`` (queued after earlier failures).

        A 4xx asks the client to retry later; a 5xx refuses for good. A mail refused at DATA is not recorded.
        """
        if times < 1:
            raise ValueError(f"SmtpSink.fail_next: times must be at least 1, got {times}")
        self._failures.append(_Failure(stage=stage, reply=_reply(code, text), remaining=times))

    def fail_until_cleared(self, code: int, text: str, *, stage: Stage = "DATA") -> None:
        """Answers every command of ``stage`` with ``code text`` until ``clear_failures()``."""
        self._failures.append(_Failure(stage=stage, reply=_reply(code, text), remaining=None))

    def clear_failures(self) -> None:
        """Accepts everything again (queued failures and a pending drop are forgotten)."""
        self._failures.clear()
        self._drops = 0

    def drop_connection_after_data_once(self) -> None:
        """Records the next mail, then closes the connection instead of answering its DATA."""
        self._drops += 1

    # -- aiosmtpd's side ---------------------------------------------------------------------------------------------

    def _protocol(self) -> SMTP:
        with warnings.catch_warnings():
            # aiosmtpd warns that AUTH without TLS is unsafe; here it is the plain mode under test.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
            session = SMTP(
                self,
                hostname="localhost",  # not socket.getfqdn(): no name lookups in tests
                data_size_limit=self.data_size_limit,
                tls_context=self._context if self.mode == "starttls" else None,
                require_starttls=self.require_starttls,
                auth_required=self.username is not None,
                auth_require_tls=False,
                authenticator=self._authenticate,
                loop=asyncio.get_running_loop(),
            )
        self._sessions.add(session)
        self.connections += 1
        return session

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if self.username is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = auth_data.login == self.username.encode() and auth_data.password == (self.password or "").encode()
        return AuthResult(success=ok, handled=False, auth_data=self.username if ok else None)

    def _take_failure(self, stage: Stage) -> str | None:
        for failure in self._failures:
            if failure.stage != stage:
                continue
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining == 0:
                    self._failures.remove(failure)
            self.refused.append((stage, failure.reply))
            return failure.reply
        return None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self._take_failure("RCPT")
        if refusal is not None:
            await self._notify()
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        refusal = self._take_failure("DATA")
        if refusal is not None:
            await self._notify()
            return refusal
        raw = envelope.original_content or b""
        transport = server.transport
        self.mails.append(
            SentMail(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                raw=raw,
                message=BytesParser(policy=default_policy).parsebytes(raw),
                received_at=time.monotonic(),
                tls=session.ssl is not None
                or (transport is not None and transport.get_extra_info("ssl_object") is not None),
                login=session.auth_data if isinstance(session.auth_data, str) else None,
            )
        )
        await self._notify()
        if self._drops and transport is not None:
            self._drops -= 1
            transport.abort()  # type: ignore[attr-defined]
            # aiosmtpd cancels this handler when it sees the connection go; never answer.
            await asyncio.get_running_loop().create_future()
        return "250 OK: queued"

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _reply(code: int, text: str) -> str:
    if not 400 <= code <= 599:
        raise ValueError(f"SmtpSink: a failure's code must be 4xx or 5xx, got {code}")
    if "\r" in text or "\n" in text:
        raise ValueError("SmtpSink: a failure's text must be one line")
    return f"{code} {text}"
