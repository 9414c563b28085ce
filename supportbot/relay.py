"""Operators' replies (and the notices their actions leave) to the customers' open connections, from
whichever process stored them.

A reply entered on this server is pushed at once (``deliver``); one stored elsewhere (the CLI,
another worker on the same PostgreSQL) is found by polling the messages table for operators'
messages with a larger id than the last seen, once per ``interval_s``. The poll reads a few index
entries and nothing when there is nothing new, and it works the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from supportbot.dispatch import Dispatcher
from supportbot.store.base import StoredMessage
from supportbot.store.review import Review

__all__ = ["OperatorRelay"]

log = logging.getLogger("supportbot.relay")


class OperatorRelay:
    def __init__(self, store: Review, dispatcher: Dispatcher, *, interval_s: float = 1.0) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.interval_s = interval_s
        self._last = 0
        self._recent: deque[int] = deque(maxlen=1000)  # delivered here already: the poll skips them
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin after the newest message stored so far (older replies are in the clients' history)."""
        self._last = await self.store.last_message_id()
        self._task = asyncio.create_task(self._poll(), name="supportbot-operator-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def deliver(self, message: StoredMessage) -> None:
        """Push a reply stored by this process to its conversation's open clients now."""
        self._recent.append(message.id)
        self.dispatcher.deliver(message)

    async def poll_once(self) -> int:
        """Deliver the replies stored since the last poll; returns how many were new."""
        found = await self.store.operator_messages_after(self._last)
        for message in found:
            self._last = max(self._last, message.id)
            if message.id not in self._recent:
                self.dispatcher.deliver(message)
        return len(found)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll_once()
            except Exception:  # the database may be away for a moment; try again next time
                log.warning("could not look for operators' replies; retrying", exc_info=True)
