"""From a channel's message to the engine and back out to everyone watching the conversation.

A channel hands the ``Dispatcher`` an ``InboundMessage`` (``supportbot.channels``). ``submit`` refuses one over the
``limits`` (``MessageTooLarge``, nothing stored), then stores it in the durable inbox (UNIQUE per
channel and external id) and returns only then, so the channel may acknowledge it: a
redelivered message is recognised and not answered twice.

**Lanes.** Every message waits in its conversation's *lane* (``lane_of``: the conversation's id, or a
digest of its channel and conversation key), and its turn runs after the lane's older messages, one at a
time. With a database of its own (SQLite) the worker keeps that order by itself. On a database several
workers share (``shared``: PostgreSQL) one worker at a time runs a lane, holding its lease (``leases``
table, renewed every third of ``lease_s``): it runs the lane's oldest unanswered message, then the next,
whoever received them, and lets the lane go when none is left. So a conversation's turns run one at a
time in arrival order across any number of workers. A worker that dies (kill -9) stops renewing; once its
leases expire, another worker's sweep (every ``sweep_s``) finds the lane's unanswered messages and takes
it over. A worker that finds it lost a lease (it was away longer than the lease) stops that turn at once;
and the engine holds the conversation's advisory lock through a turn (``SQLStore.lock``), which a killed
worker's session gives back and a frozen one's does not, so a new holder waits until the old turn has
ended: a message is never answered by two workers.

Every event of a turn is published to the conversation's subscribers (open widget tabs, an SSE stream)
on this worker and, through ``relay``, on the others; the reply being streamed is kept as a ``LiveTurn``
so a client that reconnects mid-reply can be shown what it missed. A turn runs in a task of its own, so
a channel that goes away (a closed browser tab) never cuts it short.

A message that names a conversation key instead of a conversation (Slack, email) is taken to its
conversation when its turn starts, after the channel's ``prepare`` (which may call the channel's
API, so it never delays the acknowledgement): the newest conversation of that key, or a new one
when there is none or it is closed. While a turn runs, its events also go to the channel's
``render``; its reply reaches the customer through the outbox (``supportbot.delivery``).

Inbox statuses: ``received`` (stored, the engine has not taken it), ``stored`` (the engine stored
the customer's message; ``Engine.run_turn`` sets it in the message's own transaction), ``done``,
``ignored`` (the channel's ``prepare`` declined it: another bot, a deleted user), ``failed`` (its turn
failed ``len(RETRY_AFTER_S) + 1`` times, counted in the row's ``attempts`` over every worker and restart, or
the row is unreadable). ``start`` resumes what a stopped
server left; ``drain`` lets running turns finish within a grace period and hands the rest back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from supportbot.channels import Accepted, ChannelBase, Identity, InboundMessage, Reply, TurnInfo, Unavailable
from supportbot.config import LimitSettings
from supportbot.engine import Engine, clean_text
from supportbot.errors import MessageTooLarge, StorageError, TurnTaken
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
from supportbot.store._leases import LANE_LEASE_PREFIX
from supportbot.store.base import Conversation, Customer
from supportbot.store.mailboxes import InboxItem, Lanes, Leases, Mailboxes

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
    "lane_of",
    "new_worker_id",
]

log = logging.getLogger("supportbot.dispatch")

RESTART_TEXT = "Our support assistant is restarting. Your message is saved, and I'll answer it in a moment."
RETRY_AFTER_S = (5.0, 30.0, 120.0, 600.0)
"""When a turn failed on something other than the model (the database away, a bug), its lane rests for these
many seconds before any worker tries it again; after that it is marked ``failed`` and the lane goes on."""
LANE_LEASE_S = 10.0
"""How long a lane's lease lasts unless renewed: how soon the lanes of a worker that died are taken over."""
SWEEP_S = 2.0
"""How often a worker looks for lanes with unanswered messages that nobody holds."""
ORPHANS_PER_SWEEP = 200
PREPARE_ATTEMPTS = 3
"""How often a channel's ``prepare`` is tried (1 s, then 2 s apart) before the message is answered as it came."""
SAVED_TEXT = (
    "I'm sorry, something went wrong on our side and I couldn't answer just now. "
    "Your message is saved, and it will be answered as soon as the problem is fixed."
)


class _Inbox(Mailboxes, Lanes, Leases, Protocol):
    """What the dispatcher needs of storage: the inbox in lanes under leases, conversation keys, and the
    conversation and customer a keyed message goes to (``SQLStore``)."""

    async def get_conversation(self, conversation_id: str) -> Conversation | None: ...
    async def get_or_create_customer(
        self, *, email: str | None = None, external_id: str | None = None, name: str | None = None,
        verified: bool = False,
    ) -> Customer: ...  # fmt: skip


def new_worker_id() -> str:
    """A name for this process among the workers of one database: host, pid and a random part."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


def lane_of(message: InboundMessage) -> str:
    """The lane a message waits in: its conversation's id, or a digest of its channel and conversation key."""
    if message.conversation_id is not None:
        return message.conversation_id
    key = f"{message.channel}\x00{message.key or ''}".encode()
    return "k" + hashlib.blake2b(key, digest_size=16).hexdigest()


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

    def __init__(
        self,
        engine: Engine,
        inbox: _Inbox,
        *,
        metrics: Metrics | None = None,
        worker_id: str | None = None,
        shared: bool = False,
        lease_s: float = LANE_LEASE_S,
        sweep_s: float = SWEEP_S,
    ) -> None:
        self.engine = engine
        self.inbox = inbox
        self.metrics = metrics
        self.worker_id = worker_id or new_worker_id()
        self.shared = shared
        self.lease_s = lease_s
        self.sweep_s = sweep_s
        self.channels: dict[str, ChannelBase] = {}
        self.turn_ended: Callable[[str], None] | None = None
        self.relay: Callable[[str, Published], None] | None = None
        """Carries what this worker publishes to the other workers (``supportbot.relay``)."""
        self.watching: Callable[[str], None] | None = None
        """Told when a client of this worker begins watching a conversation nobody here watched."""
        self._subscribers: dict[str, set[Subscription]] = {}
        self._live: dict[str, LiveTurn] = {}
        self._lanes: dict[str, asyncio.Task[None]] = {}  # lane → the task running its turns on this worker
        self._again: set[str] = set()  # lanes kicked while their runner was giving them up
        self._held: dict[str, int] = {}  # lanes whose lease this worker holds → when it took it (a count)
        self._takes = 0
        self._lost: set[str] = set()  # lanes whose turn is being stopped because another worker took them
        self._resting: dict[str, asyncio.TimerHandle] = {}  # the only worker: lanes resting after a failed turn
        self._queues: dict[str, deque[InboxItem]] = {}  # the only worker: each lane's unanswered messages
        self._accepting = True
        self._background: list[asyncio.Task[None]] = []

    @property
    def running(self) -> int:
        """Conversations whose turns this worker is running (or about to run)."""
        return len(self._lanes)

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
        lane = lane_of(message)
        payload = encode_message(message)
        inbox_id = await self.inbox.inbox_add(
            message.channel, message.external_id, payload, conversation_id=message.conversation_id, lane=lane
        )
        if inbox_id is None:
            return Accepted(turn=0, duplicate=True)
        if not self.shared:
            self._queues.setdefault(lane, deque()).append(InboxItem(
                id=inbox_id, channel=message.channel, external_id=message.external_id, payload=payload,
                conversation_id=message.conversation_id, lane=lane,
            ))  # fmt: skip
        if message.conversation_id is not None:
            self.publish(
                message.conversation_id,
                CustomerMessage(turn=inbox_id, channel=message.channel, external_id=message.external_id,
                                text=message.text, images=len(message.images)),
            )  # fmt: skip
        self.kick(lane)
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

    async def start(self) -> int:
        """Run what is left unanswered (``resume``), then keep looking for lanes nobody holds (a worker that
        died leaves its lanes when their leases expire) and keep this worker's leases alive."""
        resumed = await self.resume()
        if self.shared:
            self._background = [
                asyncio.create_task(self._sweep_loop(), name="supportbot-lanes-sweep"),
                asyncio.create_task(self._renew_loop(), name="supportbot-lanes-renew"),
            ]
        return resumed

    async def stop_loops(self) -> None:
        """Stop the sweep and the lease renewal that ``start`` began, and the rests of failed lanes (``drain``
        does this too)."""
        for handle in self._resting.values():
            handle.cancel()
        self._resting.clear()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()

    async def resume(self, *, page: int = 1000) -> int:
        """Start the lanes that have unanswered messages and no worker; returns how many were started.

        With a database of its own (``shared`` false: SQLite), the leases a stopped server left are cleared
        first. Rows stored before lanes existed are given theirs. Everything is read ``page`` rows (or lanes) at
        a time, however much there is; on a shared database one page of lanes is started here, and the sweeps
        start the rest.
        """
        if not self.shared:
            await self.inbox.clear_leases()
        after_id = 0
        while items := await self.inbox.inbox_unlaned(limit=page, after_id=after_id):
            after_id = items[-1].id
            unlaned: list[tuple[int, str]] = []
            for item in items:
                if not isinstance(item.payload, dict) or item.payload.get("type", "message") != "message":
                    continue  # an operator's reply: supportbot.delivery resumes those
                message = decode_message(item)
                if message is None:
                    await self.inbox.inbox_set_status(item.id, "failed")
                    continue
                unlaned.append((item.id, lane_of(message)))
            await self.inbox.inbox_set_lanes(unlaned)
        started = 0
        after = ""
        while lanes := await self.inbox.inbox_orphan_lanes(limit=page, after=after):
            after = lanes[-1]
            for lane in lanes:
                if not self.shared:
                    await self._reload(lane, page=page)
                self.kick(lane)
            started += len(lanes)
            if self.shared:
                break  # the sweeps (here and on the other workers) start the rest, a few at a time
        if started:
            log.info("resumed %d conversation(s) with unanswered messages", started)
        return started

    async def drain(self, grace: float) -> int:
        """Take no new messages, let running turns finish for up to ``grace`` seconds, hand back the rest.

        Returns how many turns were handed back to the inbox (another worker, or this one at its next
        start, runs them).
        """
        self._accepting = False  # the sweep starts nothing now; the renewal goes on until the turns end
        running = set(self._lanes.values())
        if running:
            await asyncio.wait(running, timeout=grace)
        unfinished = [task for task in self._lanes.values() if not task.done()]
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
            log.warning("handed %d unfinished turn(s) back to the inbox", len(unfinished))
        await self.stop_loops()
        for subscriptions in list(self._subscribers.values()):
            for subscription in list(subscriptions):
                subscription.close()  # open streams end; their clients reconnect to the next server
        return len(unfinished)

    # -- fan-out -----------------------------------------------------------------------------------

    def subscribe(self, conversation_id: str) -> Subscription:
        subscription = Subscription(conversation_id, self)
        subscribers = self._subscribers.setdefault(conversation_id, set())
        subscribers.add(subscription)
        if len(subscribers) == 1 and self.watching is not None:
            self.watching(conversation_id)
        return subscription

    def watched(self) -> list[str]:
        """The conversations a client of this worker watches now."""
        return list(self._subscribers)

    def subscribers(self, conversation_id: str) -> int:
        return len(self._subscribers.get(conversation_id, ()))

    def _unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.conversation_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.conversation_id]

    def publish(self, conversation_id: str, item: Published) -> None:
        """Show ``item`` to the conversation's clients on this worker, and (``relay``) on the others."""
        self.publish_here(conversation_id, item)
        if self.relay is not None:
            self.relay(conversation_id, item)

    def publish_here(self, conversation_id: str, item: Published, *, remote: bool = False) -> None:
        """Show ``item`` to the conversation's clients connected to this worker; ``remote``: it comes from another
        worker (its live reply is followed only while a client here watches the conversation)."""
        live = self._live.get(conversation_id)
        if isinstance(item, TurnEvent) and (not remote or live is not None or conversation_id in self._subscribers):
            self._follow(conversation_id, item, live)
        for subscription in self._subscribers.get(conversation_id, ()):
            subscription._queue.put_nowait(item)

    def show(self, reply: Reply) -> None:
        """Show a delivered reply to the conversation's open clients now (they also see it in the history)."""
        if reply.conversation_id is not None:
            self.publish(reply.conversation_id, Delivered(reply=reply))

    def live(self, conversation_id: str) -> LiveTurn | None:
        """The reply streaming in this conversation now, on any worker (as far as its events reached here)."""
        return self._live.get(conversation_id)

    # -- lanes -------------------------------------------------------------------------------------

    def kick(self, lane: str) -> None:
        """Make sure a lane's unanswered messages are being run: by this worker, unless another holds it."""
        if not self._accepting or lane in self._resting:
            return
        runner = self._lanes.get(lane)
        if runner is not None:
            self._again.add(lane)  # it looks for the lane's next message before it lets the lane go
            return
        task = asyncio.create_task(self._run_lane(lane))
        self._lanes[lane] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._lanes.get(lane) is finished:
                del self._lanes[lane]
            again = lane in self._again
            self._again.discard(lane)
            if again and not finished.cancelled():
                self.kick(lane)

        task.add_done_callback(done)

    def _rest(self, lane: str, seconds: float) -> None:
        """The only worker: run none of the lane's messages for ``seconds``, then read them again and go on."""
        if self._accepting and lane not in self._resting:
            self._resting[lane] = asyncio.get_running_loop().call_later(seconds, self._wake_up, lane)

    def _wake_up(self, lane: str) -> None:
        """A lane's rest after a failed turn is over: read its messages again from the database, and run them."""
        self._resting.pop(lane, None)

        async def reload() -> None:
            try:
                await self._reload(lane)
            except Exception:
                log.warning("could not read the messages of lane %s; resting it again", lane, exc_info=_trace())
                self._rest(lane, RETRY_AFTER_S[0])
                return
            self.kick(lane)

        task = asyncio.create_task(reload())
        self._background.append(task)
        task.add_done_callback(self._background.remove)

    async def _next(self, lane: str) -> InboxItem | None:
        """The lane's oldest unanswered message: from the database when workers share it, else from memory."""
        if self.shared:
            return await self.inbox.inbox_next(lane)
        queue = self._queues.get(lane)
        return queue[0] if queue else None

    def _forget(self, lane: str, item: InboxItem) -> None:
        """The turn of ``item`` is over: take it off the lane's queue in memory (the only worker)."""
        queue = self._queues.get(lane)
        if queue and queue[0].id == item.id:
            queue.popleft()
        if not queue:
            self._queues.pop(lane, None)

    async def _reload(self, lane: str, *, page: int = 1000) -> None:
        """Read the lane's unanswered messages from the database into its queue (the only worker: at start,
        and after a failed turn, whose row may have moved on, e.g. to ``stored``), ``page`` at a time, all of
        them; messages queued meanwhile are kept."""
        merged = {item.id: item for item in self._queues.get(lane, ())}
        after_id = 0
        while rows := await self.inbox.inbox_lane(lane, limit=page, after_id=after_id):
            merged.update((item.id, item) for item in rows)
            after_id = rows[-1].id
        self._queues[lane] = deque(merged[key] for key in sorted(merged))

    async def _run_lane(self, lane: str) -> None:
        """Take the lane's lease, then run its unanswered messages oldest first until none is left."""
        lease = LANE_LEASE_PREFIX + lane
        took = False
        try:
            if self.shared:
                if not await self._take(lane):
                    return  # another worker runs it; it finds this message when it looks for its next one
                took = True
            while self._accepting:
                self._again.discard(lane)
                item = await self._next(lane)
                if item is None and not self.shared:
                    return  # the only worker: a message stored meanwhile kicked the lane again (``_again``)
                if item is None:
                    # Let go, then look once more: a message stored meanwhile by a worker that found the
                    # lane held is seen here, or its worker takes the lane once it is free.
                    self._held.pop(lane, None)
                    took = False
                    await self.inbox.release_lease(lease, self.worker_id)
                    if await self.inbox.inbox_next(lane) is None:
                        return
                    if not await self._take(lane):
                        return
                    took = True
                    continue
                if not await self._run_item(item, lane):
                    await self._back_off(lane, item)
                    return
                self._forget(lane, item)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database away: the lane's lease expires, and a sweep (here or elsewhere) takes it up again.
            log.warning("could not run the messages of lane %s; trying again shortly", lane, exc_info=_trace())
            if not self.shared:
                self._rest(lane, RETRY_AFTER_S[0])
        finally:
            self._held.pop(lane, None)
            self._lost.discard(lane)
            if took:  # given back only if still this worker's (a lease taken over is the other's now)
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.inbox.release_lease(lease, self.worker_id))

    async def _take(self, lane: str) -> bool:
        """Take the lane's lease; remember when, so that a renewal that began before cannot count it lost."""
        if not await self.inbox.take_lease(LANE_LEASE_PREFIX + lane, self.worker_id, self.lease_s):
            return False
        self._takes += 1
        self._held[lane] = self._takes
        return True

    async def _back_off(self, lane: str, item: InboxItem) -> None:
        """A turn failed (the database away, a bug): hold the lane untouched for a while, then any worker
        tries again; after ``len(RETRY_AFTER_S)`` retries the message is marked failed and the lane goes on.

        The failures are counted in the inbox row (``inbox_turn_failed``), so they add up over every worker that
        ran the turn and over restarts."""
        inbox_id = item.id
        failures = await self.inbox.inbox_turn_failed(inbox_id)
        lease = LANE_LEASE_PREFIX + lane
        if failures > len(RETRY_AFTER_S):
            await self._give_up(item, failures)
            self._forget(lane, item)
            self.kick(lane)
            return
        wait = RETRY_AFTER_S[max(failures, 1) - 1]
        log.warning("turn %d failed (%d of %d tries); trying it again in %.0f s", inbox_id, failures,
                    len(RETRY_AFTER_S) + 1, wait)  # fmt: skip
        if not self.shared:
            self._rest(lane, wait)
            return
        # The lease passes to a waiting owner nobody renews: the lane stays untouched until it expires.
        self._held.pop(lane, None)
        await self.inbox.pass_lease(lease, self.worker_id, f"{self.worker_id}/wait", wait)

    async def _give_up(self, item: InboxItem, tries: int) -> None:
        """Mark a message whose turn keeps failing ``failed``, and open an escalation ticket so a person answers."""
        inbox_id = item.id
        log.error("turn %d failed %d times; opening a ticket for it and marking it failed", inbox_id, tries)
        conversation = await self.inbox.get_conversation(item.conversation_id) if item.conversation_id else None
        text = str(item.payload.get("text") or "") if isinstance(item.payload, dict) else ""
        await self.engine.store.create_ticket(
            subject="A message could not be answered",
            description=f"The assistant failed {tries} times to answer this message (see the server log for turn "
            f"{inbox_id}); it has not been answered:\n\n{text[:4000]}",
            kind="escalation",
            priority="high",
            conversation_id=conversation.id if conversation else None,
            customer_id=conversation.customer_id if conversation else None,
            channel=item.channel,
            flow=conversation.flow if conversation else None,
            actor="dispatcher",
        )
        # After the ticket: if that failed, the row is still unanswered and is tried again (never dropped).
        await self.inbox.inbox_set_status(inbox_id, "failed")

    async def _sweep_loop(self) -> None:
        """Every ``sweep_s``: start the lanes with unanswered messages that nobody holds."""
        cleaned = time.monotonic()
        while True:
            await asyncio.sleep(self.sweep_s)
            try:
                for lane in await self.inbox.inbox_orphan_lanes(limit=ORPHANS_PER_SWEEP):
                    self.kick(lane)
                if time.monotonic() - cleaned > 3600:
                    cleaned = time.monotonic()
                    await self.inbox.drop_stale_leases()
            except Exception:
                log.warning("could not look for unanswered messages; trying again in %.0f s", self.sweep_s,
                            exc_info=_trace())  # fmt: skip

    async def _renew_loop(self) -> None:
        """Renew this worker's leases every third of their length; a lane found taken over (this worker was
        away longer than its lease) stops its turn at once, so that no message is answered twice."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.lease_s / 3)
            before = dict(self._held)
            try:
                held = await self.inbox.renew_leases(
                    self.worker_id, [LANE_LEASE_PREFIX + lane for lane in before], self.lease_s
                )
            except Exception:
                if time.monotonic() - last > self.lease_s:
                    log.error("could not renew this worker's leases for %.0f s; stopping its turns",
                              time.monotonic() - last)  # fmt: skip
                    self._lose(before)
                else:
                    log.warning("could not renew this worker's leases; trying again", exc_info=_trace())
                continue
            last = time.monotonic()
            self._lose({lane: take for lane, take in before.items() if LANE_LEASE_PREFIX + lane not in held})

    def _lose(self, lanes: dict[str, int]) -> None:
        """Stop the turns of lanes whose lease was lost (each as taken then: a lane let go and taken again since
        is another take, and is kept)."""
        for lane, take in lanes.items():
            if self._held.get(lane) != take:
                continue
            log.error("lane %s was taken over by another worker; stopping its turn here", lane)
            del self._held[lane]
            self._lost.add(lane)
            runner = self._lanes.get(lane)
            if runner is not None:
                runner.cancel()

    # -- running turns -----------------------------------------------------------------------------

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
        await self.inbox.inbox_bind(inbox_id, conversation.id)
        return conversation.id

    async def _run_item(self, item: InboxItem, lane: str) -> bool:
        """Run the turn of one inbox row; False when it failed and should be tried again later."""
        message = decode_message(item)
        if message is None:
            await self.inbox.inbox_set_status(item.id, "failed")
            return True
        return await self._run(
            item.id, message, stored=item.status == "stored", conversation_id=item.conversation_id, lane=lane
        )

    async def _run(
        self, inbox_id: int, message: InboundMessage, *, stored: bool, conversation_id: str | None = None,
        lane: str = "",
    ) -> bool:  # fmt: skip
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
                    return True
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
            return True
        except TurnTaken:
            # This worker lost the lane while it prepared the turn; the new holder answers (or answered) it.
            log.warning("turn %d was taken over by another worker; this one answers nothing", inbox_id)
            return True
        except asyncio.CancelledError:
            # Draining, or the lane was lost: the inbox keeps the message; the client hears why it waits.
            # No turn line: the turn runs again (here at the next start, or on another worker) and is logged then.
            stopped = TurnFailed(
                reason="the server stopped", fallback_text=RESTART_TEXT, ticket_id=None, message_id=None
            )
            if lane in self._lost:
                # Another worker runs this turn now: its clients here see it end, the others its new run.
                self._lost.discard(lane)
                if conversation_id is not None:
                    self.publish_here(conversation_id, TurnEvent(turn=inbox_id, event=stopped))
            elif conversation_id is not None:
                self.publish(conversation_id, TurnEvent(turn=inbox_id, event=stopped))
            raise
        except Exception as exc:
            # Storage down or a bug: the inbox keeps the message for another try; the client hears now.
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
            return False
        finally:
            if metrics:
                metrics.turns_in_progress.dec()
            if conversation_id is not None:
                live = self._live.get(conversation_id)
                if live is not None and live.turn == inbox_id:
                    del self._live[conversation_id]

    def _follow(self, conversation_id: str, item: TurnEvent, live: LiveTurn | None) -> None:
        """Keep the conversation's ``LiveTurn`` up to date with a turn's events (from this worker or another)."""
        event = item.event
        if isinstance(event, TurnStarted):
            self._live[conversation_id] = LiveTurn(turn=item.turn)
        elif live is None or live.turn != item.turn:
            return
        elif isinstance(event, TextDelta):
            live.text += event.text
            live.seq = event.seq
        elif isinstance(event, ToolCallStarted):
            live.tool = event.name
        elif isinstance(event, ToolCallFinished | Handoff):
            live.tool = None
        elif isinstance(event, TurnFinished | TurnFailed):
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


def _trace() -> bool:
    """Whether to log the traceback of the exception being handled: not for the database being away (one line
    says it, and it repeats every few seconds while it lasts), yes for anything else (a bug)."""
    return not isinstance(sys.exc_info()[1], StorageError)


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
