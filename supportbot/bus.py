"""Events between the workers of one deployment, over PostgreSQL's LISTEN/NOTIFY (no other broker).

A worker publishes a small JSON-able dict under a topic (``"published"``, ``"admin"``, …); every
*other* worker of the deployment calls its handlers of that topic. The publisher shows the event to
its own clients itself. Live events are a courtesy and the outbox is the guarantee, so the bus drops
events rather than fail a turn: while the database is away, ``publish`` logs (once per outage) and
drops, and a listener that lost its connection reconnects and calls its ``on_resync`` handlers,
since it may have missed events meanwhile.

On the wire (``PostgresBus``): one NOTIFY carries a JSON object ``{"o": origin, "e": [entry, …]}``,
where each entry is ``[topic, data]``, or the id of a ``bus_spill`` row holding ``[topic, data]``
when that entry alone is too large for a notice (PostgreSQL allows 8,000 bytes). The channel is
named after the database and the ``search_path``, so two deployments (or two test schemas) in one
database never see each other's events; every worker of a deployment must use the same URL form.

With SQLite or the memory store there is one process, and ``LocalBus`` does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.engine import URL

from supportbot import _json
from supportbot.store._engine import masked, parse_url, storage_error

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "MAX_PAYLOAD",
    "MAX_QUEUED",
    "Bus",
    "Handler",
    "LocalBus",
    "PostgresBus",
    "ResyncHandler",
    "channel_name",
    "new_worker_id",
    "notify_once",
    "open_bus",
]

log = logging.getLogger("supportbot.bus")

Handler = Callable[[dict[str, Any]], None]
ResyncHandler = Callable[[], None]

MAX_PAYLOAD = 7000
"""Bytes of one NOTIFY payload the bus fills at most (PostgreSQL's limit is 8,000)."""
MAX_QUEUED = 10_000
"""Events waiting to be sent at most; beyond that the oldest is dropped."""
NOTICES_PER_TRIP = 64
"""Notices sent in one round trip at most (pipelined, in one transaction)."""
MAX_ORIGINS = 1000
"""Publishers whose last notice number a receiver keeps (restarted workers come under new names)."""
SPILL_KEEP_S = 600.0
"""Seconds a ``bus_spill`` row is kept: receivers read it within milliseconds, or missed it anyway."""
SPILL_SWEEP_EVERY_S = 60.0
"""Seconds between deletions of old ``bus_spill`` rows (done by a sender after it spilled)."""

_SPILL_INSERT = "INSERT INTO bus_spill (payload, created_at) VALUES ($1, now()) RETURNING id"
_SPILL_SELECT = "SELECT payload FROM bus_spill WHERE id = $1"
_SPILL_SWEEP = "DELETE FROM bus_spill WHERE created_at < now() - make_interval(secs => $1)"
_NOTIFY = "SELECT pg_notify($1, $2)"
# Options of SQLAlchemy's asyncpg dialect, not of ``asyncpg.connect``.
_DIALECT_OPTIONS = {"prepared_statement_cache_size", "prepared_statement_name_func", "async_fallback"}


class Bus(Protocol):
    """Cross-worker events: ``publish`` reaches the ``on`` handlers of every other worker."""

    worker_id: str

    async def start(self) -> None:
        """Connect and listen; returns once listening."""

    async def close(self) -> None:
        """Send what is queued (briefly), stop listening and close the connections."""

    async def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Queue ``data`` for every other worker's handlers of ``topic``; never raises because the database is away.

        Raises:
            TypeError, ValueError: ``data`` is not JSON-able (a programming error).
        """

    def publish_nowait(self, topic: str, data: dict[str, Any]) -> None:
        """``publish`` from code that cannot wait (it only queues): in order with the other calls."""

    def on(self, topic: str, handler: Handler) -> None:
        """Call ``handler`` with the data of each event of ``topic`` from another worker, in arrival order."""

    def on_resync(self, handler: ResyncHandler) -> None:
        """Call ``handler`` after the listener reconnected: events may have been missed meanwhile."""


def new_worker_id() -> str:
    """A name for this process, unique across the deployment: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def channel_name(database_url: str | URL) -> str:
    """The NOTIFY channel of a deployment: from the database name and the ``search_path`` of its URL.

    The host is left out on purpose: ``localhost`` and ``127.0.0.1`` reach the same database, and
    notices never cross databases anyway.
    """
    url = database_url if isinstance(database_url, URL) else parse_url(database_url)
    search_path = url.query.get("search_path") or ""
    if not isinstance(search_path, str):
        search_path = ",".join(search_path)
    schemas = ",".join(part.strip() for part in search_path.split(","))
    digest = hashlib.sha256(f"{url.database or ''}\0{schemas}".encode()).hexdigest()
    return f"supportbot_{digest[:16]}"


def open_bus(database_url: str, *, worker_id: str | None = None) -> Bus:
    """The bus for a database: a ``PostgresBus`` for PostgreSQL URLs, else a ``LocalBus`` (one process)."""
    url = parse_url(database_url)
    if url.get_backend_name() == "postgresql":
        return PostgresBus(url, worker_id=worker_id)
    return LocalBus(worker_id=worker_id)


async def notify_once(database_url: str, topic: str, data: dict[str, Any]) -> None:
    """Send one event to the deployment's workers from a short-lived process (the CLI); a no-op on SQLite.

    Like ``Bus.publish`` it logs instead of raising when the database is away: the outbox still
    delivers what the event announces.

    Raises:
        TypeError, ValueError: ``data`` is not JSON-able.
    """
    url = parse_url(database_url)
    if url.get_backend_name() != "postgresql":
        return
    entry = _encode_entry(topic, data)
    import asyncpg

    try:
        connection = await asyncpg.connect(**_connect_kwargs(url, "supportbot notify"))
        try:
            batch = _Batch(new_worker_id(), None, MAX_PAYLOAD)
            batch.add(entry)
            await _notify(connection, channel_name(url), [batch])
        finally:
            await connection.close(timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("bus: event %r not sent: %s", topic, storage_error(exc, url, "sending an event"))


def _connect_kwargs(url: URL, application_name: str) -> dict[str, Any]:
    """``asyncpg.connect`` arguments for a SQLAlchemy URL, as ``_engine.make_engine`` would connect.

    ``search_path`` (and any other query parameter asyncpg takes, such as ``ssl``) carries over.
    """
    query = dict(url.query)
    search_path = query.pop("search_path", None)
    kwargs: dict[str, Any] = url.translate_connect_args(username="user")
    kwargs.update({key: value for key, value in query.items() if key not in _DIALECT_OPTIONS})
    settings = {"application_name": application_name[:63]}
    if search_path:
        settings["search_path"] = search_path if isinstance(search_path, str) else ",".join(search_path)
    kwargs["server_settings"] = settings
    kwargs.setdefault("timeout", 5.0)
    return kwargs


def _encode_entry(topic: str, data: dict[str, Any]) -> bytes:
    if not isinstance(data, dict):
        raise TypeError(f"bus: the data of topic {topic!r} is a {type(data).__name__}; publish a dict")
    return _json.dumps_bytes([topic, data])


class _Batch:
    """The entries of one NOTIFY payload; an entry too large alone goes to the ``bus_spill`` table.

    ``seq`` numbers a publisher's notices (1, 2, …) so receivers see a gap where notices were lost,
    skip a notice sent twice, and PostgreSQL never folds two equal payloads of one transaction into
    one. ``notify_once`` sends none: its origin is used once.
    """

    def __init__(self, origin: str, seq: int | None, max_payload: int) -> None:
        seq_part = b"" if seq is None else b',"s":' + str(seq).encode()
        self._head = b'{"o":' + _json.dumps_bytes(origin) + seq_part + b',"e":['
        self._room = max_payload - len(self._head) - len(b"]}")
        self._spill_above = self._room - 20  # room for the spill row's id
        self.entries: list[bytes | None] = []  # None: the next of ``spilled``
        self.spilled: list[bytes] = []
        self._size = 0

    def add(self, entry: bytes) -> bool:
        """Add ``entry`` when it fits; False when the batch is full (send it and start another)."""
        spill = len(entry) > self._spill_above
        size = 21 if spill else len(entry) + 1
        if self.entries and self._size + size > self._room:
            return False
        self._size += size
        if spill:
            self.spilled.append(entry)
            self.entries.append(None)
        else:
            self.entries.append(entry)
        return True

    async def payload(self, connection: asyncpg.Connection) -> str:
        """The notice's text, after writing the entries that must be spilled (each insert commits on its own)."""
        ids = iter([str(await connection.fetchval(_SPILL_INSERT, e.decode())).encode() for e in self.spilled])
        body = b",".join(entry if entry is not None else next(ids) for entry in self.entries)
        return (self._head + body + b"]}").decode()


async def _notify(connection: asyncpg.Connection, channel: str, batches: list[_Batch]) -> None:
    """Send the batches' notices in one round trip (one transaction: all are delivered, or none)."""
    payloads = [await batch.payload(connection) for batch in batches]
    if len(payloads) == 1:
        await connection.execute(_NOTIFY, channel, payloads[0])
    else:
        await connection.executemany(_NOTIFY, [(channel, payload) for payload in payloads])


class _Handlers:
    """Handler registration and dispatch, shared by both buses."""

    worker_id: str

    def __init__(self, worker_id: str | None) -> None:
        self.worker_id = worker_id or new_worker_id()
        self._handlers: dict[str, list[Handler]] = {}
        self._resync_handlers: list[ResyncHandler] = []

    def on(self, topic: str, handler: Handler) -> None:
        """Call ``handler`` with the data of each event of ``topic`` from another worker, in arrival order."""
        self._handlers.setdefault(topic, []).append(handler)

    def on_resync(self, handler: ResyncHandler) -> None:
        """Call ``handler`` after the listener reconnected: events may have been missed meanwhile."""
        self._resync_handlers.append(handler)

    def _dispatch(self, topic: str, data: dict[str, Any]) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                handler(data)
            except Exception:
                log.exception("bus: a handler of topic %r failed", topic)

    def _resync(self) -> None:
        for handler in self._resync_handlers:
            try:
                handler()
            except Exception:
                log.exception("bus: a resync handler failed")


class LocalBus(_Handlers):
    """The bus of a single process (SQLite, the memory store): there is no other worker to tell."""

    def __init__(self, *, worker_id: str | None = None) -> None:
        super().__init__(worker_id)

    async def start(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to close."""

    async def publish(self, topic: str, data: dict[str, Any]) -> None:
        """No other worker: nothing to do."""

    def publish_nowait(self, topic: str, data: dict[str, Any]) -> None:
        """No other worker: nothing to do."""


class _Throttle:
    """Lets a repeated warning through at most once per ``every`` seconds."""

    def __init__(self, every: float = 10.0) -> None:
        self._every = every
        self._next = 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._every
        return True


class PostgresBus(_Handlers):
    """Cross-worker events over LISTEN/NOTIFY, on two connections of its own (one listens, one sends).

    Sending: ``publish`` encodes and queues; one task drains the queue, batching entries into as few
    notices as fit ``max_payload`` bytes, so a publisher's events arrive in publish order.

    Receiving: notices from this worker are skipped; entries are dispatched by topic in arrival
    order (a spilled entry is read from ``bus_spill`` first; entries after it wait for it).

    Args:
        database_url: the store's PostgreSQL URL (with ``?search_path=`` when it uses one).
        worker_id: this process's name; ``new_worker_id()`` when not given.
        reconnect_delays: the first and the longest pause between reconnection attempts (doubling).
        ping_every: seconds of silence after which the listener's connection is checked
            (a dropped connection that sent no FIN is found this way).
        max_payload: bytes of one notice at most.
        max_queued: events waiting to be sent at most; the oldest is dropped beyond.
        timeout: seconds a connection attempt or a statement may take.
    """

    def __init__(
        self,
        database_url: str | URL,
        *,
        worker_id: str | None = None,
        reconnect_delays: tuple[float, float] = (0.5, 5.0),
        ping_every: float = 15.0,
        max_payload: int = MAX_PAYLOAD,
        max_queued: int = MAX_QUEUED,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(worker_id)
        self._url = database_url if isinstance(database_url, URL) else parse_url(database_url)
        if self._url.get_backend_name() != "postgresql":
            raise ValueError(f"PostgresBus needs a PostgreSQL URL, not {masked(self._url)}; use open_bus()")
        self.channel = channel_name(self._url)
        self._reconnect_delays = reconnect_delays
        self._ping_every = ping_every
        self._max_payload = max_payload
        self._max_queued = max_queued
        self._timeout = timeout
        # A notice of ours starts with this; it is skipped without being parsed.
        self._own_prefix = '{"o":' + _json.dumps_compact(self.worker_id) + ","
        self._outgoing: deque[bytes] = deque()
        self._outgoing_ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sender: asyncpg.Connection | None = None
        self._sender_down_since: float | None = None
        self._dropped = 0
        self._seq = 0
        self._last_seq: dict[str, int] = {}
        self._full = _Throttle()
        self._swept_at = 0.0
        self._listener: asyncpg.Connection | None = None
        self._listener_lock = asyncio.Lock()
        self._lost = asyncio.Event()
        self._incoming: deque[tuple[str, dict[str, Any]] | int] = deque()
        self._incoming_ready = asyncio.Event()
        self._bad_notice = _Throttle()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- life cycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect both connections and LISTEN; returns once listening.

        Raises:
            StorageError: PostgreSQL cannot be reached (the message names the database and a fix).
        """
        import asyncpg

        try:
            self._listener = await self._listen()
            self._sender = await self._connect("send")
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self._close_connections()
            raise storage_error(exc, self._url, "listening for cross-worker events") from None
        self._tasks = [
            asyncio.create_task(self._send_loop(), name=f"supportbot-bus-send {self.worker_id}"),
            asyncio.create_task(self._receive_loop(), name=f"supportbot-bus-receive {self.worker_id}"),
            asyncio.create_task(self._watch_loop(), name=f"supportbot-bus-watch {self.worker_id}"),
        ]

    async def close(self, *, flush_within: float = 1.0) -> None:
        """Send what is queued (waiting at most ``flush_within`` seconds), then stop and close the connections."""
        if self._closed:
            return
        if self._tasks and self._sender_down_since is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), flush_within)
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._close_connections()

    @property
    def queued(self) -> int:
        """Events waiting to be sent."""
        return len(self._outgoing)

    async def flush(self) -> None:
        """Wait until every event queued so far was sent (or dropped)."""
        await self._idle.wait()

    async def _close_connections(self) -> None:
        for connection in (self._listener, self._sender):
            if connection is not None and not connection.is_closed():
                try:
                    await connection.close(timeout=self._timeout)
                except Exception:  # the database is away: nothing left to say goodbye to
                    connection.terminate()
        self._listener = self._sender = None

    async def _connect(self, role: str) -> asyncpg.Connection:
        import asyncpg

        kwargs = _connect_kwargs(self._url, f"supportbot bus {role} {self.worker_id}")
        kwargs["timeout"] = self._timeout
        connection: asyncpg.Connection = await asyncpg.connect(**kwargs)
        return connection

    # -- sending -----------------------------------------------------------------------------------

    async def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Queue ``data`` for every other worker's handlers of ``topic``; sent in the background, in order.

        Raises:
            TypeError, ValueError: ``data`` is not JSON-able (a programming error).
        """
        self.publish_nowait(topic, data)

    def publish_nowait(self, topic: str, data: dict[str, Any]) -> None:
        """``publish`` without the ``await`` (it never waits): for callers that cannot, such as the dispatcher."""
        entry = _encode_entry(topic, data)
        if self._closed:
            log.debug("bus: closed; event %r not sent", topic)
            return
        if len(self._outgoing) >= self._max_queued:
            self._outgoing.popleft()
            self._dropped += 1
            self._seq += 1  # a gap: receivers resync
            if self._full.ready():
                log.warning(
                    "bus: %d events wait to be sent; dropping the oldest (%d dropped so far)",
                    len(self._outgoing) + 1,
                    self._dropped,
                )
        self._outgoing.append(entry)
        self._idle.clear()
        self._outgoing_ready.set()

    def _take_batches(self) -> list[_Batch]:
        """The queue's first notices, at most ``NOTICES_PER_TRIP``."""
        batches: list[_Batch] = []
        while self._outgoing and len(batches) < NOTICES_PER_TRIP:
            self._seq += 1
            batch = _Batch(self.worker_id, self._seq, self._max_payload)
            while self._outgoing and batch.add(self._outgoing[0]):
                self._outgoing.popleft()
            batches.append(batch)
        return batches

    async def _send_loop(self) -> None:
        delay = self._reconnect_delays[0]
        while True:
            if not self._outgoing:
                self._idle.set()
                self._outgoing_ready.clear()
                await self._outgoing_ready.wait()
                continue
            if self._sender_down_since is not None:
                if not await self._reconnect_sender():
                    self._drop_queued()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._reconnect_delays[1])
                    continue
                delay = self._reconnect_delays[0]
            batches = self._take_batches()
            try:
                await self._send(batches)
            except Exception as exc:
                self._sender_down_since = time.monotonic()
                self._dropped += sum(len(batch.entries) for batch in batches)
                log.warning(
                    "bus: cannot send events: %s; dropping events until it is back",
                    storage_error(exc, self._url, "sending events"),
                )

    async def _send(self, batches: list[_Batch]) -> None:
        """Send notices; when that fails, once more on a new connection."""
        for attempt in (1, 2):
            try:
                if self._sender is None or self._sender.is_closed():
                    self._sender = await self._connect("send")
                async with asyncio.timeout(self._timeout):
                    await _notify(self._sender, self.channel, batches)
                    if (
                        any(batch.spilled for batch in batches)
                        and time.monotonic() - self._swept_at > SPILL_SWEEP_EVERY_S
                    ):
                        self._swept_at = time.monotonic()
                        await self._sender.execute(_SPILL_SWEEP, SPILL_KEEP_S)
                return
            except Exception:
                # A broken connection shows in many ways (asyncpg's InternalClientError among them);
                # whatever it was, one more try on a new connection tells a passing fault from a lasting one.
                await self._drop_sender()
                if attempt == 2:
                    raise

    async def _reconnect_sender(self) -> bool:
        try:
            self._sender = await self._connect("send")
        except Exception:
            return False
        down_since, self._sender_down_since = self._sender_down_since, None
        log.warning(
            "bus: sending events again after %.1f s; %d events dropped so far",
            time.monotonic() - (down_since or time.monotonic()),
            self._dropped,
        )
        return True

    async def _drop_sender(self) -> None:
        if self._sender is not None:
            self._sender.terminate()
            self._sender = None

    def _drop_queued(self) -> None:
        self._dropped += len(self._outgoing)
        self._outgoing.clear()
        self._seq += 1  # a gap: receivers resync

    # -- receiving ---------------------------------------------------------------------------------

    async def _listen(self) -> asyncpg.Connection:
        connection = await self._connect("listen")
        try:
            connection.add_termination_listener(self._on_lost)
            await connection.add_listener(self.channel, self._on_notice)
        except BaseException:
            connection.terminate()
            raise
        self._lost.clear()
        return connection

    def _on_lost(self, connection: asyncpg.Connection) -> None:
        if connection is self._listener:
            self._lost.set()

    def _on_notice(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        """asyncpg's callback, in the event loop: dispatch inline entries now unless earlier ones wait."""
        if payload.startswith(self._own_prefix):
            return
        try:
            notice = _json.loads(payload)
            entries = notice["e"]
            if not isinstance(entries, list):
                raise TypeError("'e' is not a list")
        except (ValueError, TypeError, KeyError) as exc:
            if self._bad_notice.ready():
                log.warning("bus: ignoring a notice on %s that is not the bus's (%s): %.80r", channel, exc, payload)
            return
        seq = notice.get("s")
        if isinstance(seq, int):
            origin = str(notice.get("o"))
            last = self._last_seq.get(origin)
            if last is not None and seq <= last:
                return  # sent again after its connection broke: seen already
            if len(self._last_seq) >= MAX_ORIGINS:
                self._last_seq.clear()
            self._last_seq[origin] = seq
            if last is not None and seq != last + 1:
                log.info("bus: %d notices from %s were lost; resyncing", seq - last - 1, origin)
                self._resync()
        for entry in entries:
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], dict):
                if self._incoming:
                    self._incoming.append((entry[0], entry[1]))
                else:
                    self._dispatch(entry[0], entry[1])
            elif isinstance(entry, int):
                self._incoming.append(entry)
                self._incoming_ready.set()
            elif self._bad_notice.ready():
                log.warning("bus: ignoring an entry that is neither [topic, data] nor a spill id: %.80r", entry)

    async def _receive_loop(self) -> None:
        """Dispatch the entries that wait behind a spilled one, reading spilled ones from ``bus_spill``."""
        while True:
            if not self._incoming:
                self._incoming_ready.clear()
                await self._incoming_ready.wait()
                continue
            entry = self._incoming[0]
            if isinstance(entry, int):
                found = await self._read_spill(entry)
                if found is not None:
                    self._dispatch(*found)
            else:
                self._dispatch(*entry)
            self._incoming.popleft()

    async def _read_spill(self, spill_id: int) -> tuple[str, dict[str, Any]] | None:
        try:
            async with self._listener_lock:
                if self._listener is None:
                    raise ConnectionError("the listener is reconnecting")
                async with asyncio.timeout(self._timeout):
                    payload = await self._listener.fetchval(_SPILL_SELECT, spill_id)
            if payload is None:
                raise LookupError("its row was deleted already")
            topic, data = _json.loads(payload)
        except Exception as exc:
            log.warning("bus: a large event (bus_spill id %d) is lost: %s", spill_id, exc)
            return None
        return topic, data

    async def _watch_loop(self) -> None:
        """Check the listener now and then; when it is lost, reconnect with backoff and call the resync handlers."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self._ping_every)
            except TimeoutError:
                if await self._listener_answers():
                    continue
            await self._reconnect_listener()

    async def _listener_answers(self) -> bool:
        try:
            async with self._listener_lock:
                if self._listener is None:
                    return False
                async with asyncio.timeout(self._timeout):
                    await self._listener.execute("SELECT 1")
            return True
        except Exception:
            return False

    async def _reconnect_listener(self) -> None:
        lost_at = time.monotonic()
        async with self._listener_lock:
            if self._listener is not None:
                self._listener.terminate()
                self._listener = None
        log.warning("bus: the listener's connection to the database was lost; reconnecting")
        delay, longest = self._reconnect_delays
        tries = 0
        while True:
            tries += 1
            try:
                listener = await self._listen()
                break
            except Exception as exc:
                if tries == 1:
                    log.warning(
                        "bus: cannot listen yet: %s; retrying every %.1f s at most",
                        storage_error(exc, self._url, "listening for cross-worker events"),
                        longest,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, longest)
        async with self._listener_lock:
            self._listener = listener
        self._last_seq.clear()  # what was missed meanwhile is no gap to report again
        log.warning("bus: listening again after %.1f s (%d tries); resyncing", time.monotonic() - lost_at, tries)
        self._resync()
