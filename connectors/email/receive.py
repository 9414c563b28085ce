"""From a raw mail to the core's inbox: parsed, checked for loops, its sender verified, its thread found.

``Receiver.mail`` returns ``stored`` once the core has the message (or recognised it by its
Message-ID as stored before) and ``skipped`` for mail the bot must not answer (auto-replies,
bounces, lists, our own mail); the IMAP loop flags the first and leaves the second unread. A storage
failure raises, and the mail is fetched again.

The thread: a reply continues its conversation when one of its In-Reply-To/References ids is one of
the thread's mails, else when its recipients carry the thread's ``address+TAG@``, else when its
subject carries ``[#TAG]``; and only when it comes from the thread's own sender, verified as the
thread was (``Thread.admits``). Anything else starts a new conversation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from functools import partial
from typing import Any

from connectors.email.authres import dmarc_verified
from connectors.email.imap import Handled
from connectors.email.loops import automatic
from connectors.email.parse import ParsedMail, parse_mail
from connectors.email.settings import EmailSettings
from connectors.email.state import Keeper, Thread
from connectors.email.threads import (
    message_key,
    normalize_subject,
    references_for,
    subject_tag,
    tag_for,
    thread_key,
    token_from_recipients,
)
from supportbot.channels import Identity, InboundMessage, Intake, MessageTooLarge, StorageError, Unavailable

__all__ = ["CHANNEL", "Receiver"]

log = logging.getLogger("supportbot.email")

CHANNEL = "email"
_RAW_KEPT = 256_000
"""Bytes of the raw mail kept (base64) with the inbox row for review: the headers and the start of the body."""
_PARSE_LIMIT_S = 60.0
"""A mail not parsed in this time is left unread for a person (parse_mail is linear; this is a backstop)."""
_ROOM = 600
"""Characters of the message limit kept free for the subject and the notes added to the body."""


class Receiver:
    """See the module's docstring."""

    def __init__(
        self, settings: EmailSettings, keeper: Keeper, intake: Intake, *, max_chars: int, max_images: int,
        max_image_bytes: int,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.keeper = keeper
        self.intake = intake
        self.max_chars = max_chars
        self.max_images = max_images
        self.max_image_bytes = max_image_bytes
        self.address = settings.address or ""

    async def mail(self, raw: bytes, truncated: bool = False) -> Handled:
        try:
            found = await self._read(raw, truncated)
        except (StorageError, Unavailable):
            raise  # the database or the server is away, or busy (``Busy``): the mail stays unread and is read again
        except Exception:
            # A mail this code cannot handle must not block every later one: a person reads it.
            log.exception("email: a mail could not be read (%d bytes); left unread for a person", len(raw))
            return "skipped"
        if found is None:
            return "skipped"
        parsed, thread, joined, message = found
        try:
            accepted = await self.intake.submit(message)
        except MessageTooLarge as exc:
            # Caps above keep a mail within the limits; should an operator have set them oddly, the mail
            # is answered without its images rather than lost.
            log.warning("email: mail %s over the limits (%s); answering its text only", parsed.message_id, exc)
            smaller = InboundMessage(channel=CHANNEL, external_id=message.external_id, key=thread.key,
                                     identity=message.identity, text=message.text[: self.max_chars // 2],
                                     address=message.address)  # fmt: skip
            accepted = await self.intake.submit(smaller)
        # Also for a mail stored before (a crash may have come between storing it and these): both bind only
        # what is not bound yet, and a mail read again computes the same thread and tag.
        if parsed.message_id:
            await self.keeper.remember(parsed.message_id, thread)
        if not joined:
            await self.keeper.remember_tag(thread)
        if not accepted.duplicate:
            answered = {"message_id": parsed.message_id, "references": message.address.get("references", [])}
            await self.keeper.set_turn(accepted.turn, answered)
        return "stored"

    async def _read(self, raw: bytes, truncated: bool) -> tuple[ParsedMail, Thread, bool, InboundMessage] | None:
        """The mail as a message for the core, with its thread (and whether it continues one); None for mail
        the bot must not answer."""
        # In a thread: a big mail takes a moment to parse, and the server's other channels must not wait for it.
        parse = partial(parse_mail, raw, max_text_chars=max(200, self.max_chars - _ROOM), max_images=self.max_images,
                        max_image_bytes=self.max_image_bytes, truncated=truncated)  # fmt: skip
        async with asyncio.timeout(_PARSE_LIMIT_S):
            parsed = await asyncio.to_thread(parse)
        reason = automatic(parsed.message, own_addresses=[self.address], own_domain=self.settings.domain)
        if reason is None and parsed.from_address is None:
            reason = "no single sender address in From"
        if reason is not None:
            log.info(
                "email: not answering mail %s: %s (left unread)", parsed.message_id or "without Message-ID", reason
            )
            return None
        sender = (parsed.from_address or "").lower()
        verified = self._verified(parsed, sender)
        # A redelivery is the same Message-ID from the same sender; another sender reusing one (guessed, or a
        # form that sends every mail with one id) is a mail of its own, not a duplicate to drop, and never a
        # key into someone else's conversation.
        if parsed.message_id:
            scoped = f"{message_key(parsed.message_id)}|{sender}".encode()
            external_id = "m:" + hashlib.sha256(scoped).hexdigest()
        else:
            external_id = thread_key(None, raw)
        thread, joined = await self._thread(parsed, sender, verified, new_key=external_id)
        message = InboundMessage(
            channel=CHANNEL, external_id=external_id, key=thread.key,
            identity=Identity(external_id=sender, email=sender, name=parsed.from_name, verified=verified),
            text=self._text(parsed, joined), images=parsed.images, address=self._address(parsed, sender, thread),
            data={"raw_base64": base64.b64encode(raw[:_RAW_KEPT]).decode("ascii"), "raw_bytes": len(raw),
                  "truncated": parsed.truncated},
        )  # fmt: skip
        return parsed, thread, joined, message

    def _verified(self, parsed: ParsedMail, sender: str) -> bool:
        trusted = self.settings.trusted_authserv_id
        if trusted is None:
            return False
        return dmarc_verified(parsed.message, trusted_authserv_id=trusted) == sender

    async def _thread(self, parsed: ParsedMail, sender: str, verified: bool, *, new_key: str) -> tuple[Thread, bool]:
        """The thread the mail continues (and True), or a new one with key ``new_key`` (and False)."""
        candidates: list[Thread | None] = []
        for known in reversed((*parsed.references, *parsed.in_reply_to)):
            candidates.append(await self.keeper.thread_of(known))
        token = token_from_recipients(parsed.recipients, self.address)
        if token is not None:
            candidates.append(await self.keeper.thread_of_tag(token))
        tag = subject_tag(parsed.subject)
        if tag is not None:
            candidates.append(await self.keeper.thread_of_tag(tag))
        for thread in candidates:
            if thread is not None and thread.admits(sender, verified):
                return thread, True
        if any(thread is not None for thread in candidates):
            log.info("email: mail %s refers to a thread of another sender (or verified otherwise); a new conversation",
                     parsed.message_id)  # fmt: skip
        return Thread(key=new_key, sender=sender, verified=verified, tag=tag_for(new_key)), False

    def _text(self, parsed: ParsedMail, joined: bool) -> str:
        parts: list[str] = []
        subject = normalize_subject(parsed.subject)
        if not joined and subject:
            parts.append(f"Subject: {subject}")
        body = parsed.text.strip()
        parts.append(body or ("(no text; see the attached images)" if parsed.images else "(an empty message)"))
        if parsed.skipped_attachments:
            parts.append("[Attachments not read: " + "; ".join(parsed.skipped_attachments)[:300] + "]")
        if parsed.truncated:
            parts.append("[The mail was too long; only its beginning was read.]")
        return "\n\n".join(parts)

    def _address(self, parsed: ParsedMail, sender: str, thread: Thread) -> dict[str, Any]:
        """Where and how replies go: always to the sender (From, never Reply-To), threaded on this mail."""
        chain = references_for(parsed.message_id, parsed.references or parsed.in_reply_to)
        return {"to": sender, "name": parsed.from_name, "subject": parsed.subject, "tag": thread.tag,
                "verified": thread.verified, "message_id": parsed.message_id, "references": list(chain)}  # fmt: skip
