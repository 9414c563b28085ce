"""From a channel's message to the engine and back out to everyone watching the conversation.

A channel hands the ``Dispatcher`` an ``InboundMessage`` (``supportbot.channels``). ``submit`` refuses one over the
``limits`` (``MessageTooLarge``, nothing stored), then stores it in the durable inbox (UNIQUE per
channel and external id) and returns only then, so the channel may acknowledge it: a
redelivered message is recognised and not answered twice. The turn runs in a task of its
own, one after another per conversation in arrival order, so a channel that goes away (a closed
browser tab) never cuts a turn short. Every event of the turn is published to the conversation's
subscribers (open widget tabs, an SSE stream), and the reply being streamed is kept as a
``LiveTurn`` so a client that reconnects mid-reply can be shown what it missed.

A message that names a conversation key instead of a conversation (Slack, email) is taken to its
conversation when its turn starts, after the channel's ``prepare`` (which may call the channel's
API, so it never delays the acknowledgement): the newest conversation of that key, or a new one
when there is none or it is closed. While a turn runs, its events also go to the channel's
``render``; its reply reaches the customer through the outbox (``supportbot.delivery``).

Inbox statuses: ``received`` (stored, the engine has not taken it), ``stored`` (the engine stored
the customer's message; ``Engine.run_turn`` sets it in the message's own transaction), ``done``,
``ignored`` (the channel's ``prepare`` declined it: another bot, a deleted user).
On start, ``resume`` runs what a stopped server left ``received`` or ``stored``; ``drain`` lets
running turns finish within a grace period and hands the rest back to the inbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from supportbot.channels import Accepted, ChannelBase, Identity, InboundMessage, Reply, TurnInfo, Unavailable
from supportbot.config import LimitSettings
from supportbot.engine import Engine, clean_text
from supportbot.errors import MessageTooLarge
from supportbot.events import (
    Event,
    Handoff,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFailed,
    TurnFinished,
    TurnStarted,
)
from supportbot.llm.breaker import GuardedLLM
from supportbot.messages import ImagePart
from supportbot.metrics import Metrics
from supportbot.store.base import Conversation, Customer, InboxItem

__all__ = [
    "Accepted",
    "CustomerMessage",
    "Delivered",
    "Dispatcher",
    "LiveTurn",
    "Published",
    "Subscription",
    "TurnEvent",
    "Unavailable",
    "check_size",
    "data_url_bytes",
    "decode_message",
    "encode_message",
]

log = logging.getLogger("supportbot.dispatch")

RESTART_TEXT = "Our support assistant is restarting. Your message is saved, and I'll answer it in a moment."
RETRY_AFTER_S = (5.0, 30.0, 120.0, 600.0)
"""When a turn failed on something other than the model (the database away, a bug), it is tried again after
these many seconds, then left to the next start."""
PREPARE_ATTEMPTS = 3
"""How often a channel's ``prepare`` is tried (1 s, then 2 s apart) before the message is answered as it came."""
SAVED_TEXT = (
    "I'm sorry, something went wrong on our side and I couldn't answer just now. "
    "Your message is saved, and it will be answered as soon as the problem is fixed."
)


class _Inbox(Protocol):
    """What the dispatcher needs of storage: the inbox, and conversation keys (``SQLStore`` has both)."""

    async def inbox_add(
        self, channel: str, external_id: str, payload: Any, conversation_id: str | None = None
    ) -> int | None: ...
    async def inbox_set_status(self, inbox_id: int, status: str, *, conversation_id: str | None = None) -> None: ...
    async def inbox_pending(
        self, channel: str | None = None, *, statuses: tuple[str, ...] = ("received",), limit: int = 100
    ) -> list[InboxItem]: ...
    async def conversation_for_key(self, channel: str, key: str) -> str | None: ...
    async def set_conversation_address(
        self, conversation_id: str, *, channel: str, key: str | None, address: dict[str, Any]
    ) -> None: ...
    async def get_conversation(self, conversation_id: str) -> Conversation | None: ...
    async def get_or_create_customer(
        self, *, email: str | None = None, external_id: str | None = None, name: str | None = None,
        verified: bool = False,
    ) -> Customer: ...  # fmt: skip


def encode_message(message: InboundMessage) -> dict[str, Any]:
    """The inbox payload of a message: everything needed to answer it after a restart (JSON)."""
    identity = message.identity
    return {
        "text": message.text,
        "images": [image.url for image in message.images],
        "key": message.key,
        "identity": {"external_id": identity.external_id, "email": identity.email, "name": identity.name,
                     "verified": identity.verified},
        "address": dict(message.address),
        "data": dict(message.data),
    }  # fmt: skip


def decode_message(item: InboxItem) -> InboundMessage | None:
    """The message an inbox row holds (also rows written before conversation keys existed); None if unreadable."""
    payload = item.payload
    if not isinstance(payload, dict) or payload.get("type", "message") != "message":
        return None
    key = payload.get("key")
    if not isinstance(key, str) and item.conversation_id is None:
        return None
    raw = _mapping(payload.get("identity"))
    identity = Identity(
        external_id=raw.get("external_id"), email=raw.get("email"), name=raw.get("name"),
        verified=raw.get("verified") is True,
    )  # fmt: skip
    return InboundMessage(
        channel=item.channel,
        external_id=item.external_id,
        text=str(payload.get("text") or ""),
        key=key if isinstance(key, str) else None,
        conversation_id=None if isinstance(key, str) else item.conversation_id,
        identity=identity,
        images=tuple(ImagePart(url=str(url)) for url in payload.get("images") or ()),
        address=_mapping(payload.get("address")),
        data=_mapping(payload.get("data")),
    )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def data_url_bytes(url: str) -> int:
    """The size of the content of an image's ``data:`` URL as the engine measures it (base64 length × 3/4,
    padding included, so up to 2 bytes over): what passes here the engine never refuses after storing.
    0 for an http(s) image, which the provider fetches, not us."""
    if not url.startswith("data:"):
        return 0
    header, _, payload = url.partition(",")
    return len(payload) * 3 // 4 if header.endswith(";base64") else len(payload)


def check_size(message: InboundMessage, limits: LimitSettings) -> None:
    """Refuse a message over ``limits`` (text characters, number of images, bytes per image).

    Text counts as the engine stores it (control characters removed, NFC), and as it came: over
    the limit either way is refused.

    Raises:
        MessageTooLarge: naming the limit, its value and the message's size.
    """
    chars = len(message.text)
    if chars <= limits.max_message_chars:
        chars = len(clean_text(message.text))  # NFC can lengthen a text (U+0958 is two characters in NFC)
    if chars > limits.max_message_chars:
        raise MessageTooLarge(
            f"the message is {chars:,} characters long and the limit is {limits.max_message_chars:,} "
            "(limits.max_message_chars); send a shorter message, or split it",
            limit="limits.max_message_chars", allowed=limits.max_message_chars, actual=chars,
        )  # fmt: skip
    count = len(message.images)
    if count > limits.max_images_per_message:
        raise MessageTooLarge(
            f"the message has {count} images and the limit is {limits.max_images_per_message} "
            "(limits.max_images_per_message); send fewer images per message",
            limit="limits.max_images_per_message", allowed=limits.max_images_per_message, actual=count,
        )  # fmt: skip
    for image in message.images:
        size = data_url_bytes(image.url)
        if size > limits.max_image_bytes:
            raise MessageTooLarge(
                f"an image is {size:,} bytes and the limit is {limits.max_image_bytes:,} "
                "(limits.max_image_bytes); send a smaller image",
                limit="limits.max_image_bytes", allowed=limits.max_image_bytes, actual=size,
            )  # fmt: skip


@dataclass(frozen=True, kw_only=True, slots=True)
class TurnEvent:
    turn: int
    event: Event


@dataclass(frozen=True, kw_only=True, slots=True)
class CustomerMessage:
    """A customer's message was accepted (shown to the conversation's other open clients)."""

    turn: int
    channel: str
    external_id: str
    text: str
    images: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Delivered:
    """A reply from the outbox, shown to the conversation's open clients (a person's reply, a notice, or
    the bot's answer to a turn they did not watch live)."""

    reply: Reply


Published = TurnEvent | CustomerMessage | Delivered


@dataclass(kw_only=True)
class LiveTurn:
    """The reply streaming now: its text so far up to delta ``seq`` and the tool running, if any."""

    turn: int
    text: str = ""
    seq: int = -1
    tool: str | None = None


@dataclass(eq=False)
class Subscription:
    """What is published to one conversation, for one client, in order. Iterate it; ``close`` when done."""

    conversation_id: str
    _dispatcher: Dispatcher
    _queue: asyncio.Queue[Published | None] = field(default_factory=asyncio.Queue)

    def __aiter__(self) -> AsyncIterator[Published]:
        return self._items()

    async def _items(self) -> AsyncIterator[Published]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def next(self, within: float | None = None) -> Published | None:
        """The next item; None once closed. Raises TimeoutError when nothing came within ``within`` seconds."""
        return await asyncio.wait_for(self._queue.get(), within)

    def close(self) -> None:
        self._dispatcher._unsubscribe(self)
        self._queue.put_nowait(None)


class Dispatcher:
    """Durable intake, one task per turn, and live fan-out of the turn's events.

    Args:
        engine: runs the turns.
        inbox: the durable inbox (``SQLStore`` is one).
        metrics: counts turns, latency and errors; optional.

    Attributes:
        channels: the channels by name, whose ``prepare`` and ``render`` hooks are called (set by the
            server; a channel not in it gets neither).
        turn_ended: called with the channel's name after each turn (the reply is queued: wake its delivery).
    """

    def __init__(self, engine: Engine, inbox: _Inbox, *, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.inbox = inbox
        self.metrics = metrics
        self.channels: dict[str, ChannelBase] = {}
        self.turn_ended: Callable[[str], None] | None = None
        self._subscribers: dict[str, set[Subscription]] = {}
        self._live: dict[str, LiveTurn] = {}
        self._tails: dict[str, asyncio.Task[None]] = {}  # the newest turn task of each conversation or key
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = True
        self._running: set[int] = set()  # inbox ids of the turns started and not finished
        self._retries: dict[int, int] = {}  # inbox id → how often its turn failed
        self._retry_handles: dict[int, asyncio.TimerHandle] = {}

    @property
    def running(self) -> int:
        """Turns running or waiting for their conversation's previous turn."""
        return len(self._tasks)

    async def submit(self, message: InboundMessage) -> Accepted:
        """Store the message durably and start its turn; returns once it is stored.

        Raises:
            MessageTooLarge: it is over the ``limits``; nothing was stored.
            Unavailable: the server is draining.
            StorageError: it could not be stored; the channel must not acknowledge it.
        """
        self.check(message)
        if not self._accepting:
            raise Unavailable("the server is shutting down; send the message again in a moment")
        inbox_id = await self.inbox.inbox_add(
            message.channel, message.external_id, encode_message(message), conversation_id=message.conversation_id
        )
        if inbox_id is None:
            return Accepted(turn=0, duplicate=True)
        if message.conversation_id is not None:
            self.publish(
                message.conversation_id,
                CustomerMessage(turn=inbox_id, channel=message.channel, external_id=message.external_id,
                                text=message.text, images=len(message.images)),
            )  # fmt: skip
        self._start(inbox_id, message, stored=False)
        return Accepted(turn=inbox_id)

    def check(self, message: InboundMessage) -> None:
        """Refuse a message before anything is stored: over the engine's ``limits`` (``check_size``), or while
        the model calls waiting on this worker fill ``llm.resilience.max_queued_calls``.

        Raises:
            MessageTooLarge: naming the limit.
            Busy: the queue of model calls is full; the channel answers 429 with ``Retry-After``.
        """
        check_size(message, self.engine.config.limits)
        if isinstance(self.engine.llm, GuardedLLM):
            self.engine.llm.check_capacity()

    async def resume(self, *, limit: int = 1000) -> int:
        """Run again what a stopped server left unanswered; returns how many turns were started."""
        items = await self.inbox.inbox_pending(statuses=("received", "stored"), limit=limit)
        started = 0
        for item in items:
            if isinstance(item.payload, dict) and item.payload.get("type", "message") != "message":
                continue  # an operator's reply: supportbot.delivery resumes those
            message = decode_message(item)
            if message is None:
                await self.inbox.inbox_set_status(item.id, "failed")
                continue
            self._start(item.id, message, stored=item.status == "stored", conversation_id=item.conversation_id)
            started += 1
        if started:
            log.info("resumed %d unanswered message(s) left by the last run", started)
        return started

    async def drain(self, grace: float) -> int:
        """Take no new messages, let running turns finish for up to ``grace`` seconds, hand back the rest.

        Returns how many turns were handed back to the inbox (``resume`` runs them at the next start).
        """
        self._accepting = False
        for handle in self._retry_handles.values():
            handle.cancel()
        self._retry_handles.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        unfinished = list(self._tasks)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
            log.warning("handed %d unfinished turn(s) back to the inbox; they resume at the next start",
                        len(unfinished))  # fmt: skip
        for subscriptions in list(self._subscribers.values()):
            for subscription in list(subscriptions):
                subscription.close()  # open streams end; their clients reconnect to the next server
        return len(unfinished)

    # -- fan-out -----------------------------------------------------------------------------------

    def subscribe(self, conversation_id: str) -> Subscription:
        subscription = Subscription(conversation_id, self)
        self._subscribers.setdefault(conversation_id, set()).add(subscription)
        return subscription

    def subscribers(self, conversation_id: str) -> int:
        return len(self._subscribers.get(conversation_id, ()))

    def _unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.conversation_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.conversation_id]

    def publish(self, conversation_id: str, item: Published) -> None:
        for subscription in self._subscribers.get(conversation_id, ()):
            subscription._queue.put_nowait(item)

    def show(self, reply: Reply) -> None:
        """Show a delivered reply to the conversation's open clients now (they also see it in the history)."""
        if reply.conversation_id is not None:
            self.publish(reply.conversation_id, Delivered(reply=reply))

    def live(self, conversation_id: str) -> LiveTurn | None:
        """The reply streaming in this conversation now, if any."""
        return self._live.get(conversation_id)

    # -- running turns -----------------------------------------------------------------------------

    def _start(
        self, inbox_id: int, message: InboundMessage, *, stored: bool, conversation_id: str | None = None
    ) -> None:
        if inbox_id in self._running:
            return  # started already (a retry or resume finding a turn that runs): never twice at once
        self._running.add(inbox_id)
        # One turn at a time per conversation, in arrival order; a keyed message waits on its key's
        # previous message (which may be creating the conversation both go to).
        route = message.conversation_id or f"{message.channel}\x00{message.key}"
        previous = self._tails.get(route)
        task = asyncio.create_task(
            self._run(inbox_id, message, stored=stored, after=previous, conversation_id=conversation_id)
        )
        self._tasks.add(task)
        self._tails[route] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            self._running.discard(inbox_id)
            if self._tails.get(route) is finished:
                del self._tails[route]

        task.add_done_callback(done)

    async def _prepared(self, inbox_id: int, message: InboundMessage) -> InboundMessage | None:
        """The channel's ``prepare`` of a message, tried a few times (it may call the channel's API);
        after that the message is answered as it came. None: the channel declined it."""
        channel = self.channels.get(message.channel)
        if channel is None:
            return message
        for attempt in range(PREPARE_ATTEMPTS):
            try:
                return await channel.prepare(message)
            except Exception:
                log.warning("channel %s could not prepare message %d (attempt %d of %d)", message.channel, inbox_id,
                            attempt + 1, PREPARE_ATTEMPTS, exc_info=True)  # fmt: skip
                if attempt + 1 < PREPARE_ATTEMPTS:
                    await asyncio.sleep(2**attempt)
        return message

    async def _conversation_of(self, inbox_id: int, message: InboundMessage) -> str:
        """The conversation a keyed message goes to: its key's newest, or a new one when there is none or
        it is closed. Records where replies go (the message's address) and the inbox row's conversation."""
        key = message.key or ""  # only keyed messages come here
        found = await self.inbox.conversation_for_key(message.channel, key)
        conversation = await self.inbox.get_conversation(found) if found is not None else None
        if conversation is None or conversation.status == "closed":
            identity = message.identity
            customer = await self.inbox.get_or_create_customer(
                email=identity.email,
                external_id=f"{message.channel}:{identity.external_id}" if identity.external_id else None,
                name=identity.name,
                verified=identity.verified,
            )
            conversation, _ = await self.engine.start_conversation(customer, channel=message.channel, greet=False)
        await self.inbox.set_conversation_address(
            conversation.id, channel=message.channel, key=key, address=dict(message.address)
        )
        await self.inbox.inbox_set_status(inbox_id, "received", conversation_id=conversation.id)
        return conversation.id

    async def _run(
        self,
        inbox_id: int,
        message: InboundMessage,
        *,
        stored: bool,
        after: asyncio.Task[None] | None,
        conversation_id: str | None = None,
    ) -> None:
        if after is not None:
            await asyncio.wait({after})  # arrival order within a conversation
        live = LiveTurn(turn=inbox_id)
        metrics = self.metrics
        record = _TurnRecord(started=time.perf_counter())
        channel = self.channels.get(message.channel)
        if metrics:
            metrics.turns_in_progress.inc()
        try:
            if not stored:
                prepared = await self._prepared(inbox_id, message)
                if prepared is None:
                    await self.inbox.inbox_set_status(inbox_id, "ignored")
                    return
                message = prepared
            conversation_id = conversation_id or message.conversation_id
            if conversation_id is None:
                conversation_id = await self._conversation_of(inbox_id, message)
            info = TurnInfo(turn=inbox_id, conversation_id=conversation_id, message=message)
            if stored:
                events = self.engine.resume_turn(conversation_id, inbox_id=inbox_id)
            else:
                # The engine marks the inbox row "stored" with the message, in one transaction.
                events = self.engine.run_turn(conversation_id, message.text, images=message.images, inbox_id=inbox_id)
            async with aclosing(cast(AsyncGenerator[Event, None], events)) as stream:
                async for event in stream:
                    first_token = record.first_token_ms is None and isinstance(event, TextDelta)
                    record.follow(event)
                    if first_token and metrics:
                        metrics.first_token_seconds.labels(message.channel).observe(record.elapsed())
                    self._follow(conversation_id, live, event)
                    if isinstance(event, TurnFinished | TurnFailed):
                        _log_turn(message, conversation_id, inbox_id, event, record)
                    if metrics:
                        metrics.turn_event(message.channel, event)
                        if isinstance(event, TurnFinished | TurnFailed):
                            metrics.turn_seconds.labels(message.channel).observe(record.elapsed())
                    self.publish(conversation_id, TurnEvent(turn=inbox_id, event=event))
                    if channel is not None:
                        _render(channel, info, event)
            await self.inbox.inbox_set_status(inbox_id, "done")
            if self.turn_ended is not None:
                self.turn_ended(message.channel)
        except asyncio.CancelledError:
            # Draining: the inbox keeps the message for the next start; the client hears why it waits.
            # No turn line: the turn runs again at the next start and is logged then.
            stopped = TurnFailed(
                reason="the server stopped", fallback_text=RESTART_TEXT, ticket_id=None, message_id=None
            )
            if conversation_id is not None:
                self.publish(conversation_id, TurnEvent(turn=inbox_id, event=stopped))
            raise
        except Exception as exc:
            # Storage down or a bug: the inbox keeps the message for the next start; the client hears now.
            log.exception("turn %d of conversation %s failed", inbox_id, conversation_id)
            if metrics:
                metrics.errors.labels(type(exc).__name__).inc()
            failed = TurnFailed(
                reason=f"{type(exc).__name__}: {exc}",
                fallback_text=SAVED_TEXT,
                ticket_id=None,
                message_id=None,
            )
            if not record.logged:
                _log_turn(message, conversation_id, inbox_id, failed, record)
            if conversation_id is not None:
                self.publish(conversation_id, TurnEvent(turn=inbox_id, event=failed))
            self._retry_later(inbox_id)
        finally:
            if metrics:
                metrics.turns_in_progress.dec()
            if conversation_id is not None and self._live.get(conversation_id) is live:
                del self._live[conversation_id]

    def _retry_later(self, inbox_id: int) -> None:
        """Run a failed turn again after a while (the message is still in the inbox, unanswered)."""
        tries = self._retries.get(inbox_id, 0)
        if tries >= len(RETRY_AFTER_S) or not self._accepting:
            self._retries.pop(inbox_id, None)
            log.error("turn %d failed %d times; it is left in the inbox for the next start", inbox_id, tries + 1)
            return
        self._retries[inbox_id] = tries + 1
        log.warning("turn %d failed; trying it again in %.0f s", inbox_id, RETRY_AFTER_S[tries])
        self._retry_handles[inbox_id] = asyncio.get_running_loop().call_later(
            RETRY_AFTER_S[tries], self._spawn_retry, inbox_id
        )

    def _spawn_retry(self, inbox_id: int) -> None:
        self._retry_handles.pop(inbox_id, None)
        task = asyncio.create_task(self._retry(inbox_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, inbox_id: int) -> None:
        try:
            items = await self.inbox.inbox_pending(statuses=("received", "stored"), limit=1000)
        except Exception:
            log.warning("could not read the inbox to retry turn %d", inbox_id, exc_info=True)
            self._retry_later(inbox_id)
            return
        for item in items:
            if item.id == inbox_id and (message := decode_message(item)) is not None:
                self._start(item.id, message, stored=item.status == "stored", conversation_id=item.conversation_id)
                return
        self._retries.pop(inbox_id, None)  # answered meanwhile (another worker, a restart)

    def _follow(self, conversation_id: str, live: LiveTurn, event: Event) -> None:
        """Keep the conversation's ``LiveTurn`` up to date with the turn's events."""
        if isinstance(event, TurnStarted):
            self._live[conversation_id] = live
        elif isinstance(event, TextDelta):
            live.text += event.text
            live.seq = event.seq
        elif isinstance(event, ToolCallStarted):
            live.tool = event.name
        elif isinstance(event, ToolCallFinished | Handoff):
            live.tool = None
        elif isinstance(event, TurnFinished | TurnFailed) and self._live.get(conversation_id) is live:
            del self._live[conversation_id]


TOOL_ERROR_CHARS = 200  # enough to tell why a call failed; the full result is in the transcript


@dataclass(kw_only=True)
class _TurnRecord:
    """What a turn's log line says, gathered from its events; no conversation text but a failed tool's error."""

    started: float  # time.perf_counter() when the turn began
    flow: str | None = None
    transfers: list[str] = field(default_factory=list)
    handoff: str | None = None
    ticket_id: int | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    first_token_ms: float | None = None
    logged: bool = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def follow(self, event: Event) -> None:
        if isinstance(event, TurnStarted):
            self.flow = self.flow or event.flow
        elif isinstance(event, TextDelta):
            if self.first_token_ms is None:
                self.first_token_ms = round(self.elapsed() * 1000, 1)
        elif isinstance(event, ToolCallFinished):
            call: dict[str, Any] = {"name": event.name, "ok": not event.is_error,
                                    "duration_ms": round(event.duration_ms, 1)}  # fmt: skip
            if event.is_error:
                # The tool's own error message (ToolRetry text, exception): it can quote the call's
                # arguments, so it is shortened here and redacted with the rest of the record.
                call["error"] = event.result[:TOOL_ERROR_CHARS]
            self.tools.append(call)
        elif isinstance(event, Handoff):
            if event.target == "human":
                self.handoff = "human"
            else:
                self.transfers.append(event.target)
            self.ticket_id = event.ticket_id or self.ticket_id
        elif isinstance(event, TurnFailed):
            self.ticket_id = event.ticket_id or self.ticket_id


def _render(channel: ChannelBase, turn: TurnInfo, event: Event) -> None:
    """Hand a live event to the channel; a failure of its rendering never stops the turn (the outbox delivers)."""
    try:
        channel.render(turn, event)
    except Exception:
        log.exception("channel %s failed to render %s of turn %d", channel.name, event.type, turn.turn)


def _log_turn(
    message: InboundMessage, conversation_id: str | None, turn: int, event: TurnFinished | TurnFailed,
    record: _TurnRecord,
) -> None:  # fmt: skip
    """One structured line per turn, ``event: "turn"``: where, what ran, how it ended, how long, what it cost.

    Every field is present in every line (None when it does not apply) so the lines read the same
    in ``jq``. No customer text: the transcript in the database has that.
    """
    record.logged = True
    seconds = record.elapsed()
    usage = event.usage if isinstance(event, TurnFinished) else None
    fields: dict[str, Any] = {
        "event": "turn",
        "conversation_id": conversation_id,
        "channel": message.channel,
        "turn": turn,
        "flow": record.flow,
        "transfers": record.transfers,
        "handoff": record.handoff,
        "outcome": "finished" if isinstance(event, TurnFinished) else "failed",
        "duration_ms": round(seconds * 1000, 1),
        "first_token_ms": record.first_token_ms,
        "tools": record.tools,
        # A failed turn's event carries no usage: unknown, not zero.
        "input_tokens": usage.input_tokens if usage is not None else None,
        "output_tokens": usage.output_tokens if usage is not None else None,
        "cost_usd": round(event.cost_usd, 6) if isinstance(event, TurnFinished) else None,
        "ticket_id": record.ticket_id,
        "reason": event.reason if isinstance(event, TurnFailed) else None,
    }
    if isinstance(event, TurnFinished):
        log.info("turn %d of %s finished in %.0f ms", turn, conversation_id, seconds * 1000, extra=fields)
    else:
        log.warning("turn %d of %s failed: %s", turn, conversation_id, event.reason, extra=fields)
