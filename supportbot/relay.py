"""What one worker publishes reaches the clients of the others: the dispatcher's items over the bus.

A widget is connected to one worker, and the turn it waits for may run on another (the conversation's
lane is leased to whichever took it), an operator may reply on a third, and any worker's delivery may
send the reply. The ``Relay`` joins them through ``supportbot.bus`` (PostgreSQL ``LISTEN/NOTIFY``):

* every item the dispatcher publishes (``Dispatcher.relay``) goes to the other workers, which show it
  to the conversation's clients connected to them (``Dispatcher.publish_here``). Text deltas, the bulk
  of them, go only where a client of that conversation is connected: a worker announces the
  conversations its clients watch (``watch``, again every ``WATCH_RENEW_S`` while they do), and the
  others relay deltas of those only. The rest (a turn's start and end, tools, replies delivered)
  always go, so a client that connected a moment before its worker's announcement arrived still
  gets the whole answer with the turn's end;
* a reply queued on one worker (an operator's, a notice) wakes the delivery of the others
  (``outbox``), and so does a ``notify_once`` from the CLI; after the bus reconnects, every delivery
  looks again, since notices may have been missed.

Live events are a courtesy: the outbox is the guarantee, and a client that missed some sees the
history when it reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from supportbot.bus import Bus
from supportbot.dispatch import Dispatcher, Published, TurnEvent
from supportbot.events import TextDelta
from supportbot.published import decode_published, encode_published

__all__ = ["WATCH_RENEW_S", "Relay"]

log = logging.getLogger("supportbot.relay")

WATCH_RENEW_S = 20.0
"""How often a worker announces again the conversations its clients watch; an announcement lasts 3 times this."""
WATCHES_PER_NOTICE = 200


class Relay:
    """Joins a worker's dispatcher and delivery to the other workers' over ``bus``.

    Args:
        dispatcher: this worker's dispatcher.
        bus: the deployment's bus (``supportbot.bus.open_bus``).
        wake: called with a channel's name when a reply was queued for it on another worker.
        channels: the channels whose delivery runs here (all woken after a reconnection).
    """

    def __init__(self, dispatcher: Dispatcher, bus: Bus, *, wake: Any, channels: Any) -> None:
        self.dispatcher = dispatcher
        self.bus = bus
        self._wake = wake
        self._channels = channels
        self._watched: dict[str, float] = {}  # conversation → until when another worker's clients watch it
        self._task: asyncio.Task[None] | None = None

    def attach(self) -> None:
        """Start relaying: set the dispatcher's hooks and the bus's handlers."""
        self.dispatcher.relay = self.send
        self.dispatcher.watching = self.watching
        self.bus.on("conversation", self._received)
        self.bus.on("watch", self._watch)
        self.bus.on("outbox", self._outbox)
        self.bus.on_resync(self._resync)
        self._task = asyncio.create_task(self._announce_loop(), name="supportbot-relay-watch")

    async def close(self) -> None:
        self.dispatcher.relay = None
        self.dispatcher.watching = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # -- out -----------------------------------------------------------------------------------------

    def send(self, conversation_id: str, item: Published) -> None:
        """Relay an item this worker published (``Dispatcher.relay``)."""
        if isinstance(item, TurnEvent) and isinstance(item.event, TextDelta):
            until = self._watched.get(conversation_id)
            if until is None:
                return
            if until < time.monotonic():
                del self._watched[conversation_id]
                return
        self.bus.publish_nowait("conversation", encode_published(conversation_id, item))

    def watching(self, conversation_id: str) -> None:
        """A client of this worker began watching a conversation (``Dispatcher.watching``): say so at once."""
        self.bus.publish_nowait("watch", {"conversations": [conversation_id]})

    def queued(self, channel: str) -> None:
        """A reply was queued here for ``channel``: wake the other workers' delivery too."""
        self.bus.publish_nowait("outbox", {"channel": channel})

    async def _announce_loop(self) -> None:
        while True:
            await asyncio.sleep(WATCH_RENEW_S)
            now = time.monotonic()
            for conversation_id in [c for c, until in self._watched.items() if until < now]:
                del self._watched[conversation_id]  # nobody elsewhere watches it any more
            watched = self.dispatcher.watched()
            for start in range(0, len(watched), WATCHES_PER_NOTICE):
                self.bus.publish_nowait("watch", {"conversations": watched[start : start + WATCHES_PER_NOTICE]})

    # -- in ------------------------------------------------------------------------------------------

    def _received(self, data: dict[str, Any]) -> None:
        try:
            conversation_id, item = decode_published(data)
        except (KeyError, TypeError, ValueError):
            log.warning("an event from another worker could not be read; skipped", exc_info=True)
            return
        self.dispatcher.publish_here(conversation_id, item, remote=True)

    def _watch(self, data: dict[str, Any]) -> None:
        until = time.monotonic() + 3 * WATCH_RENEW_S
        for conversation_id in data.get("conversations") or ():
            if isinstance(conversation_id, str):
                self._watched[conversation_id] = until

    def _outbox(self, data: dict[str, Any]) -> None:
        channel = data.get("channel")
        if isinstance(channel, str):
            self._wake(channel)

    def _resync(self) -> None:
        for channel in list(self._channels):
            self._wake(channel)
