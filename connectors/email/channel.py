"""Sending replies by SMTP (aiosmtplib): threaded, marked as automatic when the bot wrote them, capped per sender.

``EmailChannel.deliver`` turns one outbox row into one mail:

- ``From`` the support address (an operator's reply: "Name (Company)"), ``To`` the customer's own
  From address as the thread's mail gave it (never Reply-To);
- ``Message-ID`` made from the outbox row and this installation's token, the same on every try, so a
  resend after a crash is recognisable as the same mail; ``In-Reply-To`` the customer's mail being
  answered, ``References`` the thread's chain; ``Re:`` once and the thread's ``[#TAG]``;
- the bot's replies carry ``Auto-Submitted: auto-replied``, ``X-Auto-Response-Suppress: All`` and
  ``X-Loop`` (RFC 3834), a person's do not;
- a plain text part and, with ``html``, an HTML part.

A 4xx answer or a lost connection is a ``DeliveryError`` the outbox retries (at most
``retry_max_s`` apart); a 5xx gives up at once and operators are told on a ticket. The bot sends at
most ``replies_per_sender_per_hour`` replies to one address; further ones are given up the same way,
which ends a ping-pong with an auto-responder that does not mark its mail.
"""

from __future__ import annotations

import email.errors
import html
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any

import aiosmtplib

from connectors.email.imap import Cursor, Mailbox, tls_context
from connectors.email.loops import loop_headers
from connectors.email.receive import Receiver
from connectors.email.settings import EmailSettings
from connectors.email.state import Keeper, Thread
from connectors.email.threads import make_message_id, reply_subject
from supportbot.channels import ChannelBase, DeliveryError, Intake, Reply
from supportbot.config import LimitSettings

__all__ = ["EmailChannel", "compose_html"]

log = logging.getLogger("supportbot.email")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_LINK = re.compile(r"https?://[^\s<>()\"']+[^\s<>()\"'.,;:!?]")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ACTOR_PREFIX = re.compile(r"^[a-z]+:")


class EmailChannel(ChannelBase):
    """See the module's docstring."""

    name = "email"

    def __init__(self, settings: EmailSettings, keeper: Keeper, *, company: str, limits: LimitSettings) -> None:
        self.settings = settings
        self.keeper = keeper
        self.limits = limits
        self.from_name = settings.from_name or company or "Support"
        self.max_retry_interval_s = settings.retry_max_s
        self.sent = 0
        """Mails the SMTP server accepted since the start (tests and the benchmark read it)."""
        self.mailbox: Mailbox | None = None
        """The IMAP reading loop, once started."""
        self.exclusive_receiver = True  # one reader per mailbox, whichever worker it is

    async def start(self, intake: Intake) -> None:
        settings, limits = self.settings, self.limits
        receiver = Receiver(
            settings, self.keeper, intake, max_chars=limits.max_message_chars,
            max_images=limits.max_images_per_message, max_image_bytes=limits.max_image_bytes,
        )  # fmt: skip
        mailbox = settings.imap.mailbox

        async def load() -> Cursor | None:
            return await self.keeper.cursor(mailbox)

        async def save(cursor: Cursor) -> None:
            await self.keeper.save_cursor(mailbox, cursor)

        self.mailbox = Mailbox(
            settings.imap, handle=receiver.mail, load_cursor=load, save_cursor=save,
            max_mail_bytes=settings.max_mail_bytes, poll_interval_s=settings.poll_interval_s,
        )  # fmt: skip
        self.mailbox.start()

    async def stop(self) -> None:
        if self.mailbox is not None:
            await self.mailbox.stop()
            self.mailbox = None

    async def deliver(self, reply: Reply) -> str:
        address = reply.address
        to = address.get("to")
        if not isinstance(to, str) or "@" not in to:
            raise DeliveryError("the conversation has no email address to reply to", retryable=False)
        to = _ascii_address(to)
        person = reply.kind == "operator"
        message_id = make_message_id(
            domain=self.settings.domain, unique=f"{await self.keeper.install()}.{reply.outbox_id}"
        )
        try:
            message = await self.compose(reply, message_id=message_id, person=person)
            message.as_bytes()  # what cannot be written fails here, not in the middle of SMTP
        except (ValueError, TypeError, UnicodeError, email.errors.MessageError) as exc:
            raise DeliveryError(f"the reply cannot be written as a mail: {exc}", retryable=False) from exc
        cap = self.settings.replies_per_sender_per_hour
        if not person and not await self.keeper.reserve_reply(to, reply.outbox_id, cap=cap):
            raise DeliveryError(
                f"not sent: the bot already sent {cap} replies to this address in the last hour "
                "(connectors.email.replies_per_sender_per_hour); a loop with an auto-responder, or a customer "
                "an operator should answer",
                retryable=False,
            )
        if reply.key is not None:
            # Before sending: a customer's answer may arrive a moment after ours left.
            thread = Thread(
                key=reply.key, sender=to, verified=bool(address.get("verified")), tag=str(address.get("tag") or "")
            )
            await self.keeper.remember(message_id, thread)
        await self._send(message, to)
        self.sent += 1
        log.info("email: reply %d (%s) sent as %s", reply.outbox_id, reply.kind, message_id)
        return message_id

    async def compose(self, reply: Reply, *, message_id: str, person: bool) -> EmailMessage:
        """The mail for ``reply`` (see the module's docstring)."""
        address = reply.address
        settings = self.settings
        message = EmailMessage()
        # An operator's actor names where they acted ("api:olga", "slack:Olga Operator"); the mail shows the name.
        author = _ACTOR_PREFIX.sub("", _clean(reply.author))
        sender = f"{author} ({self.from_name})" if person and author else self.from_name
        message["From"] = Address(display_name=_clean(sender), addr_spec=settings.address or "")
        name = address.get("name")
        message["To"] = formataddr((_clean(name) if isinstance(name, str) else "", _ascii_address(str(address["to"]))))
        tag = address.get("tag")
        message["Subject"] = reply_subject(_clean(str(address.get("subject") or "")), str(tag) if tag else None)
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = message_id
        parent, chain = await self._parent(reply)
        if parent:
            message["In-Reply-To"] = parent
        if chain:
            message["References"] = " ".join(chain)
        if not person:
            for header, value in loop_headers(settings.address or "").items():
                message[header] = value
        message.set_content(reply.text.strip() + "\n")
        if settings.html:
            message.add_alternative(compose_html(reply.text), subtype="html")
        return message

    async def _parent(self, reply: Reply) -> tuple[str | None, list[str]]:
        """The customer's mail this answers (the turn's, else the conversation's newest) and the chain."""
        found: Mapping[str, Any] | None = await self.keeper.turn(reply.turn) if reply.turn is not None else None
        source = found if found and found.get("message_id") else reply.address
        parent = source.get("message_id")
        chain = [str(ref) for ref in source.get("references") or () if isinstance(ref, str)]
        return (str(parent) if parent else None), chain

    async def _send(self, message: EmailMessage, to: str) -> None:
        smtp = self.settings.smtp
        secure = smtp.ssl or smtp.starttls
        try:
            await aiosmtplib.send(
                message, sender=self.settings.address, recipients=[to], hostname=smtp.host, port=smtp.effective_port,
                username=smtp.username, password=smtp.password.get_secret_value() if smtp.password else None,
                use_tls=smtp.ssl, start_tls=smtp.starttls, timeout=smtp.timeout_s,
                tls_context=tls_context(smtp.ca_file) if secure else None,
            )  # fmt: skip
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refused.code for refused in exc.recipients]
            raise _refused(min(codes, default=550), "; ".join(refused.message for refused in exc.recipients)) from exc
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError) as exc:
            raise DeliveryError(f"SMTP {smtp.host}:{smtp.effective_port}: {exc}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _refused(exc.code, exc.message) from exc
        except (OSError, aiosmtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP {smtp.host}:{smtp.effective_port}: {type(exc).__name__}: {exc}") from exc


def _refused(code: int, text: str) -> DeliveryError:
    """4xx: try again later; 5xx (and anything else): the server will not take it."""
    transient = 400 <= code < 500
    what = "deferred" if transient else "refused"
    return DeliveryError(f"the SMTP server {what} the reply: {code} {text}"[:500], retryable=transient)


def compose_html(text: str) -> str:
    """The HTML part of a reply: paragraphs, line breaks, links and **bold**, everything else escaped."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text.strip()):
        pieces: list[str] = []
        start = 0
        for found in _LINK.finditer(block):  # links are found in the text, then each piece is escaped
            pieces.append(_BOLD.sub(r"<strong>\1</strong>", html.escape(block[start : found.start()])))
            url = html.escape(found.group(0), quote=True)
            pieces.append(f'<a href="{url}">{url}</a>')
            start = found.end()
        pieces.append(_BOLD.sub(r"<strong>\1</strong>", html.escape(block[start:])))
        paragraphs.append("<p>" + "".join(pieces).replace("\n", "<br>\n") + "</p>")
    body = "\n".join(paragraphs)
    return f'<!DOCTYPE html>\n<html><body style="font-family: sans-serif; line-height: 1.4">\n{body}\n</body></html>\n'


def _ascii_address(address: str) -> str:
    """The address as a header can carry it without SMTPUTF8: an international domain in IDNA form.

    Raises:
        DeliveryError: the local part is not ASCII (SMTPUTF8 is not supported yet); not retryable.
    """
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise DeliveryError(
            f"the address {address!r} has a non-ASCII local part, which needs SMTPUTF8 (not supported yet); "
            "an operator should answer from a mail program",
            retryable=False,
        )
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}" if not domain.isascii() else address
    except UnicodeError as exc:
        raise DeliveryError(f"the address {address!r} has a domain IDNA cannot encode", retryable=False) from exc


def _clean(value: str | None) -> str:
    return _CONTROL.sub(" ", value or "").strip()[:200]
