"""From a channel's message to the engine and back out to everyone watching the conversation.

A channel hands the ``Dispatcher`` an ``Inbound`` message. ``submit`` refuses one over the
``limits`` (``MessageTooLarge``, nothing stored), then stores it in the durable inbox (UNIQUE per
channel and external id) and returns only then, so the channel may acknowledge it: a
redelivered message is recognised and not answered twice. The turn runs in a task of its
own, one after another per conversation in arrival order, so a channel that goes away (a closed
browser tab) never cuts a turn short. Every event of the turn is published to the conversation's
subscribers (open widget tabs, an SSE stream), and the reply being streamed is kept as a
``LiveTurn`` so a client that reconnects mid-reply can be shown what it missed.

Inbox statuses: ``received`` (stored, the engine has not taken it), ``stored`` (the engine stored
the customer's message; ``Engine.run_turn`` sets it in the message's own transaction), ``done``.
On start, ``resume`` runs what a stopped server left ``received`` or ``stored``; ``drain`` lets
running turns finish within a grace period and hands the rest back to the inbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from supportbot.config import LimitSettings
from supportbot.engine import Engine, clean_text
from supportbot.errors import MessageTooLarge, SupportbotError
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
from supportbot.messages import ImagePart
from supportbot.metrics import Metrics
from supportbot.store.base import InboxItem, StoredMessage

__all__ = [
    "Accepted",
    "CustomerMessage",
    "Dispatcher",
    "Inbound",
    "LiveTurn",
    "Published",
    "StaffMessage",
    "TurnEvent",
    "Unavailable",
    "check_size",
    "data_url_bytes",
]

log = logging.getLogger("supportbot.dispatch")

RESTART_TEXT = "Our support assistant is restarting. Your message is saved, and I'll answer it in a moment."
SAVED_TEXT = (
    "I'm sorry, something went wrong on our side and I couldn't answer just now. "
    "Your message is saved, and it will be answered as soon as the problem is fixed."
)


class Unavailable(SupportbotError):
    """The server is shutting down and takes no new messages; the channel should ask the client to retry."""


class _Inbox(Protocol):
    async def inbox_add(
        self, channel: str, external_id: str, payload: Any, conversation_id: str | None = None
    ) -> int | None: ...
    async def inbox_set_status(self, inbox_id: int, status: str, *, conversation_id: str | None = None) -> None: ...
    async def inbox_pending(
        self, channel: str | None = None, *, statuses: tuple[str, ...] = ("received",), limit: int = 100
    ) -> list[InboxItem]: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Inbound:
    """A customer's message as a channel received it; ``external_id`` is unique per channel."""

    channel: str
    external_id: str
    conversation_id: str
    text: str
    images: tuple[ImagePart, ...] = ()


def data_url_bytes(url: str) -> int:
    """The size of the content of an image's ``data:`` URL as the engine measures it (base64 length × 3/4,
    padding included, so up to 2 bytes over): what passes here the engine never refuses after storing.
    0 for an http(s) image, which the provider fetches, not us."""
    if not url.startswith("data:"):
        return 0
    header, _, payload = url.partition(",")
    return len(payload) * 3 // 4 if header.endswith(";base64") else len(payload)


def check_size(message: Inbound, limits: LimitSettings) -> None:
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
class Accepted:
    """``turn`` numbers the message's turn (its inbox id); ``duplicate``: it was stored before, not answered again."""

    turn: int
    duplicate: bool = False


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
class StaffMessage:
    """A reply a person from the team wrote, already stored (``kind="human"``)."""

    message: StoredMessage


Published = TurnEvent | CustomerMessage | StaffMessage


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
    """

    def __init__(self, engine: Engine, inbox: _Inbox, *, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.inbox = inbox
        self.metrics = metrics
        self._subscribers: dict[str, set[Subscription]] = {}
        self._live: dict[str, LiveTurn] = {}
        self._tails: dict[str, asyncio.Task[None]] = {}  # the newest turn task of each conversation
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = True

    @property
    def running(self) -> int:
        """Turns running or waiting for their conversation's previous turn."""
        return len(self._tasks)

    async def submit(self, message: Inbound) -> Accepted:
        """Store the message durably and start its turn; returns once it is stored.

        Raises:
            MessageTooLarge: it is over the ``limits``; nothing was stored.
            Unavailable: the server is draining.
            StorageError: it could not be stored; the channel must not acknowledge it.
        """
        self.check(message)
        if not self._accepting:
            raise Unavailable("the server is shutting down; send the message again in a moment")
        payload = {"text": message.text, "images": [image.url for image in message.images]}
        inbox_id = await self.inbox.inbox_add(
            message.channel, message.external_id, payload, conversation_id=message.conversation_id
        )
        if inbox_id is None:
            return Accepted(turn=0, duplicate=True)
        self.publish(
            message.conversation_id,
            CustomerMessage(turn=inbox_id, channel=message.channel, external_id=message.external_id,
                            text=message.text, images=len(message.images)),
        )  # fmt: skip
        self._start(inbox_id, message, stored=False)
        return Accepted(turn=inbox_id)

    def check(self, message: Inbound) -> None:
        """Refuse a message over the engine's ``limits`` before anything is stored (``check_size``).

        Raises:
            MessageTooLarge: naming the limit.
        """
        check_size(message, self.engine.config.limits)

    async def resume(self, *, limit: int = 1000) -> int:
        """Run again what a stopped server left unanswered; returns how many turns were started."""
        items = await self.inbox.inbox_pending(statuses=("received", "stored"), limit=limit)
        for item in items:
            if item.conversation_id is None or not isinstance(item.payload, dict):
                await self.inbox.inbox_set_status(item.id, "failed")
                continue
            message = Inbound(
                channel=item.channel,
                external_id=item.external_id,
                conversation_id=item.conversation_id,
                text=str(item.payload.get("text") or ""),
                images=tuple(ImagePart(url=str(url)) for url in item.payload.get("images") or ()),
            )
            self._start(item.id, message, stored=item.status == "stored")
        if items:
            log.info("resumed %d unanswered message(s) left by the last run", len(items))
        return len(items)

    async def drain(self, grace: float) -> int:
        """Take no new messages, let running turns finish for up to ``grace`` seconds, hand back the rest.

        Returns how many turns were handed back to the inbox (``resume`` runs them at the next start).
        """
        self._accepting = False
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

    def deliver(self, message: StoredMessage) -> None:
        """Show a stored operator reply to the conversation's open clients now (they also see it in the history)."""
        self.publish(message.conversation_id, StaffMessage(message=message))

    def live(self, conversation_id: str) -> LiveTurn | None:
        """The reply streaming in this conversation now, if any."""
        return self._live.get(conversation_id)

    # -- running turns -----------------------------------------------------------------------------

    def _start(self, inbox_id: int, message: Inbound, *, stored: bool) -> None:
        previous = self._tails.get(message.conversation_id)
        task = asyncio.create_task(self._run(inbox_id, message, stored=stored, after=previous))
        self._tasks.add(task)
        self._tails[message.conversation_id] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if self._tails.get(message.conversation_id) is finished:
                del self._tails[message.conversation_id]

        task.add_done_callback(done)

    async def _run(self, inbox_id: int, message: Inbound, *, stored: bool, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await asyncio.wait({after})  # arrival order within a conversation
        conversation_id = message.conversation_id
        live = LiveTurn(turn=inbox_id)
        metrics = self.metrics
        record = _TurnRecord(started=time.perf_counter())
        if metrics:
            metrics.turns_in_progress.inc()
        try:
            if stored:
                events = self.engine.resume_turn(conversation_id)
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
                        _log_turn(message, inbox_id, event, record)
                    if metrics:
                        metrics.turn_event(message.channel, event)
                        if isinstance(event, TurnFinished | TurnFailed):
                            metrics.turn_seconds.labels(message.channel).observe(record.elapsed())
                    self.publish(conversation_id, TurnEvent(turn=inbox_id, event=event))
            await self.inbox.inbox_set_status(inbox_id, "done")
        except asyncio.CancelledError:
            # Draining: the inbox keeps the message for the next start; the client hears why it waits.
            # No turn line: the turn runs again at the next start and is logged then.
            stopped = TurnFailed(
                reason="the server stopped", fallback_text=RESTART_TEXT, ticket_id=None, message_id=None
            )
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
                _log_turn(message, inbox_id, failed, record)
            self.publish(conversation_id, TurnEvent(turn=inbox_id, event=failed))
        finally:
            if metrics:
                metrics.turns_in_progress.dec()
            if self._live.get(conversation_id) is live:
                del self._live[conversation_id]

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


def _log_turn(message: Inbound, turn: int, event: TurnFinished | TurnFailed, record: _TurnRecord) -> None:
    """One structured line per turn, ``event: "turn"``: where, what ran, how it ended, how long, what it cost.

    Every field is present in every line (None when it does not apply) so the lines read the same
    in ``jq``. No customer text: the transcript in the database has that.
    """
    record.logged = True
    seconds = record.elapsed()
    usage = event.usage if isinstance(event, TurnFinished) else None
    fields: dict[str, Any] = {
        "event": "turn",
        "conversation_id": message.conversation_id,
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
        log.info("turn %d of %s finished in %.0f ms", turn, message.conversation_id, seconds * 1000, extra=fields)
    else:
        log.warning("turn %d of %s failed: %s", turn, message.conversation_id, event.reason, extra=fields)
