"""The web channel's operations, shared by the REST API and the widget's WebSocket.

Opening a conversation (with an anonymous or a signed identity), checking a token, taking a
customer's message (validated, then stored durably through the dispatcher before it is
acknowledged), and the history a client rebuilds its view from.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.web import wire
from connectors.web.security import (
    MIN_SECRET_BYTES,
    Identity,
    IdentityError,
    RateLimiter,
    hash_token,
    new_token,
    origin_allowed,
    retry_after,
    token_from_request,
    verify_hash,
    verify_identity_token,
)
from connectors.web.settings import WebSettings
from supportbot.channels import Accepted, ChannelBase, InboundMessage, Intake, Reply
from supportbot.dispatch import Dispatcher
from supportbot.errors import ConfigError, MessageTooLarge
from supportbot.messages import ImagePart
from supportbot.runtime import Runtime
from supportbot.server import client_ip, max_message_bytes
from supportbot.store.base import Store
from supportbot.store.mailboxes import ConversationTokens, Mailboxes

__all__ = ["CHANNEL", "Refused", "WebChannel"]

log = logging.getLogger("supportbot.web")

CHANNEL = "web"
HISTORY_MESSAGES = 100
_IMAGE_URL = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,([A-Za-z0-9+/]+={0,2})$")


class Refused(Exception):
    """A request the channel refuses: an HTTP status, a code and words that say what to do."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class WebStore(Store, Mailboxes, ConversationTokens):
    """What the web channel needs of storage (``SQLStore`` has it all)."""


class _User(BaseModel):
    """The host site's user as the page describes them; only what ``token`` or ``hash`` signs is verified."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    email: str | None = Field(None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    name: str | None = Field(None, max_length=200)
    hash: str | None = Field(None, max_length=200)
    token: str | None = Field(None, min_length=1, max_length=4096)


class NewConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: _User | None = None
    flow: str | None = Field(None, max_length=64)


class _Image(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str


class NewMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = ""
    images: list[_Image] = []
    client_message_id: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")


def parse(model: type[BaseModel], data: Any) -> Any:
    """Validate a client's JSON against ``model``; a mistake is a 400 naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise Refused(400, "bad_request", f"{where}: {first['msg']}") from None


def _beside_token(user: _User, identity: Identity) -> Identity:
    """Fields sent beside a token must say what the token says: a mismatch is a page that mixes up users."""
    beside = (("id", "sub", user.id, identity.id), ("email", "email", user.email, identity.email),
              ("name", "name", user.name, identity.name))  # fmt: skip
    for field, claim, given, signed in beside:
        if given is None or (given.casefold() == signed.casefold() if field == "email" and signed else given == signed):
            continue
        says = f"its {claim!r} is {signed!r}" if signed else f"it has no {claim!r} claim"
        raise IdentityError(
            f"user.{field} {given!r} is not what user.token signs ({says}); send only user.token, which carries "
            f"sub, email and name"
        )
    return identity


@dataclass(frozen=True, kw_only=True, slots=True)
class Opened:
    id: str
    token: str
    verified: bool
    email_verified: bool
    greeting: str | None


class WebChannel(ChannelBase):
    """The web channel: what its routes share (settings, store, the rate limiters) and its delivery.

    A reply is delivered by showing it to the conversation's open widgets and streams at once (a
    widget shows a message id once, so the answer it also saw streamed live is not shown twice);
    a customer who is not connected finds it in the history when they come back.
    """

    name = CHANNEL

    def __init__(self, runtime: Runtime, dispatcher: Dispatcher, intake: Intake, settings: WebSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.store: WebStore = runtime.store  # type: ignore[assignment]
        self.dispatcher = dispatcher
        self.intake = intake
        self.demo = runtime.demo
        secret = self.settings.identity_secret
        # The demo page signs in a demo customer; with no secret configured, a per-process one serves it.
        configured = secret.get_secret_value() if secret else None
        self.identity_secret = configured or (secrets.token_hex(32) if self.demo else None)
        if configured and len(configured.encode()) < MIN_SECRET_BYTES:
            log.warning(
                "connectors.web.identity_secret is %d bytes; HS256 wants at least %d random bytes: make one with "
                "python -c 'import secrets; print(secrets.token_hex(32))' and give it to your site's backend too",
                len(configured.encode()), MIN_SECRET_BYTES,
            )  # fmt: skip
        limits = self.settings.rate_limits
        self.per_ip = RateLimiter(limits.requests_per_minute_per_ip, 60)
        self.new_per_ip = RateLimiter(limits.conversations_per_hour_per_ip, 3600)
        self.per_conversation = RateLimiter(limits.messages_per_minute_per_conversation, 60)
        self.max_message_bytes = max_message_bytes(runtime.config.limits)
        self.behind_proxy = runtime.config.server.trust_forwarded_for

    async def deliver(self, reply: Reply) -> str:
        self.dispatcher.show(reply)
        return str(reply.outbox_id)

    # -- checks ------------------------------------------------------------------------------------

    def check_origin(self, request: web.Request) -> None:
        if not origin_allowed(request, self.settings, behind_proxy=self.behind_proxy):
            raise Refused(
                403, "origin_not_allowed",
                f"the origin {request.headers.get('Origin')} may not use this server; add it to "
                f"connectors.web.allowed_origins in the server's config",
            )  # fmt: skip

    def check_ip(self, request: web.Request, limiter: RateLimiter | None = None) -> None:
        ip = client_ip(request, behind_proxy=self.behind_proxy)
        wait = (limiter or self.per_ip).hit(ip)
        if wait:
            self.count_error("rate_limited")
            raise Refused(429, "rate_limited", f"too many requests; try again in {retry_after(wait)} s",
                          retry_after=wait)  # fmt: skip

    def count_error(self, kind: str) -> None:
        metrics = self.dispatcher.metrics
        if metrics is not None:
            metrics.errors.labels(kind).inc()

    async def authorize(self, request: web.Request, conversation_id: str | None = None) -> str:
        """The conversation the request's token opens; it must be ``conversation_id`` when one is named."""
        token = token_from_request(request)
        if not token:
            raise Refused(401, "unauthorized", "send the conversation's token as 'Authorization: Bearer <token>'")
        found = await self.store.conversation_for_token(hash_token(token))
        if found is None or (conversation_id is not None and found != conversation_id):
            self.count_error("unauthorized")
            raise Refused(401, "unauthorized", "this token does not open this conversation; open a new conversation")
        return found

    # -- operations --------------------------------------------------------------------------------

    async def open_conversation(self, body: NewConversation) -> Opened:
        user = body.user
        identity = self.verify_user(user) if user is not None else None
        if identity is not None:
            # Verified attributes are exactly the signed ones: an email nobody signed is neither
            # stored on this record nor used to find one.
            customer = await self.store.get_or_create_customer(
                email=identity.email, external_id=f"web:{identity.id}", name=identity.name, verified=True
            )
        else:
            customer = await self.store.get_or_create_customer(
                email=user.email if user else None,
                external_id=f"web:{user.id}" if user and user.id else None,
                name=user.name if user else None,
                verified=False,
            )
        try:
            conversation, greeting = await self.runtime.engine.start_conversation(customer, channel=CHANNEL,
                                                                                  flow=body.flow)  # fmt: skip
        except ConfigError as exc:
            raise Refused(400, "bad_request", f"flow: {exc}") from None
        token = new_token()
        await self.store.add_conversation_token(conversation.id, hash_token(token))
        email_verified = identity is not None and identity.email is not None
        return Opened(id=conversation.id, token=token, verified=identity is not None, email_verified=email_verified,
                      greeting=greeting)  # fmt: skip

    def verify_user(self, user: _User) -> Identity | None:
        """What the host site signed about ``user`` (``token`` or ``hash``); None for a user nobody signed."""
        if user.token is None and user.hash is None:
            return None
        if self.identity_secret is None:
            raise Refused(403, "identity_invalid",
                          "this server has no connectors.web.identity_secret, so it cannot verify a signed-in user; "
                          "set it, or boot the widget without user.token and user.hash")  # fmt: skip
        try:
            if user.token is not None:
                if user.hash is not None:
                    raise Refused(400, "bad_request", "user: send user.token or user.hash, not both")
                return _beside_token(user, verify_identity_token(self.identity_secret, user.token))
            if user.id is None:
                raise Refused(400, "bad_request", "user.hash signs user.id: send the id it signs (or a user.token)")
            identity = verify_hash(self.identity_secret, user.id, user.email, user.hash or "")
        except IdentityError as exc:
            self.count_error("identity_invalid")
            raise Refused(403, "identity_invalid", str(exc)) from None
        # The older hash signs the id alone: the name is the page's to give, the email is not verified.
        return Identity(id=identity.id, email=identity.email, name=user.name)

    async def accept(self, conversation_id: str, body: NewMessage) -> Accepted:
        """Validate and durably store a customer's message; its turn runs in the background.

        A message over the ``limits`` (text characters, images, bytes per image) is refused with 413
        before anything is stored.
        """
        text = body.text
        if not text.strip() and not body.images:
            raise Refused(400, "bad_request", "text: write a message (or attach an image)")
        client_id = body.client_message_id or uuid.uuid4().hex
        inbound = InboundMessage(channel=CHANNEL, external_id=f"{conversation_id}:{client_id}",
                                 conversation_id=conversation_id, text=text,
                                 images=tuple(ImagePart(url=image.url) for image in body.images))  # fmt: skip
        try:
            self.dispatcher.check(inbound)  # sizes first: cheap, and nothing else is worth doing for a 5 MB text
            for image in inbound.images:
                _image_url(image.url)
            wait = self.per_conversation.hit(conversation_id)
            if wait:
                self.count_error("rate_limited")
                raise Refused(429, "rate_limited",
                              f"too many messages in this conversation; wait {retry_after(wait)} s and send it again",
                              retry_after=wait)  # fmt: skip
            return await self.intake.submit(inbound)
        except MessageTooLarge as exc:
            self.count_error("too_large")
            field = "text" if exc.limit == "limits.max_message_chars" else "images"
            raise Refused(413, "too_large", f"{field}: {exc}") from None

    async def history(self, conversation_id: str, *, after: int | None = None) -> dict[str, Any]:
        """The customer's view of the conversation: recent visible messages and the reply streaming now."""
        live = self.dispatcher.live(conversation_id)  # read first: the store may already hold part of it
        conversation = await self.store.get_conversation(conversation_id)
        if conversation is None:
            raise Refused(404, "not_found", "this conversation no longer exists; open a new one")
        stored = await self.store.list_messages(conversation_id, last=HISTORY_MESSAGES * 3)
        if live is not None:
            # What the live turn stored so far (text before a tool call) is part of the live text.
            last_user = max((i for i, m in enumerate(stored) if m.role == "user"), default=-1)
            stored = stored[: last_user + 1]
        shown = [wire.message(m) for m in stored if wire.visible(m) and (after is None or m.id > after)]
        return {
            "conversation": {"id": conversation.id, "status": conversation.status},
            "messages": wire.answered(shown[-HISTORY_MESSAGES:]),
            "live": wire.live(live),
        }


def _image_url(url: str) -> None:
    """Accept a base64 data URL of a PNG, JPEG, GIF or WebP image; an http(s) URL would make us fetch for them.

    No whitespace in the base64 (a browser's ``readAsDataURL`` has none): the body limit counts each
    character of it as one byte on the wire, which an escaped line break (2 or 6 bytes) would not be.
    """
    match = _IMAGE_URL.match(url)
    if match is None:
        raise Refused(400, "bad_request",
                      "images[].url: send the image as a data URL of a PNG, JPEG, GIF or WebP "
                      "(data:image/png;base64,..., the base64 without line breaks)")  # fmt: skip
    try:
        base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, "bad_request", "images[].url: the base64 data is not valid") from None
