"""Load on ``supportbot serve --workers N``: conversations through the REST API, one worker killed, answers checked.

For each worker count (1, 2 and 4 by default) the benchmark makes a PostgreSQL schema of its own
(``--pg-url``, default database ``test`` on 127.0.0.1, schema ``bench_workers_<random>``, dropped
after), migrates it, starts ``python -m supportbot serve --workers N`` on it and on a fake model,
and runs ``--conversations`` conversations of ``--messages`` messages each, all at once: each is
``POST /api/v1/conversations``, then, one message after another, ``POST
/api/v1/conversations/{id}/messages`` read as SSE: time-to-ack is from the POST to its ``ack``
event, time-to-reply to its ``turn_finished`` (or ``turn_failed``: the fallback) event. A POST that
fails before its ack is sent again with the same ``client_message_id`` (the server drops the
duplicate); a stream that breaks after its ack (its worker was killed) is followed by polling the
history until the answer shows.

The fake model (``supportbot.testing.FakeLLMServer`` in a child process) answers after 200-800 ms
(uniform) and with an HTTP 500 to 2 % of requests (``--error-rate``). With N >= 2, once half the
messages are acknowledged one worker is killed with SIGKILL; the supervisor starts another.

Afterwards the database is checked: every acknowledged message must be stored once as the
customer's and followed by exactly one answer (the reply, or the fallback) before the next one;
an answer more is a duplicate, none is lost, and an outbox row more for one message is a duplicate
too. Printed per worker count: messages, answered once, duplicates, lost, throughput, p50/p95
time-to-ack and time-to-reply. Exit status 0 when every message was answered exactly once, 1 when
not (a finding), 2 when the run itself failed.

    python -m bench workers [--workers 1 --workers 2 --workers 4] [--conversations 1000] [--messages 5]
                            [--error-rate 0.02] [--no-kill] [--timeout 600] [--pg-url URL]

Everything listens on and connects to 127.0.0.1 only; processes are stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.widget import _term_with_parent, free_port, raise_fd_limit
from supportbot.testing import Fail, FakeLLMServer, Reply

PG_URL = os.environ.get("SUPPORTBOT_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
READY_TIMEOUT_S = 60.0
POLL_S = 0.5
STOP_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 30.0
ANSWER = "Your order A1001 shipped yesterday; the tracking link is in your email."


# -- the fake model: 200-800 ms, some 500s --------------------------------------------------------


class SlowFake(FakeLLMServer):
    """The fake provider, answering after a uniform random pause, with an HTTP 500 to ``error_rate`` of requests."""

    def __init__(self, low_s: float, high_s: float, error_rate: float) -> None:
        super().__init__(mode="openai", record=False)
        self.low_s, self.high_s, self.error_rate = low_s, high_s, error_rate
        self.failed = 0
        self.responder = self._respond

    def _respond(self, body: dict[str, Any]) -> Fail | Reply:
        if random.random() < self.error_rate:
            self.failed += 1
            return Fail(500)
        return Reply(text=ANSWER)

    async def _handle(self, request: Any) -> Any:
        await asyncio.sleep(random.uniform(self.low_s, self.high_s))
        return await super()._handle(request)


def _serve_fake(queue: Any, stop: Any, low_s: float, high_s: float, error_rate: float, lifetime: float) -> None:
    async def main() -> None:
        fake = SlowFake(low_s, high_s, error_rate)
        await fake.start()
        # A killed worker drops its requests to the model: expected here, not worth a traceback each.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        queue.put(fake.base_url)
        await asyncio.to_thread(stop.wait, lifetime)
        queue.put((fake.request_count, fake.failed))
        await fake.close()

    raise_fd_limit(8192)
    asyncio.run(main())


class FakeProcess:
    """The slow fake in a child process; ``base_url`` once entered, ``counts`` (requests, 500s) after."""

    def __init__(self, low_s: float, high_s: float, error_rate: float, lifetime: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._queue = ctx.Queue()
        self._stop = ctx.Event()
        self._process = ctx.Process(target=_serve_fake, args=(self._queue, self._stop, low_s, high_s, error_rate,
                                                               lifetime), daemon=True)  # fmt: skip
        self.base_url = ""
        self.counts = (0, 0)

    def __enter__(self) -> FakeProcess:
        self._process.start()
        self.base_url = str(self._queue.get(timeout=30))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self.counts = self._queue.get(timeout=10)
        self._process.join(timeout=10)
        if self._process.is_alive() and self._process.pid:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.join(timeout=5)


# -- the database: a schema per run -----------------------------------------------------------------


def _dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _pg(url: str, sql: str, schema: str | None = None) -> list[Any]:
    import asyncpg

    settings = {"search_path": schema} if schema else {}
    connection = await asyncpg.connect(_dsn(url), timeout=10, server_settings=settings)
    try:
        if not sql.startswith("SELECT"):
            await connection.execute(sql)  # may hold several statements
            return []
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


async def create_schema(pg_url: str) -> tuple[str, str]:
    """A new, migrated schema: (its name, the database URL selecting it)."""
    from sqlalchemy.engine import make_url

    from supportbot.store.sql import SQLStore

    schema = f"bench_workers_{uuid.uuid4().hex[:12]}"
    await _pg(pg_url, f"CREATE SCHEMA {schema}")
    url = make_url(pg_url).update_query_dict({"search_path": schema}).render_as_string(hide_password=False)
    await (await SQLStore.open(url)).close()  # migrated once here, not raced by the workers
    return schema, url


# -- the server -----------------------------------------------------------------------------------------


def server_config(fake_url: str, db_url: str, conversations: int, messages: int) -> dict[str, Any]:
    plenty = 100 * conversations * (messages + 2)
    return {
        "llm": {"base_url": fake_url, "api_key": "bench", "model": "fake"},
        "database": {"url": db_url},
        "server": {"host": "127.0.0.1", "drain_timeout_s": 5},
        "connectors": {"web": {"enabled": True, "rate_limits": {
            "requests_per_minute_per_ip": plenty, "conversations_per_hour_per_ip": plenty,
            "messages_per_minute_per_conversation": 60 * (messages + 1)}}},
        "logging": {"level": "WARNING"},
    }  # fmt: skip


class Supervised:
    """``python -m supportbot serve --workers N`` on a free port, its output in a log file."""

    def __init__(self, workers: int, config: dict[str, Any], workdir: Path) -> None:
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "bench.yaml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log_path = workdir / "server.log"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supportbot", "serve", "-c", str(self.config_path), "--port", str(self.port),
                 "--workers", str(self.workers)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir,
                preexec_fn=_term_with_parent,
            )  # fmt: skip

    def worker_pids(self) -> list[int]:
        """The supervisor's children (with one worker, the server itself)."""
        if self.proc is None:
            return []
        if self.workers == 1:
            return [self.proc.pid]
        with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return [int(p) for p in f.read().split()]
        return []

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        """Until ``/readyz`` answers 200 from as many different workers as there are."""
        seen: set[str] = set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the server exited before it was ready:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=2),
                                       headers={"Connection": "close"}) as resp:  # fmt: skip
                    if resp.status == 200:
                        seen.add(resp.headers.get("X-Supportbot-Worker", "one"))
                        if len(seen) >= self.workers:
                            return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"not all {self.workers} workers were ready within {READY_TIMEOUT_S:.0f} s")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


# -- the customers -------------------------------------------------------------------------------------


@dataclass
class Seen:
    """What the clients saw in one run."""

    acked: dict[str, list[str]] = field(default_factory=dict)  # conversation id -> texts acknowledged
    ack_s: list[float] = field(default_factory=list)
    reply_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    acked_count: int = 0
    killed: int | None = None


class Customers:
    """``conversations`` customers, each sending ``messages`` messages one after another."""

    def __init__(self, server: Supervised, args: argparse.Namespace, seen: Seen, deadline: float) -> None:
        self.server = server
        self.args = args
        self.seen = seen
        self.deadline = deadline
        self.half = args.conversations * args.messages // 2
        self.kill_now = asyncio.Event()

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=max(1.0, self.deadline - time.monotonic()))

    async def conversation(self, session: aiohttp.ClientSession, index: int) -> None:
        """One customer; past the run's deadline it gives up (what it sent unanswered counts as lost)."""
        try:
            await self._conversation(session, index)
        except TimeoutError:
            self.seen.errors["deadline"] += 1

    def _left(self) -> None:
        if time.monotonic() >= self.deadline:
            raise TimeoutError

    async def _conversation(self, session: aiohttp.ClientSession, index: int) -> None:
        created = None
        while created is None:
            self._left()
            try:
                async with session.post(f"{self.server.url}/api/v1/conversations", json={},
                                        timeout=self._timeout()) as resp:  # fmt: skip
                    if resp.status == 201:
                        created = await resp.json()
                    else:
                        self.seen.errors[f"create_http_{resp.status}"] += 1
                        await asyncio.sleep(POLL_S)
            except aiohttp.ClientError as exc:
                self.seen.errors[f"create_{type(exc).__name__}"] += 1
                await asyncio.sleep(POLL_S)
        conversation, token = str(created["id"]), str(created["token"])
        headers = {"Authorization": f"Bearer {token}"}
        self.seen.acked[conversation] = []
        for k in range(self.args.messages):
            text = f"bench {index} message {k}: where is my order A1001?"
            await self.message(session, conversation, headers, text, f"b{index}-{k}")

    async def message(
        self, session: aiohttp.ClientSession, conversation: str, headers: dict[str, str], text: str, client_id: str
    ) -> None:
        url = f"{self.server.url}/api/v1/conversations/{conversation}/messages"
        started = time.monotonic()
        acked = answered = False
        while not acked:
            self._left()
            try:
                async with session.post(url, json={"text": text, "client_message_id": client_id},
                                        headers={**headers, "Accept": "text/event-stream"},
                                        timeout=self._timeout()) as resp:  # fmt: skip
                    if resp.status != 200:
                        self.seen.errors[f"post_http_{resp.status}"] += 1
                        await asyncio.sleep(POLL_S)
                        continue
                    event = ""
                    async for raw in resp.content:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: ") and event == "ack":
                            acked = True
                            self._acked(conversation, text, time.monotonic() - started)
                            if json.loads(line[6:]).get("duplicate"):
                                break  # an earlier POST of it was stored: its answer shows in the history
                        elif event in ("turn_finished", "turn_failed") and line.startswith("data: "):
                            answered = True
                            break
            except (aiohttp.ClientError, ValueError) as exc:
                self.seen.errors[f"{'stream' if acked else 'post'}_{type(exc).__name__}"] += 1
                if not acked:
                    await asyncio.sleep(POLL_S)
        if not answered:
            answered = await self.poll_history(session, conversation, headers, text)
        if answered:
            self.seen.reply_s.append(time.monotonic() - started)
        else:
            self.seen.errors["no_answer_by_the_deadline"] += 1

    def _acked(self, conversation: str, text: str, after_s: float) -> None:
        self.seen.acked[conversation].append(text)
        self.seen.ack_s.append(after_s)
        self.seen.acked_count += 1
        if self.seen.acked_count == self.half:
            self.kill_now.set()

    async def poll_history(
        self, session: aiohttp.ClientSession, conversation: str, headers: dict[str, str], text: str
    ) -> bool:
        """Until the history shows an answer after ``text`` (the stream of its turn was lost)."""
        while time.monotonic() < self.deadline:
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                async with session.get(f"{self.server.url}/api/v1/conversations/{conversation}/messages",
                                       headers=headers, timeout=self._timeout()) as resp:  # fmt: skip
                    if resp.status == 200:
                        shown = (await resp.json())["messages"]
                        mine = [i for i, m in enumerate(shown) if m["role"] == "customer" and m["text"] == text]
                        if mine and any(m["role"] == "bot" for m in shown[mine[-1] + 1 :]):
                            return True
            await asyncio.sleep(POLL_S)
        return False

    async def killer(self) -> None:
        """Once half the messages are acknowledged, SIGKILL one worker (the supervisor restarts it)."""
        await self.kill_now.wait()
        pids = self.server.worker_pids()
        if pids:
            victim = random.choice(pids)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
                self.seen.killed = victim


# -- the check in the database ------------------------------------------------------------------------


@dataclass
class Checked:
    answered_once: int = 0
    duplicates: int = 0
    lost: int = 0
    stored_twice: int = 0
    answered_twice: int = 0
    outbox_duplicates: int = 0
    inbox: dict[str, int] = field(default_factory=dict)


async def check(pg_url: str, schema: str, acked: dict[str, list[str]]) -> Checked:
    """Every acknowledged message stored once and followed by exactly one answer; no outbox row twice."""
    rows = await _pg(pg_url, "SELECT conversation_id, role, content FROM messages WHERE role IN ('user', 'assistant') "
                             "AND coalesce(content, '') <> '' ORDER BY id", schema)  # fmt: skip
    stored: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        stored.setdefault(row["conversation_id"], []).append((row["role"], row["content"]))
    result = Checked()
    for conversation, texts in acked.items():
        history = stored.get(conversation, [])
        for text in texts:
            at = [i for i, (role, content) in enumerate(history) if role == "user" and content == text]
            if not at:
                result.lost += 1
                continue
            result.duplicates += len(at) - 1
            result.stored_twice += len(at) - 1
            answers = 0
            for role, _ in history[at[0] + 1 :]:
                if role == "user":
                    break
                answers += 1
            if answers == 0:
                result.lost += 1
            else:
                result.duplicates += answers - 1
                result.answered_twice += answers - 1
                result.answered_once += answers == 1 and len(at) == 1
    twice = await _pg(pg_url, "SELECT count(*) - 1 AS extra FROM outbox WHERE message_id IS NOT NULL "
                              "GROUP BY message_id HAVING count(*) > 1", schema)  # fmt: skip
    result.outbox_duplicates = sum(int(r["extra"]) for r in twice)
    result.duplicates += result.outbox_duplicates
    result.inbox = {r["status"]: int(r["n"]) for r in await _pg(pg_url, "SELECT status, count(*) AS n FROM inbox "
                                                                        "GROUP BY status", schema)}  # fmt: skip
    return result


# -- one run, the table ------------------------------------------------------------------------------


@dataclass
class Row:
    workers: int
    seen: Seen
    checked: Checked
    elapsed_s: float
    fake_counts: tuple[int, int]


async def run_one(workers: int, args: argparse.Namespace) -> Row:
    schema, db_url = await create_schema(args.pg_url)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp, \
                FakeProcess(0.2, 0.8, args.error_rate, args.timeout + 120) as fake:  # fmt: skip
            server = Supervised(workers, server_config(fake.base_url, db_url, args.conversations, args.messages),
                                Path(tmp))  # fmt: skip
            seen = Seen()
            server.start()
            try:
                connector = aiohttp.TCPConnector(limit=0, force_close=False)
                async with aiohttp.ClientSession(connector=connector) as session:
                    await server.wait_ready(session)
                    started = time.monotonic()
                    customers = Customers(server, args, seen, started + args.timeout)
                    killer = asyncio.create_task(customers.killer()) if workers > 1 and args.kill else None
                    await asyncio.gather(*(customers.conversation(session, i) for i in range(args.conversations)))
                    elapsed = time.monotonic() - started
                    if killer is not None:
                        killer.cancel()
                    await settle(args.pg_url, schema)
            except BaseException:
                print(server.log_tail(), file=sys.stderr)
                raise
            finally:
                server.stop()
            checked = await check(args.pg_url, schema, seen.acked)
        return Row(workers=workers, seen=seen, checked=checked, elapsed_s=elapsed, fake_counts=fake.counts)
    finally:
        await _pg(args.pg_url, f"SET lock_timeout = '10s'; DROP SCHEMA {schema} CASCADE")


async def settle(pg_url: str, schema: str) -> None:
    """Until no inbox row waits (a killed worker's rows may be taken over late), ``SETTLE_TIMEOUT_S`` at most."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        waiting = await _pg(pg_url, "SELECT count(*) AS n FROM inbox WHERE status <> 'done'", schema)
        if not waiting[0]["n"]:
            return
        await asyncio.sleep(POLL_S)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def table(rows: list[Row], args: argparse.Namespace) -> str:
    head = ("workers", "messages", "answered once", "duplicates", "lost", "msg/s", "ack p50/p95 ms",
            "reply p50/p95 ms")  # fmt: skip
    lines = [head]
    for r in rows:
        s, c = r.seen, r.checked
        ms = [1000 * percentile(v, q) for v in (s.ack_s, s.reply_s) for q in (50, 95)]
        rate = f"{s.acked_count / r.elapsed_s:.1f}"
        lines.append((str(r.workers), str(s.acked_count), str(c.answered_once), str(c.duplicates), str(c.lost),
                      rate, f"{ms[0]:.0f} / {ms[1]:.0f}", f"{ms[2]:.0f} / {ms[3]:.0f}"))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("")
    for r in rows:
        s, c = r.seen, r.checked
        notes = [f"{r.elapsed_s:.1f} s", f"model requests {r.fake_counts[0]}, injected 500s {r.fake_counts[1]}",
                 f"inbox {dict(sorted(c.inbox.items()))}"]  # fmt: skip
        if s.killed is not None:
            notes.append(f"killed worker pid {s.killed}")
        if c.duplicates:
            notes.append(f"duplicates: customer message stored again {c.stored_twice}, answered again "
                         f"{c.answered_twice}, outbox row again {c.outbox_duplicates}")  # fmt: skip
        if s.errors:
            notes.append("client errors " + ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())))
        out.append(f"{r.workers} worker(s): " + "; ".join(notes))
    expected = args.conversations * args.messages
    for r in rows:
        ok = r.checked.answered_once == r.seen.acked_count == expected and not r.checked.duplicates
        short = "" if r.seen.acked_count == expected else f" ({r.seen.acked_count} of {expected} sent by the deadline)"
        out.append(f"{'PASS' if ok else 'FAIL'}  {r.workers} worker(s): every message answered exactly once{short}")
    return "\n".join(out)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, action="append", help="worker counts to run (default 1, 2 and 4)")
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=5, help="messages per conversation, one after another")
    parser.add_argument("--error-rate", type=float, default=0.02, help="share of model requests answered with 500")
    parser.add_argument("--no-kill", dest="kill", action="store_false", help="do not kill a worker mid-run")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds each worker count may run at most")
    parser.add_argument("--pg-url", default=PG_URL, help="PostgreSQL on 127.0.0.1 (a schema is made and dropped)")
    args = parser.parse_args(argv)
    args.workers = args.workers or [1, 2, 4]
    if min(args.workers) < 1 or args.conversations < 1 or args.messages < 1:
        parser.error("--workers, --conversations and --messages must be 1 or more")
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    raise_fd_limit(4 * args.conversations + 1024)
    rows: list[Row] = []
    try:
        for workers in args.workers:
            print(f"running {workers} worker(s): {args.conversations} conversations x {args.messages} messages ...",
                  file=sys.stderr, flush=True)  # fmt: skip
            rows.append(asyncio.run(run_one(workers, args)))
    except Exception as exc:
        print(f"the benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
    print(table(rows, args))
    expected = args.conversations * args.messages
    sys.exit(0 if all(r.checked.answered_once == expected and not r.checked.duplicates for r in rows) else 1)
