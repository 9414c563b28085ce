"""The admin page's live ticket list: new tickets pushed as they are opened, on this worker or another.

The store calls ``NewTickets.opened`` once a ticket's transaction commits (``on_ticket_opened``); where
several workers share the database, the server passes that on over the bus (topic ``tickets``) and
calls ``opened`` for what other workers announce, and again after the bus reconnected (notices may
have been missed). A list waiting in ``tickets_stream`` (server-sent events) then reads what is new.
It also reads every ``HEARTBEAT_S`` seconds anyway, so a notice that was lost costs a short delay,
never a ticket.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["GATHER_S", "HEARTBEAT_S", "NewTickets"]

HEARTBEAT_S = 15.0
"""Seconds between two reads of a quiet live list (each also sends a comment, so proxies keep the stream open)."""
GATHER_S = 0.25
"""Seconds a list waits after a wake before it reads: a burst of tickets (an outage escalating many
conversations) costs each open list a few reads a second, not one per ticket."""


class NewTickets:
    """Wakes the live lists when a ticket was opened."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self.count = 0
        """Tickets opened so far (here or announced by another worker); a waiter remembers what it saw."""
        self.closed = False

    def opened(self, ticket_id: int | None = None) -> None:
        """A ticket was opened (``ticket_id``; None: maybe some, after the bus reconnected): wake every list."""
        self.count += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        """The server stops: end every list's stream."""
        self.closed = True
        self.opened()

    async def wait(self, seen: int, within: float = HEARTBEAT_S) -> None:
        """Return ``GATHER_S`` after ``count`` differs from ``seen`` (gathering a burst), or after ``within`` seconds
        without a change; at once when the server stops."""
        if self.count == seen:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), within)
        if self.count != seen and not self.closed:
            await asyncio.sleep(GATHER_S)
