"""Replies out of the outbox and into each channel, exactly once, in order, also after a crash.

Every reply a customer must get (the bot's answer, a fallback, a notice, an operator's reply, the
hand-back notice) is an outbox row written in the transaction that stored its message. The
``Hub`` runs one ``DeliveryWorker`` per channel: it reads the channel's pending rows oldest
first, sends each conversation's rows in order (different conversations concurrently), and marks
each row sent with the channel's id for it. A failed send is retried with exponential backoff (at
least what a 429's ``Retry-After`` asked), and given up after ``server.delivery_give_up_after_s``
or at once when the channel says retrying cannot help; a reply given up on opens (or notes on)
an escalation ticket, so an operator sees it. At start, rows a stopped server left pending are
sent; a row whose attempt may have reached the channel before the crash comes with
``attempt > 1``, for the channel to check before sending again.

The hub is also the connectors' ``Intake`` (``supportbot.channels``): messages go to the
``Dispatcher``; an operator's reply from inside a channel (a Slack thread) is stored once (the
inbox de-duplicates it) and queued for the customer's own channel; and for channels that announce
tickets (``announces_tickets``), new tickets are queued to them as ``ticket`` replies, the
channel's cursor advancing in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from supportbot.channels import (
    Accepted,
    ChannelBase,
    DeliveryError,
    InboundMessage,
    OperatorReply,
    Reply,
    ReplyKind,
)
from supportbot.dispatch import Dispatcher
from supportbot.errors import StorageError
from supportbot.metrics import Metrics
from supportbot.operators import HANDBACK_TEXT, OperatorError, Operators, OperatorStore
from supportbot.store.base import Ticket
from supportbot.store.mailboxes import ChannelState, Lanes, Leases, Mailboxes, OutboxItem, StateChanged

__all__ = ["DeliveryStore", "DeliveryWorker", "Hub", "reply_of"]

log = logging.getLogger("supportbot.delivery")

POLL_S = 1.0
"""How often a worker looks for rows queued by another process (the CLI, another worker) when nothing tells it
(SQLite); on PostgreSQL a notice over the bus wakes it, and it looks every ``BUS_POLL_S`` in case one was missed."""
BUS_POLL_S = 5.0
SEND_LEASE_S = 10.0
"""How long a worker holds an outbox row while it sends it unless renewed (the dispatcher renews a worker's
leases, these included): if the worker dies, another sends the row after this."""
TICKET_POLL_S = 2.0
PENDING_PAGE = 2000
"""Pending rows read per look (oldest first); rows waiting out a backoff are among them."""
UNEXPECTED_BACKOFF_S = 5.0
MAX_BACKOFF_S = 300.0
REPLY_SWEEP_S = 10.0
"""How often each worker of a shared database looks for operators' replies a dead worker took but did not store."""
HELD_RECHECK_S = 1.0
"""Seconds before a row another worker held (or had sent) is looked at again."""
CONCURRENT_CONVERSATIONS = 32
"""Conversations a worker sends to at once (each one's rows in order)."""
TICKET_CURSOR = "tickets_announced"
LEAD_LEASE_S = 10.0
"""The lease on a channel's receiver or its ticket announcements, renewed every third of it by the worker that
runs them: when that worker dies, another takes over after this long."""
APPLY_LEASE_S = 30.0
"""How long a worker holds an operator's reply it is storing (``inbox_claim``); if it dies meanwhile, the next
start (or a redelivery) after this stores the reply."""
LEAD_SAFE_PART = 0.9
"""The part of a receiver's lease after which, unless renewed, this worker stops the receiver (the rest is for the
receiver to stop, and for the clocks of the worker and the database)."""
_KINDS: frozenset[str] = frozenset({"answer", "fallback", "notice", "confirmation", "operator", "handback", "ticket"})


class DeliveryStore(OperatorStore, Mailboxes, Lanes, Leases, Protocol):
    """What delivery needs of storage (``SQLStore``)."""


def reply_of(item: OutboxItem, *, attempt: int, address: Mapping[str, Any], key: str | None) -> Reply:
    """The ``Reply`` a channel is given for an outbox row."""
    payload: dict[str, Any] = item.payload if isinstance(item.payload, dict) else {"text": str(item.payload)}
    kind = payload.get("kind")
    turn = payload.get("turn")
    return Reply(
        outbox_id=item.id,
        channel=item.channel,
        kind=cast(ReplyKind, kind if kind in _KINDS else "answer"),
        text=str(payload.get("text") or ""),
        attempt=attempt,
        conversation_id=item.conversation_id,
        message_id=item.message_id,
        turn=turn if isinstance(turn, int) else None,
        key=key,
        address=address,
        author=payload.get("author") if isinstance(payload.get("author"), str) else None,
        data=_mapping(payload.get("data")),
    )


class DeliveryWorker:
    """Sends one channel's outbox rows: per conversation in order, retried with backoff, each marked sent once.

    Args:
        channel: the channel to deliver to.
        store: the outbox.
        give_up_after_s: how long after a row was queued it is given up on.
        metrics: counts deliveries; optional.
    """

    def __init__(
        self,
        channel: ChannelBase,
        store: DeliveryStore,
        *,
        give_up_after_s: float,
        metrics: Metrics | None = None,
        owner: str = "",
        lease_s: float = SEND_LEASE_S,
    ) -> None:
        self.channel = channel
        self.store = store
        self.give_up_after_s = give_up_after_s
        self.metrics = metrics
        self.owner = owner
        self.lease_s = lease_s
        self.poll_s = POLL_S
        self._wake = asyncio.Event()
        self._busy: dict[str, asyncio.Task[None]] = {}  # conversation (or row) → the task sending its rows
        self._retry_at: dict[int, float] = {}  # outbox id → monotonic time of its next attempt
        self.sending: set[int] = set()
        """Outbox ids this worker holds the lease of and is sending now (``Hub`` renews their leases)."""
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Look for pending rows now (one was just queued)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"supportbot-delivery-{self.channel.name}")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop looking for rows; sends under way get ``grace`` seconds, then are cut off (they stay pending)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        running = list(self._busy.values())
        if running:
            await asyncio.wait(running, timeout=grace)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until nothing is pending or being sent (tests, shutdown)."""
        while True:
            await self.run_once()
            if not self._busy and not await self.store.outbox_pending(self.channel.name, limit=1):
                return
            if self._busy:
                await asyncio.wait(list(self._busy.values()), timeout=POLL_S)
            else:
                await asyncio.sleep(0.05)

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except StorageError as exc:  # the database away for a moment: one line, and the next poll tries again
                log.warning("could not read the %s outbox; retrying: %s", self.channel.name, exc)
            except Exception:
                log.exception("could not read the %s outbox; retrying", self.channel.name)
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that comes as the wake-up
            # does, and the worker would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_wait()):
                    await self._wake.wait()
            self._wake.clear()

    def _next_wait(self) -> float:
        if not self._retry_at:
            return self.poll_s
        return max(0.01, min(self.poll_s, min(self._retry_at.values()) - time.monotonic()))

    async def run_once(self) -> int:
        """Start sending the pending rows that are due; returns how many conversations were started."""
        rows = await self.store.outbox_pending(self.channel.name, limit=PENDING_PAGE)
        now = _utcnow()
        if len(rows) < PENDING_PAGE:  # a row no longer pending (another worker sent it) waits for nothing here
            pending = {row.id for row in rows}
            for outbox_id in [i for i in self._retry_at if i not in pending]:
                del self._retry_at[outbox_id]
        queues: dict[str, list[OutboxItem]] = {}
        for row in rows:
            queues.setdefault(row.conversation_id or f"row:{row.id}", []).append(row)
        started = 0
        for lane, queued in queues.items():
            if lane in self._busy or len(self._busy) >= CONCURRENT_CONVERSATIONS:
                continue
            if self._retry_at.get(queued[0].id, 0.0) > time.monotonic():
                continue  # the lane's first row waits for its backoff; later rows wait behind it
            if queued[0].lease_until is not None and queued[0].lease_until > now:
                continue  # another worker sends it, or it waits out a backoff another worker set
            task = asyncio.create_task(self._send_lane(queued))
            self._busy[lane] = task
            task.add_done_callback(functools.partial(self._lane_done, lane))
            started += 1
        return started

    def _lane_done(self, lane: str, _: asyncio.Task[None]) -> None:
        self._busy.pop(lane, None)
        self._wake.set()  # its conversation may have more rows now

    async def _send_lane(self, rows: list[OutboxItem]) -> None:
        for row in rows:
            if self._retry_at.get(row.id, 0.0) > time.monotonic():
                return
            try:
                sent = await self._send(row)
            except Exception as exc:  # the database away, or a bug: not in a tight loop
                log.error("delivering reply %d on %s failed unexpectedly; trying again in %.0f s: %s",
                          row.id, self.channel.name, UNEXPECTED_BACKOFF_S, exc,
                          exc_info=not isinstance(exc, StorageError))  # fmt: skip
                self._retry_at[row.id] = time.monotonic() + UNEXPECTED_BACKOFF_S
                with contextlib.suppress(Exception):  # give the row's lease back; if this fails too, it expires
                    error = f"{type(exc).__name__}: {exc}"
                    await self.store.outbox_mark_failed(row.id, error=error, retry_in=UNEXPECTED_BACKOFF_S)
                return
            if not sent:
                return  # it waits for a retry: the conversation's later rows wait behind it

    async def _send(self, row: OutboxItem) -> bool:
        """One attempt at a row; True when it is done with (sent, or given up on); False when the conversation's
        later rows must wait (a retry, or another worker holds the row: it sends the rest in order)."""
        attempt = await self.store.outbox_attempt(row.id, owner=self.owner, lease_s=self.lease_s)
        if attempt is None:
            # Another worker holds it (or sent it): look again in a while. The lease's end that ``run_once``
            # compares with this host's clock comes from the database's, so the two may disagree a little;
            # waiting here keeps a host whose clock runs ahead from asking again and again meanwhile.
            self._retry_at[row.id] = time.monotonic() + HELD_RECHECK_S
            return False
        self.sending.add(row.id)
        try:
            return await self._deliver(row, attempt)
        finally:
            self.sending.discard(row.id)

    async def _deliver(self, row: OutboxItem, attempt: int) -> bool:
        address, key = await self._address(row)
        reply = reply_of(row, attempt=attempt, address=address, key=key)
        started = time.perf_counter()
        try:
            external_id = await self.channel.deliver(reply)
        except Exception as exc:
            return await self._failed(row, reply, exc)
        self._retry_at.pop(row.id, None)
        await self.store.outbox_mark_sent(row.id, external_id)
        self._count("sent", time.perf_counter() - started)
        return True

    async def _address(self, row: OutboxItem) -> tuple[Mapping[str, Any], str | None]:
        if row.conversation_id is None:
            return {}, None
        found = await self.store.conversation_address(row.conversation_id)
        return (found.address, found.key) if found is not None else ({}, None)

    async def _failed(self, row: OutboxItem, reply: Reply, exc: Exception) -> bool:
        retryable = exc.retryable if isinstance(exc, DeliveryError) else True
        asked = exc.retry_after if isinstance(exc, DeliveryError) else None
        error = f"{type(exc).__name__}: {exc}"
        age = (_utcnow() - row.created_at).total_seconds() if row.created_at is not None else 0.0
        if not retryable or age >= self.give_up_after_s:
            why = "the channel refused it" if not retryable else f"still failing after {age:.0f} s"
            log.error("giving up on reply %d to %s (%s): %s", row.id, self.channel.name, why, error)
            self._retry_at.pop(row.id, None)
            await self.store.outbox_mark_failed(row.id, error=error, give_up=True)
            self._count("failed")
            await self._tell_operators(reply, error)
            return True
        longest = getattr(self.channel, "max_retry_interval_s", None) or MAX_BACKOFF_S
        backoff = min(longest, 2.0 ** max(0, reply.attempt - 1))
        wait = max(backoff, asked or 0.0)
        log.warning("reply %d to %s not delivered (attempt %d), retrying in %.1f s: %s",
                    row.id, self.channel.name, reply.attempt, wait, error)  # fmt: skip
        self._retry_at[row.id] = time.monotonic() + wait
        # Other workers wait as long (a touch less: this one's own retry must find the row free).
        await self.store.outbox_mark_failed(row.id, error=error, retry_in=max(0.0, wait - 0.1))
        self._count("retried")
        return False

    async def _tell_operators(self, reply: Reply, error: str) -> None:
        """A reply nobody will receive: say so on the conversation's open escalation ticket, or a new one."""
        if reply.conversation_id is None:
            return
        note = f"a reply could not be delivered on {self.channel.name} ({error}); the customer has not received it:\n\n"
        try:
            for ticket in await self.store.list_tickets(conversation_id=reply.conversation_id, status="open"):
                if ticket.kind == "escalation":
                    await self.store.update_ticket(ticket.id, actor="delivery", note=note + reply.text[:2000])
                    return
            conversation = await self.store.get_conversation(reply.conversation_id)
            await self.store.create_ticket(
                subject=f"Reply not delivered on {self.channel.name}"[:200],
                description=note + reply.text,
                kind="escalation",
                priority="high",
                conversation_id=reply.conversation_id,
                customer_id=conversation.customer_id if conversation else None,
                channel=self.channel.name,
                flow=conversation.flow if conversation else None,
                actor="delivery",
            )
        except Exception:
            log.exception("could not open a ticket for the undelivered reply %d", reply.outbox_id)

    def _count(self, outcome: str, seconds: float | None = None) -> None:
        if self.metrics is None:
            return
        self.metrics.deliveries.labels(self.channel.name, outcome).inc()
        if seconds is not None:
            self.metrics.delivery_seconds.labels(self.channel.name).observe(seconds)


class Hub:
    """The connectors' ``Intake`` and every channel's delivery: what the server runs besides the turns.

    Args:
        dispatcher: runs the turns.
        store: the outbox, inbox, tickets and conversations.
        give_up_after_s: ``server.delivery_give_up_after_s``.
        admin_url: the base of links to the admin page in ticket announcements (``server.public_url``);
            None gives links relative to the server.
        ticket_settle_s: how old a ticket must be before it is announced. PostgreSQL hands out ids
            before commit, so a ticket can become visible after one with a higher id; waiting a few
            seconds lets the slower transaction commit before the cursor passes its id (SQLite
            commits in id order: 0).
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        store: DeliveryStore,
        *,
        give_up_after_s: float = 3600.0,
        admin_url: str | None = None,
        ticket_settle_s: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.store = store
        self.give_up_after_s = give_up_after_s
        self.admin_url = (admin_url or "").rstrip("/")
        self.ticket_settle_s = ticket_settle_s
        self.metrics = metrics
        self.channels: dict[str, ChannelBase] = {}
        self.workers: dict[str, DeliveryWorker] = {}
        self.operators = Operators(store, queued=self._queued)
        self.announce_queued: Callable[[str], None] | None = None
        """Tells the other workers a reply was queued here for a channel (``supportbot.relay``)."""
        self._feeds: list[asyncio.Task[None]] = []
        self._applying: set[int] = set()  # operators' replies being stored now (inbox ids)
        self.resumed = 0
        """How many unanswered turns the last ``start`` resumed."""
        self._started: list[ChannelBase] = []
        dispatcher.channels = self.channels
        dispatcher.turn_ended = self.wake

    def register(self, channel: ChannelBase) -> None:
        """Deliver to ``channel`` and give it the live events of its conversations."""
        if channel.name in self.channels:
            raise ValueError(f"a channel named {channel.name!r} is registered already")
        self.channels[channel.name] = channel
        self.workers[channel.name] = DeliveryWorker(
            channel, self.store, give_up_after_s=self.give_up_after_s, metrics=self.metrics,
            owner=self.dispatcher.worker_id,
        )  # fmt: skip

    def _queued(self, channel: str) -> None:
        self.wake(channel)
        if self.announce_queued is not None:
            self.announce_queued(channel)

    def wake(self, channel: str) -> None:
        worker = self.workers.get(channel)
        if worker is not None:
            worker.wake()

    # -- Intake ------------------------------------------------------------------------------------

    async def submit(self, message: InboundMessage) -> Accepted:
        return await self.dispatcher.submit(message)

    async def operator_reply(self, reply: OperatorReply) -> bool:
        payload = {"type": "operator", "actor": reply.actor, "text": reply.text, "ticket_id": reply.ticket_id,
                   "conversation_id": reply.conversation_id, "hand_back": reply.hand_back}  # fmt: skip
        inbox_id = await self.store.inbox_add(reply.channel, reply.external_id, payload)
        if inbox_id is not None:
            await self._apply(inbox_id, reply)
            return True
        # A redelivery: taken before, but perhaps not stored then (the database was away); if so, now.
        for item in await self.store.inbox_pending(reply.channel, statuses=("received",), limit=1000):
            if item.external_id == reply.external_id and item.id not in self._applying:
                await self._apply(item.id, reply, since=item.created_at)
                return True
        return False

    async def _apply(self, inbox_id: int, reply: OperatorReply, *, since: datetime | None = None) -> bool:
        """Store an operator's reply or hand-back; with ``since`` (the inbox row's time), first look whether an
        earlier attempt stored it before a crash, so it is not stored (and sent) twice. Whether this call did."""
        if inbox_id in self._applying:
            return False
        self._applying.add(inbox_id)
        try:
            # Of the workers that read the row (two starting at once, a redelivery meanwhile) one stores it.
            if not await self.store.inbox_claim(inbox_id, self.owner, APPLY_LEASE_S):
                log.info("an operator's reply (inbox row %d) is stored by another worker", inbox_id)
                return False
            # Held while it is stored, however long that takes: another worker's sweep must not store it too.
            keeping = asyncio.create_task(self._keep_claim(inbox_id))
            try:
                await self._store_reply(inbox_id, reply, since)
                return True
            except BaseException:
                # Not stored (the database away, or cancelled): a redelivery or the next start may try again now.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.release_lease(f"inbox:{inbox_id}", self.owner))
                raise
            finally:
                keeping.cancel()
                await asyncio.gather(keeping, return_exceptions=True)
        finally:
            self._applying.discard(inbox_id)

    async def _keep_claim(self, inbox_id: int) -> None:
        while True:
            await asyncio.sleep(APPLY_LEASE_S / 3)
            try:
                await self.store.renew_lease(f"inbox:{inbox_id}", self.owner, APPLY_LEASE_S)
            except Exception as exc:
                log.warning("could not renew the claim on an operator's reply (inbox row %d): %s", inbox_id, exc)

    async def _store_reply(self, inbox_id: int, reply: OperatorReply, since: datetime | None) -> None:
        if since is not None and await self._stored_before(reply, since):
            await self.store.inbox_set_status(inbox_id, "done")
            return
        try:
            if reply.hand_back:
                await self.operators.hand_back(
                    actor=reply.actor, ticket_id=reply.ticket_id, conversation_id=reply.conversation_id
                )
            else:
                await self.operators.reply(actor=reply.actor, text=reply.text, ticket_id=reply.ticket_id,
                                           conversation_id=reply.conversation_id)  # fmt: skip
        except OperatorError:
            await self.store.inbox_set_status(inbox_id, "failed")  # it can never be stored as asked
            raise
        # Any other failure (the database away) leaves the row "received": a redelivery or the next
        # start stores it.
        await self.store.inbox_set_status(inbox_id, "done")

    async def _stored_before(self, reply: OperatorReply, since: datetime) -> bool:
        """Whether the reply (or the hand-back notice) is in its conversation already, stored at or after ``since``.

        A hand-back stored before a crash may not have given the conversation back yet: it is given back now.
        """
        conversation_id = reply.conversation_id
        if reply.ticket_id is not None:
            ticket = await self.store.get_ticket(reply.ticket_id)
            conversation_id = ticket.conversation_id if ticket is not None else None
        if conversation_id is None:
            return False
        kind, text = (
            ("notice", HANDBACK_TEXT) if reply.hand_back else ("human", reply.text.replace("\r\n", "\n").strip())
        )
        for message in await self.store.list_messages(conversation_id, last=50):
            if (message.kind == kind and message.author == reply.actor and message.content == text
                    and message.created_at >= since):  # fmt: skip
                if reply.hand_back:
                    await self.store.update_conversation(conversation_id, status="bot")
                return True
        return False

    async def delivered(self, channel: str, external_id: str) -> Reply | None:
        row = await self.store.outbox_find(channel, external_id)
        if row is None:
            return None
        return reply_of(row, attempt=row.attempts, address={}, key=None)

    # -- running -----------------------------------------------------------------------------------

    async def resume(self) -> int:
        """Apply operators' replies a stopped server took but did not store, then resume unanswered turns."""
        await self.apply_left_replies()
        return await self.dispatcher.start()

    async def apply_left_replies(self, *, older_than_s: float = 0.0) -> int:
        """Store the operators' replies taken (inbox rows ``received``) but not stored: by a server that stopped,
        or by a worker that died meanwhile. ``older_than_s``: only rows at least that old (a live worker is
        storing the newer ones itself). Returns how many this worker stored."""
        applied, after_id = 0, 0
        before = _utcnow() - timedelta(seconds=older_than_s)
        # Operators' replies have no lane: they are among the unlaned rows, paged through by id (never capped).
        while items := await self.store.inbox_unlaned(limit=1000, after_id=after_id):
            after_id = items[-1].id
            for item in items:
                payload = item.payload
                if item.status != "received" or not isinstance(payload, dict) or payload.get("type") != "operator":
                    continue
                if older_than_s and item.created_at is not None and item.created_at > before:
                    continue
                reply = OperatorReply(
                    channel=item.channel, external_id=item.external_id, actor=str(payload.get("actor") or "operator"),
                    text=str(payload.get("text") or ""), ticket_id=payload.get("ticket_id"),
                    conversation_id=payload.get("conversation_id"), hand_back=payload.get("hand_back") is True,
                )  # fmt: skip
                try:
                    applied += await self._apply(item.id, reply, since=item.created_at)
                except Exception:
                    log.exception("an operator's reply taken earlier (inbox row %d) could not be stored", item.id)
        return applied

    async def _sweep_left_replies(self) -> None:
        """On a shared database: take over the operators' replies a worker took and then died before storing."""
        while True:
            await asyncio.sleep(REPLY_SWEEP_S)
            try:
                await self.apply_left_replies(older_than_s=REPLY_SWEEP_S)
            except Exception as exc:
                log.warning("could not look for operators' replies left unstored: %s", exc)

    async def start(self) -> None:
        """Resume what a stopped server left, then start the delivery workers, the ticket announcements and
        the channels' own receivers.

        Resuming comes first, before any channel can bring a message (the server starts listening after
        this, and Socket Mode connects below): a message redelivered at start is then a duplicate of a
        row already resumed, never a second start of it.
        """
        self.resumed = await self.resume()
        for worker in self.workers.values():
            worker.start()
        if self.dispatcher.shared:
            self._feeds.append(asyncio.create_task(self._renew_sends(), name="supportbot-delivery-renew"))
            self._feeds.append(asyncio.create_task(self._sweep_left_replies(), name="supportbot-delivery-replies"))
        for channel in self.channels.values():
            if channel.announces_tickets:
                self._feeds.append(asyncio.create_task(self._announce_tickets(channel)))
            if channel.exclusive_receiver and self.dispatcher.shared:
                self._feeds.append(asyncio.create_task(self._lead(channel)))
                continue
            await channel.start(self)
            self._started.append(channel)

    @property
    def owner(self) -> str:
        """This worker's name in the leases it holds."""
        return self.dispatcher.worker_id

    async def stop(self, grace: float = 5.0) -> None:
        for channel in reversed(self._started):
            try:
                await channel.stop()
            except Exception:
                log.exception("channel %s did not stop cleanly", channel.name)
        self._started.clear()
        for feed in self._feeds:
            feed.cancel()
        await asyncio.gather(*self._feeds, return_exceptions=True)
        self._feeds.clear()
        await asyncio.gather(*(worker.stop(grace) for worker in self.workers.values()))
        await self.dispatcher.stop_loops()

    async def announce_new_tickets(self, channel: ChannelBase, *, until: float | None = None) -> int:
        """Queue the tickets opened since the channel's cursor as ``ticket`` replies; returns how many.

        ``until``: a ``time.monotonic()`` after which no more is queued (the end of this worker's lease on the
        announcements: past it another worker may read the cursor and announce the same tickets); the rest
        waits for the next round.
        """
        cursor = await self.store.channel_state(channel.name, TICKET_CURSOR)
        if cursor is None:
            # The first start announces what is new from now on, not the whole history.
            last = await self.store.last_ticket_id()
            await self.store.set_channel_state(ChannelState(channel=channel.name, key=TICKET_CURSOR, value=str(last)))
            return 0
        settled = _utcnow().timestamp() - self.ticket_settle_s
        tickets = []
        for ticket in await self.store.tickets_after(int(cursor), limit=100):
            if ticket.created_at is not None and ticket.created_at.timestamp() > settled:
                break  # too new to pass: a ticket with a lower id may still be committing
            tickets.append(ticket)
        queued = 0
        for ticket in tickets:
            data = await self._ticket_data(ticket)
            if until is not None and time.monotonic() > until:
                log.warning("announcing tickets on %s took too long; the rest waits for the next round", channel.name)
                break
            # The cursor moves only from where this round found it: a write that stalled past the lease, while
            # another worker announced the same tickets, is refused instead of announcing them again.
            moved = ChannelState(channel=channel.name, key=TICKET_CURSOR, value=str(ticket.id), previous=cursor)
            try:
                await self.store.outbox_add(
                    channel.name, {"kind": "ticket", "text": ticket.subject, "data": data}, state=moved
                )
            except StateChanged:
                log.warning("another worker announced tickets on %s meanwhile; this round stops", channel.name)
                break
            cursor = moved.value
            queued += 1
        if queued:
            self.wake(channel.name)
        return queued

    async def _ticket_data(self, ticket: Ticket) -> dict[str, Any]:
        customer = await self.store.get_customer(ticket.customer_id) if ticket.customer_id else None
        return {
            "ticket_id": ticket.id,
            "subject": ticket.subject,
            "kind": ticket.kind,
            "priority": ticket.priority,
            "customer": customer.display_name if customer else None,
            "customer_email": customer.email if customer else None,
            "customer_verified": customer.verified if customer else False,
            "channel": ticket.channel,
            "conversation_id": ticket.conversation_id,
            "url": f"{self.admin_url}/admin/tickets/{ticket.id}",
        }

    async def _announce_tickets(self, channel: ChannelBase) -> None:
        lease = f"announce:{channel.name}"
        while True:
            try:
                # Of several workers one announces (two would read one cursor and announce a ticket twice); a round
                # stops halfway through the lease (taken again, so renewed, at the next round), so that a slow one
                # never runs on while another worker takes the announcements over.
                if not self.dispatcher.shared:
                    await self.announce_new_tickets(channel)
                else:
                    taking = time.monotonic()
                    if await self.store.take_lease(lease, self.owner, LEAD_LEASE_S):
                        await self.announce_new_tickets(channel, until=taking + LEAD_LEASE_S / 2)
            except Exception:
                log.warning("could not announce new tickets on %s; retrying", channel.name, exc_info=True)
            await asyncio.sleep(TICKET_POLL_S)

    async def _renew_sends(self) -> None:
        """Keep the leases of the outbox rows this worker is sending (a send may outlast ``SEND_LEASE_S``)."""
        while True:
            await asyncio.sleep(SEND_LEASE_S / 3)
            ids = [outbox_id for worker in self.workers.values() for outbox_id in worker.sending]
            if ids:
                try:
                    await self.store.renew_sends(self.owner, ids, SEND_LEASE_S)
                except Exception as exc:
                    log.warning("could not renew the leases of the replies being sent: %s", exc)

    async def _lead(self, channel: ChannelBase) -> None:
        """Run the channel's receiver while this worker holds its lease; start it when the lease is won, stop it
        when it is lost (another worker took over: this one was away longer than the lease), and stop it before
        the lease runs out when it cannot be renewed (the database away or too slow to answer): by then another
        worker may take it, and two receivers must never read one mailbox."""
        lease = f"receiver:{channel.name}"
        loop = asyncio.get_running_loop()
        running = False
        lease_ends = 0.0  # the loop time before which this worker surely holds the lease
        try:
            while True:
                asked = loop.time()
                try:
                    async with asyncio.timeout_at(lease_ends if running else None):
                        held = await self.store.take_lease(lease, self.owner, LEAD_LEASE_S)
                    if held:
                        lease_ends = asked + LEAD_LEASE_S * LEAD_SAFE_PART
                except Exception:  # the database away, or no answer before the lease ends
                    held = running and loop.time() < lease_ends
                    log.warning("could not renew the %s receiver's lease; %s", channel.name,
                                "retrying" if held else "stopping the receiver here until it is renewed",
                                exc_info=not isinstance(sys.exc_info()[1], StorageError | TimeoutError))  # fmt: skip
                if held and not running:
                    log.info("this worker now runs the %s receiver", channel.name)
                    await channel.start(self)
                    running = True
                elif running and not held:
                    log.warning("the %s receiver's lease is lost or ran out; stopping it here", channel.name)
                    await channel.stop()
                    running = False
                pause = LEAD_LEASE_S / 3
                if running:  # wake up in time to stop the receiver if the renewal keeps failing
                    pause = min(pause, max(0.0, lease_ends - loop.time()))
                await asyncio.sleep(pause)
        finally:
            if running:
                with contextlib.suppress(Exception):
                    await channel.stop()
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.release_lease(lease, self.owner))


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _utcnow() -> datetime:
    return datetime.now(UTC)
