"""``supportbot serve --workers N``: a parent process that keeps N worker processes serving one port.

Each worker is ``supportbot serve`` itself, started with the same configuration and options; they
bind the same address with ``SO_REUSEPORT``, so the kernel spreads new connections over them.
The parent holds the port bound (not listening) for as long as it runs, which also turns
``--port 0`` into one free port for all of them.

The parent:

- restarts a worker that ends on its own, after a pause of 1 s that doubles up to 30 s for that
  worker, and falls back to 1 s once the worker has stayed up a minute;
- gives up, stopping the others and exiting non-zero, when workers keep crashing
  (``crash_limit`` exits within ``crash_window_s``): a bad configuration must not loop forever;
- forwards SIGTERM and SIGINT to every worker (each drains as a single ``serve`` does), waits for
  them, and exits 0; forwards SIGHUP (reload the flows and tools) to every worker.

A worker ends by itself when the parent disappears (``kill -9`` of the parent), so it never holds
the port alone. The database must be PostgreSQL: workers share conversations through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Supervisor", "bind_shared_port", "watch_parent"]

log = logging.getLogger("supportbot.supervisor")

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STEADY_AFTER_S = 60.0
"""A worker up this long has started fine: its next restart waits ``FIRST_BACKOFF_S`` again."""
CRASH_LIMIT = 5
CRASH_WINDOW_S = 30.0
STOP_GRACE_S = 15.0
"""How long past the drain timeout a worker may take to stop before it is killed."""


def bind_shared_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` with ``SO_REUSEPORT`` and return the socket (bound, not listening).

    Raises:
        OSError: the address cannot be bound (in use by a process that does not share it, or not local).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def watch_parent(parent: int, stop: asyncio.Event, *, every_s: float = 1.0) -> None:
    """In a worker: set ``stop`` (drain and exit) once the supervisor ``parent`` is gone."""
    import os

    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("the supervisor (pid %d) is gone: this worker stops", parent)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


@dataclass
class _Slot:
    """One of the N workers: its process now, and its restart pause."""

    number: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    backoff_s: float = FIRST_BACKOFF_S


@dataclass(kw_only=True)
class Supervisor:
    """Run ``workers`` copies of ``command`` until SIGTERM/SIGINT, restarting those that die.

    Attributes:
        command: the argv of one worker.
        workers: how many to keep running.
        stop_timeout_s: after SIGTERM, how long a worker may take before it is killed (its drain time
            plus a margin).
        crash_limit: this many worker exits within ``crash_window_s`` (not asked for) end the supervisor.
        say: where the one-line notices for the operator go (stderr in the CLI); the log gets them too.
    """

    command: Sequence[str]
    workers: int
    stop_timeout_s: float = 30.0 + STOP_GRACE_S
    crash_limit: int = CRASH_LIMIT
    crash_window_s: float = CRASH_WINDOW_S
    first_backoff_s: float = FIRST_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    steady_after_s: float = STEADY_AFTER_S
    say: Callable[[str], None] = field(default=lambda line: None)
    _slots: list[_Slot] = field(default_factory=list, init=False)
    _crashes: deque[float] = field(default_factory=deque, init=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _failed: str | None = field(default=None, init=False)

    @property
    def pids(self) -> list[int]:
        """The pids of the workers running now."""
        return [s.process.pid for s in self._slots if s.process is not None and s.process.returncode is None]

    async def run(self) -> int:
        """Supervise until stopped; returns the exit code: 0 after SIGTERM/SIGINT, 1 after a crash loop."""
        if self.workers < 1:
            raise ValueError(f"workers must be 1 or more, not {self.workers}")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        try:
            self._slots = [_Slot(number=i + 1) for i in range(self.workers)]
            await asyncio.gather(*(self._keep(slot) for slot in self._slots))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        if self._failed is not None:
            self.say(self._failed)
            log.error("%s", self._failed)
            return 1
        log.info("all %d workers stopped", self.workers)
        return 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop: forward ``sig`` to every worker (they drain) and restart none."""
        if not self._stopping.is_set():
            log.info("%s: stopping %d worker(s)", signal.Signals(sig).name, len(self.pids))
        self._stopping.set()
        self._forward(sig)

    def _forward(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            log.info("SIGHUP: every worker reloads its flows and tools")
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(sig)

    async def _keep(self, slot: _Slot) -> None:
        """Run one worker, and again whenever it dies, until stopping."""
        while not self._stopping.is_set():
            slot.process = await asyncio.create_subprocess_exec(*self.command, preexec_fn=_ignore_sighup_until_ready)
            slot.started = time.monotonic()
            log.info("worker %d started (pid %d)", slot.number, slot.process.pid)
            waiting = asyncio.ensure_future(slot.process.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                await self._stop_one(slot, waiting)
                return
            stopping.cancel()
            code = waiting.result()
            if self._stopping.is_set():
                return
            uptime = time.monotonic() - slot.started
            if uptime >= self.steady_after_s:
                slot.backoff_s = self.first_backoff_s
            self._note_crash(slot, code, uptime)
            if self._stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), slot.backoff_s)
            slot.backoff_s = min(slot.backoff_s * 2, self.max_backoff_s)

    def _note_crash(self, slot: _Slot, code: int, uptime: float) -> None:
        pid = slot.process.pid if slot.process is not None else 0
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and self._crashes[0] < now - self.crash_window_s:
            self._crashes.popleft()
        if len(self._crashes) >= self.crash_limit:
            self._failed = (
                f"workers keep crashing ({len(self._crashes)} exits within {self.crash_window_s:.0f} s, the last: "
                f"worker {slot.number} {how}); stopping. Their log above says why; fix that and start again"
            )
            self._stopping.set()
            self._forward(signal.SIGTERM)
            return
        log.warning("worker %d (pid %d) %s after %.1f s; restarting it in %.0f s", slot.number, pid, how, uptime,
                    slot.backoff_s)  # fmt: skip

    async def _stop_one(self, slot: _Slot, waiting: asyncio.Future[int]) -> None:
        """Wait for a worker that was told to stop; kill it if it takes longer than ``stop_timeout_s``."""
        assert slot.process is not None
        try:
            await asyncio.wait_for(asyncio.shield(waiting), self.stop_timeout_s)
        except TimeoutError:
            log.warning("worker %d (pid %d) did not stop within %.0f s: killing it", slot.number, slot.process.pid,
                        self.stop_timeout_s)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                slot.process.kill()
            await waiting


def _ignore_sighup_until_ready() -> None:
    """In a new worker before it runs: a SIGHUP while it starts must not end it (``serve`` handles it later)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
