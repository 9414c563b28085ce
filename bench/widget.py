"""Load on the widget's WebSocket: a real ``supportbot serve`` with N conversations open at once.

The fake model runs in a child process and streams every reply a word at a time, 20 ms apart
(``FakeLLMServer(token_delay=0.02)``). The server is ``python -m supportbot serve`` in a process of
its own, on a temporary config (SQLite in a temporary directory, web rate limits raised for the
load, logging at WARNING). The clients run in this process (or in ``--client-processes`` child
processes): each conversation is ``POST /api/v1/conversations``, then the WebSocket
``/widget/ws`` with the subprotocols ``supportbot.v1`` and ``token.<token>``, ``history``, then
``--turns-per-conversation`` messages, each timed to its first ``delta`` and to its
``turn_finished``. Conversations open one after another over ``--ramp-seconds`` and stay open,
idle, once their turns are done; with all of them open the server's resident memory is read
(``/proc/PID/status`` VmRSS) and compared with its memory before they were opened.

Figures: added latency to the first token (the client's time from sending a message to its
first ``delta``, minus the fake's own time to first token: the median of 50 requests a bare
aiohttp client makes straight to the fake before the load; the fake writes its first chunk
without waiting ``token_delay``, so it is about 1 ms), turns per second, errors by kind, server memory per idle open
conversation, server CPU seconds, and how the machine's CPU split between server, fake and
clients. Every figure is printed next to its target.

    python -m bench widget [--conversations 1000] [--turns-per-conversation 1] [--reply-words 20]
                           [--ramp-seconds N/100] [--think-seconds 0] [--client-processes 1]
                           [--timeout 600]

``--ramp-seconds`` defaults to 100 new conversations a second (0: all at once); the offered rate
is printed with the figures, since latency depends on it more than on how many are open.
``--client-processes 2`` moves the clients out of this process when they compete with the
server for the 2 cores (the table shows each side's CPU and the clients' event-loop lag).

Everything listens on and connects to 127.0.0.1 only; the server and the fake are stopped by PID
at the end (SIGTERM, then SIGKILL after 15 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from supportbot.testing import FakeLLMServer, Reply

TOKEN_DELAY_S = 0.02
FAKE_PROBES = 50
WARMUP_CONVERSATIONS = 20
TURN_TIMEOUT_S = 60.0
OPEN_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
SUBPROTOCOL = "supportbot.v1"
QUESTION = "Hi, do you ship to Norway, and how long does it usually take?"
WORDS = (
    "Yes, we ship to Norway. Standard delivery takes three to five business days after dispatch, and every "
    "order gets a tracking link by email. Orders placed before two in the afternoon leave the same day."
).split()

TARGET_CONVERSATIONS = 1000
TARGET_P95_ADDED_MS = 50.0
TARGET_KB_PER_IDLE = 100.0


# -- processes: the fake model, the server, /proc ------------------------------------------------------


def reply_text(words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(words))


def _serve_fake(port_queue: Any, stop: Any, token_delay: float, text: str, lifetime: float) -> None:
    async def main() -> None:
        server = FakeLLMServer(mode="openai", token_delay=token_delay, record=False)
        answer = Reply(text=text)
        server.responder = lambda _body: answer
        await server.start()
        # The TTFT probes drop their response after its first chunk: not an error worth a traceback.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        port_queue.put(server.base_url)
        await asyncio.to_thread(stop.wait, lifetime)  # bounded, should the benchmark die without a word
        await server.close()

    raise_fd_limit(4096)
    asyncio.run(main())


class FakeProcess:
    """The fake provider in a child process; ``pid`` and ``base_url`` once entered."""

    def __init__(self, token_delay: float, text: str, lifetime: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._queue = ctx.Queue()
        self._stop = ctx.Event()
        self._process = ctx.Process(
            target=_serve_fake, args=(self._queue, self._stop, token_delay, text, lifetime), daemon=True
        )
        self.base_url = ""
        self.pid = 0

    def __enter__(self) -> FakeProcess:
        self._process.start()
        self.pid = self._process.pid or 0
        self.base_url = str(self._queue.get(timeout=30))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(timeout=10)
        if self._process.is_alive():
            os.kill(self.pid, signal.SIGKILL)
            self._process.join(timeout=5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_config(fake_url: str, db: Path, conversations: int, turns: int) -> dict[str, Any]:
    plenty = 100 * (conversations + WARMUP_CONVERSATIONS) * (turns + 3)
    return {
        "llm": {"base_url": fake_url, "api_key": "bench", "model": "fake"},
        "database": {"url": f"sqlite+aiosqlite:///{db}"},
        "server": {"host": "127.0.0.1", "drain_timeout_s": 5},
        "connectors": {
            "web": {
                "enabled": True,
                "rate_limits": {
                    "requests_per_minute_per_ip": plenty,
                    "conversations_per_hour_per_ip": plenty,
                    "messages_per_minute_per_conversation": 60 * (turns + 1),
                },
            }
        },
        "logging": {"level": "WARNING"},
    }


class ServerProcess:
    """``python -m supportbot serve`` on a free port of 127.0.0.1, with its output in a log file."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.config_path = workdir / "bench.yaml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log_path = workdir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "supportbot", "serve", "-c", str(self.config_path), "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,  # no ./tools or ./config.yaml of the caller's is picked up
                preexec_fn=_term_with_parent,
            )

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"the server exited before it was ready:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM by PID, SIGKILL if still running after ``STOP_TIMEOUT_S``; returns the exit code."""
        if self._proc is None or self._proc.poll() is not None:
            return None if self._proc is None else self._proc.returncode
        self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def _term_with_parent() -> None:
    """In the server's process before it starts: SIGTERM when the benchmark dies (Linux's PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for PID {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from ``/proc/PID/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise the soft limit on open files to ``needed`` (up to the hard limit); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft, hard


async def server_gauges(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The server's gauges of open sockets and running turns, from ``/metrics``."""
    async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        text = await resp.text()
    found: dict[str, float] = {}
    for name in ("supportbot_websocket_connections", "supportbot_turns_in_progress"):
        match = re.search(rf"^{name} ([0-9.eE+-]+)$", text, re.MULTILINE)
        if match:
            found[name] = float(match.group(1))
    return found


# -- the fake's own time to first token ----------------------------------------------------------------


async def fake_request(session: aiohttp.ClientSession, chat_url: str, *, whole: bool = False) -> tuple[float, float]:
    """One streamed request straight to the fake: (seconds to the first content chunk, to the end).

    Unless ``whole``, the response is dropped after its first content chunk, so the probes are quick
    and one at a time: the fake serves nothing else meanwhile.
    """
    body = {"model": "fake", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    started = time.perf_counter()
    first = float("nan")
    async with session.post(
        chat_url, data=json.dumps(body), headers={"Content-Type": "application/json", "Authorization": "Bearer b"}
    ) as resp:
        resp.raise_for_status()
        while line := await resp.content.readline():
            if first != first and b'"content"' in line:
                first = time.perf_counter() - started
                if not whole:
                    resp.close()
                    break
            if line.startswith(b"data: [DONE]"):
                break
    return first, time.perf_counter() - started


async def probe_fake(session: aiohttp.ClientSession, chat_url: str, stop: asyncio.Event, out: list[float]) -> None:
    """During the load: one request to the fake every 100 ms, so its own TTFT under load is known too."""
    deadline = time.monotonic() + 3600
    while not stop.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            first, _ = await asyncio.wait_for(fake_request(session, chat_url), 30)
            out.append(first)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


# -- the clients ---------------------------------------------------------------------------------------


@dataclass
class Stats:
    """What one client process saw. Times are ``time.monotonic()`` (one clock for every process)."""

    ttft: list[float] = field(default_factory=list)
    turn_s: list[float] = field(default_factory=list)
    open_s: list[float] = field(default_factory=list)
    turn_starts: list[float] = field(default_factory=list)
    turn_ends: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    opened: int = 0
    idle_open: int = 0
    loop_lag: list[float] = field(default_factory=list)
    cpu_s: float = 0.0

    def merge(self, other: Stats) -> None:
        for name in ("ttft", "turn_s", "open_s", "turn_starts", "turn_ends", "loop_lag"):
            getattr(self, name).extend(getattr(other, name))
        self.errors.update(other.errors)
        self.opened += other.opened
        self.idle_open += other.idle_open
        self.cpu_s += other.cpu_s


class TurnError(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


async def _receive(ws: aiohttp.ClientWebSocketResponse, deadline: float, phase: str) -> dict[str, Any]:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TurnError(f"timeout:{phase}")
    try:
        msg = await ws.receive(timeout=left)
    except TimeoutError:
        raise TurnError(f"timeout:{phase}") from None
    if msg.type == aiohttp.WSMsgType.TEXT:
        frame: dict[str, Any] = json.loads(msg.data)
        return frame
    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
        raise TurnError(f"ws_closed:{ws.close_code}:{phase}")
    raise TurnError(f"ws_{msg.type.name.lower()}:{phase}")


class Clients:
    """Conversations of one client process: open, take their turns, stay open and idle until ``run`` closes them."""

    def __init__(self, url: str, args: argparse.Namespace, t_start: float) -> None:
        self.url = url
        self.args = args
        self.t_start = t_start
        self.stats = Stats()
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.closing = False
        self._pending = 0
        self._all_done = asyncio.Event()

    async def run(
        self, session: aiohttp.ClientSession, indices: list[int], on_all_done: Callable[[int], Awaitable[None]]
    ) -> Stats:
        """Run every conversation; once all have taken their turns, await ``on_all_done(open sockets)``, then close."""
        self._pending = len(indices)
        if not indices:
            self._all_done.set()
        cpu = time.process_time()
        tasks = [asyncio.create_task(self.conversation(session, i)) for i in indices]
        lag = asyncio.create_task(self._watch_lag())
        try:
            await self._all_done.wait()
            self.stats.cpu_s = time.process_time() - cpu  # over the same span as the server's figure
            self.stats.idle_open = sum(1 for ws in self.sockets if not ws.closed)
            await on_all_done(self.stats.idle_open)
        finally:
            self.closing = True
            lag.cancel()
            await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
            _, stuck = await asyncio.wait(tasks, timeout=30) if tasks else (set(), set())
            for task in stuck:
                task.cancel()
            self.stats.errors.update({"stuck_at_close": len(stuck)} if stuck else {})
        return self.stats

    async def _watch_lag(self) -> None:
        """How late this process's event loop wakes up from a 10 ms sleep (a sign of a busy client)."""
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            self.stats.loop_lag.append(time.perf_counter() - before - 0.01)

    def _done(self) -> None:
        self._pending -= 1
        if self._pending <= 0:
            self._all_done.set()

    async def conversation(self, session: aiohttp.ClientSession, index: int) -> None:
        args = self.args
        ws: aiohttp.ClientWebSocketResponse | None = None
        counted = False
        try:
            ramp = args.ramp_seconds * index / max(1, args.conversations)
            await asyncio.sleep(max(0.0, self.t_start + ramp - time.monotonic()))
            opened = time.monotonic()
            deadline = opened + OPEN_TIMEOUT_S
            try:
                async with session.post(
                    f"{self.url}/api/v1/conversations", json={}, timeout=aiohttp.ClientTimeout(total=OPEN_TIMEOUT_S)
                ) as resp:
                    if resp.status != 201:
                        raise TurnError(f"create_http_{resp.status}")
                    token = (await resp.json())["token"]
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    ws = await session.ws_connect(
                        f"{self.url}/widget/ws",
                        protocols=(SUBPROTOCOL, f"token.{token}"),
                        autoping=True,
                        timeout=aiohttp.ClientWSTimeout(ws_close=10),
                    )
            except aiohttp.WSServerHandshakeError as exc:
                raise TurnError(f"ws_handshake_{exc.status}") from None
            except TimeoutError:
                raise TurnError("timeout:open") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise TurnError(f"open:{type(exc).__name__}") from None
            self.sockets.append(ws)
            if ws.protocol != SUBPROTOCOL:
                raise TurnError("ws_subprotocol")
            frame = await _receive(ws, deadline, "history")
            if frame.get("type") != "history":
                raise TurnError(f"first_frame_{frame.get('type')}")
            self.stats.open_s.append(time.monotonic() - opened)
            self.stats.opened += 1
            for k in range(args.turns_per_conversation):
                if k and args.think_seconds:
                    await asyncio.sleep(args.think_seconds)
                await self.turn(ws, f"bench-{index}-{k}")
            counted = True
            self._done()
            # Idle: keep reading (that answers the server's pings) until ``run`` closes the socket.
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.stats.errors["unexpected_frame_while_idle"] += 1
            if not self.closing:
                self.stats.errors[f"ws_closed_while_idle:{ws.close_code}"] += 1
        except TurnError as exc:
            if not self.closing:
                self.stats.errors[exc.kind] += 1
        except Exception as exc:
            if not self.closing:
                self.stats.errors[f"client:{type(exc).__name__}"] += 1
        finally:
            if not counted:
                self._done()

    async def turn(self, ws: aiohttp.ClientWebSocketResponse, client_id: str) -> None:
        frame = {"type": "message", "text": QUESTION, "client_message_id": client_id}
        sent_mono = time.monotonic()
        sent = time.perf_counter()
        await ws.send_str(json.dumps(frame))
        deadline = sent_mono + TURN_TIMEOUT_S
        first: float | None = None
        while True:
            got = await _receive(ws, deadline, "delta" if first is None else "turn_finished")
            kind = got.get("type")
            if kind == "delta" and first is None:
                first = time.perf_counter() - sent
            elif kind == "turn_finished":
                if first is None:
                    raise TurnError("finished_without_delta")
                self.stats.ttft.append(first)
                self.stats.turn_s.append(time.perf_counter() - sent)
                self.stats.turn_starts.append(sent_mono)
                self.stats.turn_ends.append(time.monotonic())
                return
            elif kind == "turn_failed":
                raise TurnError("turn_failed")
            elif kind == "error":
                raise TurnError(f"error_frame:{got.get('code')}")


def client_session() -> aiohttp.ClientSession:
    # limit=0: every open WebSocket holds one of the connector's connections.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False))


def _client_child(
    url: str, args: argparse.Namespace, indices: list[int], out: Any, start: Any, t_start: Any, go: Any
) -> None:
    """A client process: say it is up, start at ``t_start`` once ``start`` is set, say when its turns are
    done, close its conversations when ``go`` is set."""
    raise_fd_limit(2 * len(indices) + 256)

    async def main() -> None:
        out.put(("up", 0))
        if not await asyncio.to_thread(start.wait, 60):
            return
        clients = Clients(url, args, t_start.value)

        async def all_done(open_now: int) -> None:
            out.put(("ready", open_now))
            await asyncio.to_thread(go.wait, args.timeout)

        async with client_session() as session:
            stats = await clients.run(session, indices, all_done)
        out.put(("stats", stats))

    asyncio.run(main())


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class Measured:
    fake_ttft_s: float
    fake_reply_s: float
    fake_ttft_load: list[float]
    stats: Stats
    rss_before_kb: int
    rss_idle_kb: int
    rss_after_close_kb: int
    open_sockets: float
    server_cpu_s: float
    fake_cpu_s: float
    wall_s: float
    fd_limit: tuple[int, int]
    warmup_errors: Counter[str]
    server_exit: int | None = None
    notes: list[str] = field(default_factory=list)


async def wait_settled(session: aiohttp.ClientSession, url: str, sockets: int) -> dict[str, float]:
    """Until the server runs no turn and holds ``sockets`` open sockets (bounded by ``SETTLE_TIMEOUT_S``)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    gauges: dict[str, float] = {}
    while time.monotonic() < deadline:
        gauges = await server_gauges(session, url)
        if (
            gauges.get("supportbot_turns_in_progress", 1) == 0
            and gauges.get("supportbot_websocket_connections", -1) == sockets
        ):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # let what a finished turn schedules after its last frame run
    return gauges


async def run(args: argparse.Namespace) -> Measured:
    fd_limit = raise_fd_limit(2 * (args.conversations + WARMUP_CONVERSATIONS) + 1024)
    lifetime = args.timeout + 600
    with (
        FakeProcess(TOKEN_DELAY_S, reply_text(args.reply_words), lifetime) as fake,
        tempfile.TemporaryDirectory() as tmp,
    ):
        chat_url = fake.base_url.rstrip("/") + "/chat/completions"
        config = server_config(fake.base_url, Path(tmp) / "bench.db", args.conversations, args.turns_per_conversation)
        server = ServerProcess(config, Path(tmp))
        server.start()
        try:
            async with client_session() as session:
                return await _measure(args, session, server, fake, chat_url, fd_limit)
        finally:
            code = server.stop()
            if code not in (0, None):
                print(f"server exit code {code}; its log ends:\n{server.log_tail()}", file=sys.stderr)


async def _measure(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    server: ServerProcess,
    fake: FakeProcess,
    chat_url: str,
    fd_limit: tuple[int, int],
) -> Measured:
    await server.wait_ready(session)
    print(f"server PID {server.pid} on {server.url}; fake PID {fake.pid} on {fake.base_url}", flush=True)

    # The fake's own time to first token, as a bare client sees it, one request at a time.
    probes = [(await asyncio.wait_for(fake_request(session, chat_url), 30))[0] for _ in range(FAKE_PROBES)]
    fake_ttft = statistics.median(probes)
    fake_reply = statistics.median([(await fake_request(session, chat_url, whole=True))[1] for _ in range(3)])

    # Warm-up: a few conversations through the server, then closed.
    warm_args = argparse.Namespace(**{**vars(args), "conversations": WARMUP_CONVERSATIONS, "ramp_seconds": 1.0,
                                      "turns_per_conversation": 1})  # fmt: skip
    warm = Clients(server.url, warm_args, time.monotonic())

    async def nothing(_open: int) -> None:
        return None

    warm_stats = await warm.run(session, list(range(WARMUP_CONVERSATIONS)), nothing)
    await wait_settled(session, server.url, 0)
    rss_before = rss_kb(server.pid)

    # The load.
    rate = f"{args.conversations / args.ramp_seconds:.0f}/s" if args.ramp_seconds > 0 else "all at once"
    print(
        f"opening {args.conversations} conversations over {args.ramp_seconds:g} s ({rate}), "
        f"{args.turns_per_conversation} turn(s) each, {args.client_processes} client process(es)",
        flush=True,
    )
    stop_probe = asyncio.Event()
    fake_load: list[float] = []
    idle: dict[str, Any] = {}
    base: dict[str, float] = {}

    def start() -> float:
        """The clients are ready to go: note the CPU counters, start the probe; the first conversation's time."""
        base.update(server_cpu=cpu_seconds(server.pid), fake_cpu=cpu_seconds(fake.pid), wall=time.monotonic())
        idle["probe"] = asyncio.create_task(probe_fake(session, chat_url, stop_probe, fake_load))
        return base["wall"] + 0.5

    async def all_done(open_now: int) -> None:
        """Every conversation has taken its turns and ``open_now`` sit open: read the figures."""
        idle["server_cpu"] = cpu_seconds(server.pid) - base["server_cpu"]
        idle["fake_cpu"] = cpu_seconds(fake.pid) - base["fake_cpu"]
        idle["wall"] = time.monotonic() - base["wall"]
        stop_probe.set()
        await idle["probe"]
        idle["gauges"] = await wait_settled(session, server.url, open_now)
        idle["rss"] = rss_kb(server.pid)

    shares = [list(range(k, args.conversations, args.client_processes)) for k in range(args.client_processes)]
    if args.client_processes == 1:
        clients = Clients(server.url, args, start())
        stats = await asyncio.wait_for(clients.run(session, shares[0], all_done), args.timeout)
    else:
        stats = await asyncio.wait_for(_child_clients(args, server.url, shares, start, all_done), args.timeout)
    await wait_settled(session, server.url, 0)
    rss_after = rss_kb(server.pid)
    return Measured(
        fake_ttft_s=fake_ttft,
        fake_reply_s=fake_reply,
        fake_ttft_load=fake_load,
        stats=stats,
        rss_before_kb=rss_before,
        rss_idle_kb=idle.get("rss", 0),
        rss_after_close_kb=rss_after,
        open_sockets=idle.get("gauges", {}).get("supportbot_websocket_connections", float("nan")),
        server_cpu_s=idle.get("server_cpu", float("nan")),
        fake_cpu_s=idle.get("fake_cpu", float("nan")),
        wall_s=idle.get("wall", float("nan")),
        fd_limit=fd_limit,
        warmup_errors=warm_stats.errors,
    )


async def _child_clients(
    args: argparse.Namespace,
    url: str,
    shares: list[list[int]],
    start: Callable[[], float],
    all_done: Callable[[int], Awaitable[None]],
) -> Stats:
    ctx = multiprocessing.get_context("spawn")
    out, began, t_start, go = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0), ctx.Event()
    children = [
        ctx.Process(target=_client_child, args=(url, args, share, out, began, t_start, go), daemon=True)
        for share in shares
    ]
    for child in children:
        child.start()
    stats = Stats()
    try:
        for _ in children:  # every child has started Python and imported what it needs
            kind, _ = await asyncio.to_thread(out.get, True, 60)
        t_start.value = start()
        began.set()
        ready, open_now = 0, 0
        while ready < len(children):
            kind, got = await asyncio.to_thread(out.get, True, args.timeout)
            ready += 1
            open_now += got
        await all_done(open_now)
        go.set()
        for _ in children:
            kind, got = await asyncio.to_thread(out.get, True, 60)
            if kind == "stats":
                stats.merge(got)
    finally:
        go.set()
        for child in children:
            child.join(timeout=10)
            if child.is_alive() and child.pid:
                os.kill(child.pid, signal.SIGKILL)
    return stats


# -- the report ----------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def _rows(m: Measured, args: argparse.Namespace) -> Iterator[tuple[str, str, str]]:
    s = m.stats
    ms = 1000.0
    added = [t - m.fake_ttft_s for t in s.ttft]
    turns = len(s.ttft)
    span = (max(s.turn_ends) - min(s.turn_starts)) if turns else float("nan")
    errors = sum(s.errors.values())
    idle_n = s.idle_open or float("nan")
    per_idle = (m.rss_idle_kb - m.rss_before_kb) / idle_n
    yield "conversations opened / asked", f"{s.opened} / {args.conversations}", f"{TARGET_CONVERSATIONS} in one process"
    yield "open and idle when measured", f"{s.idle_open} (server gauge {m.open_sockets:.0f})", ""
    yield "errors", f"{errors}", "0"
    yield "added latency to 1st token p50", f"{pct(added, 50) * ms:.1f} ms", ""
    yield "added latency to 1st token p95", f"{pct(added, 95) * ms:.1f} ms", f"<= {TARGET_P95_ADDED_MS:.0f} ms"
    yield (
        "  client TTFT p50 / p95 / max",
        f"{pct(s.ttft, 50) * ms:.1f} / {pct(s.ttft, 95) * ms:.1f} / {pct(s.ttft, 100) * ms:.1f} ms",
        "",
    )
    yield (
        "  fake's own TTFT (subtracted)",
        f"{m.fake_ttft_s * ms:.1f} ms",
        f"bare client, median of {FAKE_PROBES}, before the load",
    )
    yield (
        "  fake's own TTFT under load p50/p95",
        f"{pct(m.fake_ttft_load, 50) * ms:.1f} / {pct(m.fake_ttft_load, 95) * ms:.1f} ms",
        f"{len(m.fake_ttft_load)} probes, 1 every 100 ms",
    )
    yield (
        "turn duration p50 / p95",
        f"{pct(s.turn_s, 50) * ms:.0f} / {pct(s.turn_s, 95) * ms:.0f} ms",
        f"fake alone: {m.fake_reply_s * ms:.0f} ms",
    )
    yield "open (POST + WS + history) p50/p95", f"{pct(s.open_s, 50) * ms:.1f} / {pct(s.open_s, 95) * ms:.1f} ms", ""
    yield "turns", f"{turns}", f"{args.conversations * args.turns_per_conversation} asked"
    offered = args.conversations / args.ramp_seconds if args.ramp_seconds > 0 else float("inf")
    yield (
        "turns per second",
        f"{turns / span:.1f}",
        f"first sent to last finished {span:.1f} s; {offered:.0f}/s offered",
    )
    yield "load duration", f"{m.wall_s:.1f} s", f"ramp {args.ramp_seconds:g} s"
    yield (
        "server RSS before / idle / closed",
        f"{m.rss_before_kb / 1024:.1f} / {m.rss_idle_kb / 1024:.1f} / {m.rss_after_close_kb / 1024:.1f} MB",
        "",
    )
    yield "server memory per idle conversation", f"{per_idle:.1f} KB", f"<= {TARGET_KB_PER_IDLE:.0f} KB"
    yield (
        "server CPU during the load",
        f"{m.server_cpu_s:.2f} s",
        f"{m.server_cpu_s / turns * ms:.2f} ms per turn, its conversation's opening included" if turns else "",
    )
    yield (
        "fake CPU / client CPU",
        f"{m.fake_cpu_s:.2f} s / {s.cpu_s:.2f} s",
        f"client loop lag p95 {pct(s.loop_lag, 95) * ms:.1f} ms",
    )


def report(m: Measured, args: argparse.Namespace) -> str:
    rows = list(_rows(m, args))
    width = max(len(r[0]) for r in rows) + 2
    value_width = max(len(r[1]) for r in rows) + 2
    lines = [f"{'':{width}}{'figure':>{value_width}}   target / note"]
    lines += [f"{name:{width}}{value:>{value_width}}   {note}" for name, value, note in rows]
    s = m.stats
    if s.errors:
        lines.append("errors by kind: " + ", ".join(f"{k} {v}" for k, v in s.errors.most_common()))
    if m.warmup_errors:
        lines.append("warm-up errors: " + ", ".join(f"{k} {v}" for k, v in m.warmup_errors.most_common()))
    cores = os.cpu_count() or 1
    total = m.server_cpu_s + m.fake_cpu_s + s.cpu_s
    if m.wall_s == m.wall_s and m.wall_s > 0:
        lines.append(
            f"CPU over the load ({cores} cores x {m.wall_s:.1f} s = {cores * m.wall_s:.1f} core-s): "
            f"server {m.server_cpu_s / m.wall_s:.0%} of a core, fake {m.fake_cpu_s / m.wall_s:.0%}, "
            f"clients ({args.client_processes} process(es)) {s.cpu_s / m.wall_s:.0%}; "
            f"together {total / (cores * m.wall_s):.0%} of the machine"
        )
    lines.append(
        f"fake model: {args.reply_words} words a reply, {TOKEN_DELAY_S * 1000:.0f} ms between chunks; its own TTFT "
        f"is measured (a bare aiohttp client against the fake, median of {FAKE_PROBES} requests one at a time before "
        f"the load), not computed: it writes the first chunk without waiting token_delay; open-file limit (soft, hard) "
        f"{m.fd_limit}"
    )
    added = [t - m.fake_ttft_s for t in s.ttft]
    per_idle = (m.rss_idle_kb - m.rss_before_kb) / (s.idle_open or float("nan"))
    errors = sum(s.errors.values())
    verdicts = [
        (f"{TARGET_CONVERSATIONS:,} concurrent conversations in one process",
         s.idle_open >= TARGET_CONVERSATIONS, f"{s.idle_open} open at once"),
        ("zero errors", errors == 0, f"{errors} errors"),
        (f"p95 added latency to first token <= {TARGET_P95_ADDED_MS:.0f} ms",
         pct(added, 95) * 1000 <= TARGET_P95_ADDED_MS, f"{pct(added, 95) * 1000:.1f} ms"),
        (f"<= {TARGET_KB_PER_IDLE:.0f} KB per idle open conversation",
         per_idle <= TARGET_KB_PER_IDLE, f"{per_idle:.1f} KB"),
    ]  # fmt: skip
    for name, ok, value in verdicts:
        lines.append(f"{'PASS' if ok else 'FAIL'}  {name}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench widget", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=1000, help="conversations open at once")
    parser.add_argument("--turns-per-conversation", type=int, default=1)
    parser.add_argument("--reply-words", type=int, default=20, help="words (content chunks) in each reply")
    parser.add_argument("--ramp-seconds", type=float, default=None,
                        help="open the conversations evenly over this time (default: conversations / 100)")  # fmt: skip
    parser.add_argument("--think-seconds", type=float, default=0.0, help="pause between a conversation's turns")
    parser.add_argument("--client-processes", type=int, default=1,
                        help="1: the clients run in this process; more: in that many child processes")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on the load after this many seconds")
    args = parser.parse_args(argv)
    if args.ramp_seconds is None:
        args.ramp_seconds = args.conversations / 100
    if args.conversations < 1 or args.turns_per_conversation < 1 or args.client_processes < 1:
        parser.error("--conversations, --turns-per-conversation and --client-processes must be at least 1")
    print(
        f"pid {os.getpid()}: {args.conversations} widget conversations, {args.turns_per_conversation} turn(s) each, "
        f"replies of {args.reply_words} words at {TOKEN_DELAY_S * 1000:.0f} ms a chunk",
        flush=True,
    )
    try:
        measured = asyncio.run(run(args))
    except TimeoutError:
        print(f"gave up: the load did not finish within --timeout {args.timeout:g} s", file=sys.stderr)
        sys.exit(1)
    print(report(measured, args))
