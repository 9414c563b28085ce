"""What the email channel keeps between runs, as JSON values in the core's channel state.

- ``imap:<mailbox>``: the reading cursor (UIDVALIDITY, last UID).
- ``id:<hash of a Message-ID>``: the thread a mail belongs to (the customer's and our own replies),
  so a reply to any of them continues its conversation.
- ``tag:<TAG>``: the thread whose replies carry ``[#TAG]`` in their subject (and ``address+TAG@``).
- ``turn:<inbox id>``: the Message-ID and References of the customer's mail a turn answers.
- ``sent:<hash of an address>``: the bot's recent replies to that address (the per-sender cap).
- ``install``: a random token of this installation, in every Message-ID we make (ids stay unique
  when the database is new and outbox ids start again at 1).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

from connectors.email.imap import Cursor
from connectors.email.threads import message_key

__all__ = ["Keeper", "Thread"]

Get = Callable[[str], Awaitable[str | None]]
Set = Callable[[str, str], Awaitable[None]]
Hold = Callable[[str], AbstractAsyncContextManager[None]]
"""Holds a name against other workers for a read-modify-write (``SQLStore.hold_lease``; none: one worker)."""

_HOUR_S = 3600.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Thread:
    """A mail thread: its conversation key, the one sender it belongs to, whether that sender was
    verified, and its subject tag."""

    key: str
    sender: str
    verified: bool
    tag: str

    def admits(self, sender: str, verified: bool) -> bool:
        """A mail joins the thread only from its own sender, verified as the thread was: a forwarded reply
        or a guessed tag never puts someone into another customer's conversation."""
        return sender == self.sender and verified == self.verified


class Keeper:
    """Reads and writes the values above through ``get``/``set`` (the store's channel state)."""

    def __init__(self, get: Get, set: Set, *, hold: Hold | None = None) -> None:
        self._get = get
        self._set = set
        self._hold = hold
        self._sent_lock = asyncio.Lock()
        self._install: str | None = None

    async def _json(self, key: str) -> Any:
        value = await self._get(key)
        if value is None:
            return None
        try:
            return json.loads(value)
        except ValueError:
            return None

    async def _put(self, key: str, value: Any) -> None:
        await self._set(key, json.dumps(value, separators=(",", ":")))

    async def cursor(self, mailbox: str) -> Cursor | None:
        found = await self._json(f"imap:{mailbox}"[:255])
        if isinstance(found, Mapping) and isinstance(found.get("uidvalidity"), int):
            return Cursor(found["uidvalidity"], int(found.get("last_uid") or 0))
        return None

    async def save_cursor(self, mailbox: str, cursor: Cursor) -> None:
        await self._put(f"imap:{mailbox}"[:255], {"uidvalidity": cursor.uidvalidity, "last_uid": cursor.last_uid})

    async def thread_of(self, message_id: str) -> Thread | None:
        return _thread(await self._json(f"id:{message_key(message_id)}"))

    async def remember(self, message_id: str, thread: Thread) -> None:
        """Bind a Message-ID to its thread, once: a later mail reusing the id does not move it elsewhere."""
        key = f"id:{message_key(message_id)}"
        if await self._get(key) is None:
            await self._put(key, asdict(thread))

    async def thread_of_tag(self, tag: str) -> Thread | None:
        return _thread(await self._json(f"tag:{tag.upper()}"))

    async def remember_tag(self, thread: Thread) -> None:
        """Bind the thread's tag to it, once."""
        key = f"tag:{thread.tag.upper()}"
        if await self._get(key) is None:
            await self._put(key, asdict(thread))

    async def turn(self, turn: int) -> Mapping[str, Any] | None:
        found = await self._json(f"turn:{turn}")
        return found if isinstance(found, Mapping) else None

    async def set_turn(self, turn: int, value: Mapping[str, Any]) -> None:
        await self._put(f"turn:{turn}", dict(value))

    async def install(self) -> str:
        """This installation's token, made once."""
        if self._install is None:
            found = await self._get("install")
            if found is None:
                found = secrets.token_hex(6)
                await self._set("install", found)
            self._install = found
        return self._install

    async def reserve_reply(self, address: str, outbox_id: int, *, cap: int, now: float | None = None) -> bool:
        """Count a bot reply to ``address``; False when ``cap`` replies in the last hour were counted before.

        A reply counts once however often its delivery is tried (keyed by outbox id).
        """
        now = time.time() if now is None else now
        local, _, domain = address.lower().partition("@")
        person = f"{local.partition('+')[0]}@{domain}"  # robot+1@, robot+2@ … are one sender
        key = "sent:" + hashlib.sha256(person.encode()).hexdigest()[:40]
        # Deliveries to several conversations run at once, here and on other workers.
        async with self._sent_lock, self._hold(key) if self._hold is not None else nullcontext():
            found = await self._json(key)
            sent: dict[str, float] = {}
            if isinstance(found, Mapping):
                sent = {str(k): float(v) for k, v in found.items() if isinstance(v, int | float) and now - v < _HOUR_S}
            if str(outbox_id) in sent:
                return True
            if len(sent) >= cap:
                return False
            sent[str(outbox_id)] = now
            await self._put(key, sent)
            return True


def _thread(found: Any) -> Thread | None:
    if not isinstance(found, Mapping):
        return None
    try:
        return Thread(key=str(found["key"]), sender=str(found["sender"]), verified=bool(found["verified"]),
                      tag=str(found["tag"]))  # fmt: skip
    except KeyError:
        return None
