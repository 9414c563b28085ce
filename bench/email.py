"""Email end to end: the time from a mail's arrival in the mailbox to its reply being sent.

``python -m supportbot serve`` runs in a process of its own and answers a real Dovecot mailbox
(``connectors.email.testing.Dovecot``: 127.0.0.1, STARTTLS, its own temporary maildir), sending its
replies to an SMTP sink (``SmtpSink``, on this process's event loop); the fake model runs in a child
process (``bench.widget.FakeProcess``) and answers every mail with the same short text, taking
``--model-ms`` to stream it. The server's config is the email tests' (SQLite in a temporary
directory, ``trusted_authserv_id``, address help@acme.example, logging at WARNING) with the widget
off and ``replies_per_sender_per_hour`` raised from 5 to 1000, so the per-sender cap never holds a
reply back whatever ``--mails`` and ``--senders`` are. ``--idle`` (the default) waits for new mail
with IMAP IDLE; ``--poll`` turns IDLE off (``imap.idle: false``) and looks every ``--poll-interval``
seconds (``poll_interval_s``): 5 s by default, not the connector's 60 s, so that the defaults' 20 s
of mail spans several looks and the wait for the next look is sampled evenly (a mail waits half the
interval on average, the whole interval at most: 30 s and 60 s with the connector's default).

After a warm-up (3 mails answered: IMAP logged in and waiting, the first turn's imports done),
``--mails`` mails from ``--senders`` customers (each ``dmarc=pass`` by the trusted server, each with
a unique Message-ID) are appended to the INBOX, ``--rate`` a second (0: all at once), as an MTA
would deliver them. A reply is matched to its mail by its ``In-Reply-To``. Latency is the sink's
``received_at`` (the end of the reply's DATA) minus the moment the mail's APPEND returned (it is in
the mailbox), both ``time.monotonic()`` in this process; the fake model's time is part of it and is
printed beside it, not subtracted. The test Dovecot notices new mail about 0.5 s after it arrives
(its own notify delay, ``mailbox_idle_check_interval = 1 secs``) before it pushes ``EXISTS``; a
provider's IMAP server has its own delay.

Figures: mails sent, replies received (each mail must be answered exactly once: duplicates and
replies to no mail of ours are counted), latency p50/p95/p99/max, replies a second, the server's
CPU seconds per mail (``/proc/PID/stat`` user + system, from the first append to the last reply),
and from the server's ``/metrics``: its mean turn and SMTP delivery times and its delivery outcomes.
After the last reply the benchmark waits ``--grace`` seconds for late duplicates before counting.
It exits 1 when a mail got no reply, or more than one.

    python -m bench email [--mails 200] [--senders 50] [--rate 10] [--model-ms 0]
                          [--idle | --poll] [--poll-interval 5] [--grace 2] [--timeout S]

Measured on the 2-core machine (defaults: 200 mails from 50 senders at 10/s, model 0 ms), after the
fix for new-mail notices that aioimaplib dropped (connectors/email/imap.py catches them now):

    --idle           p50 405 ms, p95 614 ms, p99 677 ms, max 709 ms; 9.9 replies/s; server CPU 33 ms
                     per mail; mean turn 12 ms, SMTP delivery 67 ms. Most of it is Dovecot's ~0.5 s
                     before it pushes EXISTS. 200 of 200 answered once.
    --rate 0         200 appended at once: all answered once, p50 4.7 s, max 6.4 s (the appends
                     themselves took up to 6 s), 16.3 replies/s.
    --poll (5 s)     p50 4329 ms, p95 6984 ms, max 7489 ms, min 2037 ms (before the fix; polling was
                     not affected). A look reads the mails it finds one after another, so a cycle is
                     longer than the 5 s sleep.
    --model-ms 2000  p50 2550 ms, p95 2848 ms, max 2927 ms (before the fix, which left 3 unread then).

Everything listens on and connects to 127.0.0.1 only; the server, the fake and Dovecot are stopped
by PID at the end, and their temporary directories removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp

from bench.widget import FakeProcess, ServerProcess, cpu_seconds, pct
from connectors.email.settings import EmailSettings
from connectors.email.testing import Dovecot, SentMail, SmtpSink

ADDRESS = "help@acme.example"
MX = "mx.acme.example"
WARMUP_MAILS = 3
REPLY = "Thanks for writing! Your order left our warehouse yesterday; the tracking link is in your order confirmation."
SENDER_DOMAIN = "customers.example"
POLL_DEFAULT_S = 5.0


# -- the mails ------------------------------------------------------------------------------------------


def customer_mail(n: int, sender: str, run: str) -> tuple[bytes, str]:
    """Mail number ``n`` from ``sender``, verified by the trusted server; returns it and its Message-ID."""
    message = EmailMessage()
    verdicts = f"spf=pass smtp.mailfrom={SENDER_DOMAIN}; dmarc=pass header.from={SENDER_DOMAIN}"
    message["Authentication-Results"] = f"{MX}; {verdicts}"
    message["From"] = f"Customer <{sender}>"
    message["To"] = ADDRESS
    message["Subject"] = f"Where is my order A{1000 + n}?"
    message_id = f"<{run}.{n}@{SENDER_DOMAIN}>"
    message["Message-ID"] = message_id
    message.set_content(f"Hello,\n\nI ordered A{1000 + n} last week. When will it arrive?\n\nThanks\n")
    return message.as_bytes(), message_id


def sender_of(n: int, senders: int) -> str:
    return f"customer{n % senders}@{SENDER_DOMAIN}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Tally:
    """Replies matched to the mails they answer.

    Attributes:
        latency_s: per answered mail, its first reply's arrival minus the mail's arrival.
        answered: mails with at least one reply.
        duplicates: replies beyond the first to a mail.
        strangers: replies whose In-Reply-To names none of the mails.
        unanswered: the Message-IDs of the mails without a reply.
        last_reply: the arrival of the latest reply matched (``time.monotonic()``), 0 for none.
    """

    latency_s: list[float]
    answered: int
    duplicates: int
    strangers: int
    unanswered: tuple[str, ...]
    last_reply: float


def tally(appended: dict[str, float], replies: list[SentMail]) -> Tally:
    """Matches ``replies`` to the mails of ``appended`` (Message-ID → arrival time) by In-Reply-To."""
    first: dict[str, float] = {}
    duplicates = strangers = 0
    for reply in replies:
        answers = str(reply.message.get("In-Reply-To", "")).strip()
        if answers not in appended:
            strangers += 1
        elif answers in first:
            duplicates += 1
        else:
            first[answers] = reply.received_at
    return Tally(
        latency_s=[at - appended[mid] for mid, at in first.items()],
        answered=len(first),
        duplicates=duplicates,
        strangers=strangers,
        unanswered=tuple(mid for mid in appended if mid not in first),
        last_reply=max(first.values(), default=0.0),
    )


def _answered(replies: list[SentMail]) -> set[str]:
    return {str(reply.message.get("In-Reply-To", "")).strip() for reply in replies}


async def deliver(dovecot: Dovecot, mails: list[tuple[bytes, str]], rate: float, out: dict[str, float]) -> list[float]:
    """Appends the mails on schedule (``rate`` a second, 0: all at once); returns each APPEND's duration.

    ``out`` gets each Message-ID's arrival: the moment its APPEND returned.
    """
    durations: list[float] = []
    start = time.monotonic()

    async def one(k: int, raw: bytes, message_id: str) -> None:
        if rate > 0:
            await asyncio.sleep(max(0.0, start + k / rate - time.monotonic()))
        began = time.monotonic()
        await dovecot.append(raw)
        out[message_id] = done = time.monotonic()
        durations.append(done - began)

    await asyncio.gather(*(one(k, raw, mid) for k, (raw, mid) in enumerate(mails)))
    return durations


async def wait_answered(sink: SmtpSink, wanted: set[str], deadline: float) -> bool:
    """Until every Message-ID of ``wanted`` has a reply in the sink (woken by each reply); False at ``deadline``."""
    seen = 0
    answered: set[str] = set()
    while True:
        answered |= _answered(sink.mails[seen:])
        seen = len(sink.mails)
        if wanted <= answered:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await sink.wait_for(seen + 1, timeout=remaining)


async def unread(dovecot: Dovecot) -> frozenset[str]:
    """The Message-IDs of the mails in the INBOX not flagged ``\\Seen``."""
    found = set()
    for mail in await dovecot.messages():
        match = re.search(rb"^Message-ID:\s*(<[^>]*>)", mail.raw, re.MULTILINE | re.IGNORECASE)
        if match and "\\Seen" not in mail.flags:
            found.add(match.group(1).decode())
    return frozenset(found)


# -- the server's /metrics ---------------------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when there are none)."""
    total = 0.0
    for match in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? ([0-9.eE+-]+)$", text, re.MULTILINE):
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(have.get(key) == value for key, value in labels.items()):
            total += float(match.group(2))
    return total


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        text = await resp.text()
    found = {
        "turn_sum": metric(text, "supportbot_turn_duration_seconds_sum", channel="email"),
        "turn_count": metric(text, "supportbot_turn_duration_seconds_count", channel="email"),
        "delivery_sum": metric(text, "supportbot_delivery_duration_seconds_sum", channel="email"),
        "delivery_count": metric(text, "supportbot_delivery_duration_seconds_count", channel="email"),
    }
    for outcome in ("sent", "retried", "failed"):
        found[f"delivery_{outcome}"] = metric(text, "supportbot_deliveries_total", channel="email", outcome=outcome)
    return found


async def counted_sent(session: aiohttp.ClientSession, url: str, sent: int) -> dict[str, float]:
    """The server's figures once they count ``sent`` deliveries: the sink has a mail before the server counts it."""
    for _ in range(200):  # 10 s at most: the figures are then read as they are
        found = await scrape(session, url)
        if found["delivery_sent"] >= sent:
            break
        await asyncio.sleep(0.05)  # the server has no event to wait on from outside
    return found


# -- the run --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Measured:
    """What a run saw; times are ``time.monotonic()`` of this process, durations in seconds."""

    tally: Tally
    sent: int
    appended: dict[str, float]  # Message-ID -> arrival
    append_s: list[float]
    first_append: float
    unseen: frozenset[str]  # Message-IDs still unread in the mailbox at the end
    server_cpu_s: float
    bench_cpu_s: float
    metrics: dict[str, float]  # the server's /metrics over the run
    timed_out: bool


def server_config(
    fake_url: str, db: Path, dovecot: Dovecot, sink: SmtpSink, args: argparse.Namespace
) -> dict[str, Any]:
    email: dict[str, Any] = {
        "enabled": True, "address": ADDRESS, "trusted_authserv_id": MX,
        "imap": {"host": dovecot.host, "port": dovecot.port, "starttls": True, "ca_file": str(dovecot.ca_file),
                 "username": dovecot.username, "password": dovecot.password, "idle": not args.poll},
        "smtp": {"host": sink.host, "port": sink.port},
        "replies_per_sender_per_hour": 1000,  # the default 5 would hold back a sender's 6th mail in an hour
    }  # fmt: skip
    if args.poll:
        email["poll_interval_s"] = args.poll_interval
    return {
        "company": {"name": "Acme Outdoor"},
        "llm": {"base_url": fake_url, "api_key": "bench", "model": "fake", "retries": {"max_retries": 0}},
        "database": {"url": f"sqlite+aiosqlite:///{db}"},
        "server": {"host": "127.0.0.1", "drain_timeout_s": 5},
        "connectors": {"web": {"enabled": False}, "email": email},
        "logging": {"level": "WARNING"},
    }


async def run(args: argparse.Namespace) -> Measured:
    words = len(REPLY.split())
    # The fake writes the first chunk at once and waits token_delay before each later frame: the
    # words' chunks, then finish_reason, usage and [DONE], so the whole reply takes model_ms.
    token_delay = args.model_ms / 1000 / (words + 2)
    with (
        FakeProcess(token_delay, REPLY, args.timeout + 600) as fake,
        tempfile.TemporaryDirectory(prefix="supportbot-bench-email-") as tmp,
    ):
        async with Dovecot() as dovecot, SmtpSink() as sink:
            config = server_config(fake.base_url, Path(tmp) / "bench.db", dovecot, sink, args)
            server = ServerProcess(config, Path(tmp))
            server.start()
            try:
                async with aiohttp.ClientSession() as session:
                    return await _measure(args, session, server, dovecot, sink)
            finally:
                code = server.stop()
                if code not in (0, None):
                    print(f"server exit code {code}; its log ends:\n{server.log_tail()}", file=sys.stderr)


async def _measure(
    args: argparse.Namespace, session: aiohttp.ClientSession, server: ServerProcess, dovecot: Dovecot, sink: SmtpSink
) -> Measured:
    await server.wait_ready(session)
    run_id = secrets.token_hex(4)
    print(f"server PID {server.pid}; Dovecot PID {dovecot.pid} on {dovecot.host}:{dovecot.port}; "
          f"SMTP sink on {sink.host}:{sink.port}", flush=True)  # fmt: skip

    # Warm-up: IMAP logged in and waiting, the first turn's imports done, before anything is timed. With
    # IDLE one mail at a time, each once the previous one is answered and the reader waits again: the
    # reader misses the EXISTS of a mail that arrives while it is busy (the report's "unread" lines show
    # it), which would stall the warm-up. Polling finds all three at its next look.
    warm_wait = 60.0 + (args.poll_interval if args.poll else 0)
    warm = [customer_mail(n, f"warmup@{SENDER_DOMAIN}", f"warm-{run_id}") for n in range(WARMUP_MAILS)]
    for batch in [warm] if args.poll else [[mail] for mail in warm]:
        warm_at: dict[str, float] = {}
        await deliver(dovecot, batch, 0, warm_at)
        if not await wait_answered(sink, set(warm_at), time.monotonic() + warm_wait):
            raise RuntimeError(f"the warm-up mails got no reply within {warm_wait:.0f} s; the server's log "
                               f"ends:\n{server.log_tail()}")  # fmt: skip
    skip = len(sink.mails)
    before = await counted_sent(session, server.url, skip)

    mails = [customer_mail(n, sender_of(n, args.senders), run_id) for n in range(args.mails)]
    appended: dict[str, float] = {}
    wanted = {mid for _, mid in mails}
    cpu0, bench0, first = cpu_seconds(server.pid), time.process_time(), time.monotonic()
    sending = asyncio.create_task(deliver(dovecot, mails, args.rate, appended))
    answered = await wait_answered(sink, wanted, first + args.timeout)
    # The server's CPU up to the last reply, not over the grace period below.
    cpu1, bench1 = cpu_seconds(server.pid), time.process_time()
    append_s = await sending
    await asyncio.sleep(args.grace)  # a benchmark's window for late duplicates, not a wait for an event
    after = await scrape(session, server.url)
    counted = tally(appended, sink.mails[skip:])
    # A mail without a reply and still unread in the mailbox was never taken by the server.
    unseen = await unread(dovecot) if counted.unanswered else frozenset()
    return Measured(
        tally=counted,
        appended=appended,
        unseen=unseen,
        sent=len(appended),
        append_s=append_s,
        first_append=min(appended.values(), default=first),
        server_cpu_s=cpu1 - cpu0,
        bench_cpu_s=bench1 - bench0,
        metrics={key: after[key] - before.get(key, 0.0) for key in after},
        timed_out=not answered,
    )


# -- the report ------------------------------------------------------------------------------------------------


def _rows(m: Measured, args: argparse.Namespace) -> Iterator[tuple[str, str, str]]:
    t, ms = m.tally, 1000.0
    span = t.last_reply - m.first_append if t.answered else float("nan")
    offered = f"{args.rate:g}/s offered" if args.rate > 0 else "all appended at once"
    mode = f"polling every {args.poll_interval:g} s" if args.poll else "IMAP IDLE"
    yield "mails sent", f"{m.sent}", f"from {args.senders} senders, {offered}"
    yield "replies received", f"{t.answered} / {m.sent}", "each mail answered once: must equal mails sent"
    yield "duplicate replies", f"{t.duplicates}", f"counted {args.grace:g} s after the last reply; must be 0"
    yield "replies to no mail of ours", f"{t.strangers}", "must be 0"
    yield (
        "arrival -> reply sent p50 / p95",
        f"{pct(t.latency_s, 50) * ms:.0f} / {pct(t.latency_s, 95) * ms:.0f} ms",
        f"{mode}; APPEND returned -> the sink has the reply's DATA",
    )
    yield (
        "arrival -> reply sent p99 / max",
        f"{pct(t.latency_s, 99) * ms:.0f} / {pct(t.latency_s, 100) * ms:.0f} ms",
        f"min {pct(t.latency_s, 0) * ms:.0f} ms",
    )
    yield "fake model's own time", f"{args.model_ms:g} ms", "per reply, included above (not subtracted)"
    turn_n, delivery_n = m.metrics.get("turn_count", 0.0), m.metrics.get("delivery_count", 0.0)
    yield (
        "server: mean turn / SMTP delivery",
        f"{m.metrics.get('turn_sum', 0.0) / turn_n * ms:.0f} / "
        f"{m.metrics.get('delivery_sum', 0.0) / delivery_n * ms:.1f} ms"
        if turn_n and delivery_n
        else "n/a",
        f"its /metrics, {turn_n:.0f} turns, {delivery_n:.0f} deliveries",
    )
    yield (
        "server: deliveries sent / retried / failed",
        f"{m.metrics.get('delivery_sent', 0):.0f} / {m.metrics.get('delivery_retried', 0):.0f} / "
        f"{m.metrics.get('delivery_failed', 0):.0f}",
        "",
    )
    yield "throughput", f"{t.answered / span:.1f} replies/s", f"first mail in -> last reply sent {span:.1f} s"
    yield (
        "server CPU per mail",
        f"{m.server_cpu_s / max(1, t.answered) * ms:.1f} ms",
        f"{m.server_cpu_s:.2f} s in all; {os.cpu_count()} cores",
    )
    yield (
        "APPEND p50 / max",
        f"{pct(m.append_s, 50) * ms:.1f} / {pct(m.append_s, 100) * ms:.1f} ms",
        f"a new IMAP login each; this process's CPU (appends, sink) {m.bench_cpu_s:.2f} s",
    )


def report(m: Measured, args: argparse.Namespace) -> str:
    rows = list(_rows(m, args))
    width = max(len(r[0]) for r in rows) + 2
    value_width = max(len(r[1]) for r in rows) + 2
    lines = [f"{name:{width}}{value:>{value_width}}   {note}".rstrip() for name, value, note in rows]
    sending_s = args.mails / args.rate if args.rate else 0.0
    if args.poll and sending_s < 3 * args.poll_interval:
        lines.append(f"note: the mails arrive over {sending_s:g} s, less than 3 poll intervals: the waits for the "
                     "next look are not sampled evenly (send more mails, or poll more often)")  # fmt: skip
    if m.timed_out:
        lines.append(f"gave up waiting {args.timeout:g} s (--timeout) after the first mail")
    if m.tally.unanswered:
        never = sum(mid in m.unseen for mid in m.tally.unanswered)
        lines.append(f"{len(m.tally.unanswered)} mails without a reply, {never} of them still unread in the mailbox "
                     "(never taken by the server); the first ones, by arrival after the first mail:")  # fmt: skip
        for mid in sorted(m.tally.unanswered, key=lambda mid: m.appended[mid])[:5]:
            state = "unread" if mid in m.unseen else "read"
            lines.append(f"  {mid} +{m.appended[mid] - m.first_append:.2f} s, {state}")
    lines.append(f"{'PASS' if passed(m, args) else 'FAIL'}  every mail answered exactly once")
    return "\n".join(lines)


def passed(m: Measured, args: argparse.Namespace) -> bool:
    return m.tally.answered == m.sent == args.mails and not m.tally.duplicates and not m.tally.strangers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench email", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mails", type=int, default=200, help="mails to answer")
    parser.add_argument("--senders", type=int, default=50, help="distinct customers they come from")
    parser.add_argument("--rate", type=float, default=10.0, help="mails appended a second (0: all at once)")
    parser.add_argument("--model-ms", type=float, default=0.0, help="how long the fake model takes per reply")
    wait = parser.add_mutually_exclusive_group()
    wait.add_argument("--idle", dest="poll", action="store_false", help="IMAP IDLE (the default)")
    wait.add_argument("--poll", dest="poll", action="store_true", help="no IDLE: look every --poll-interval s")
    parser.set_defaults(poll=False)
    parser.add_argument("--poll-interval", type=float, default=POLL_DEFAULT_S,
                        help=f"poll_interval_s with --poll (default {POLL_DEFAULT_S:g}; the connector's is "
                             f"{EmailSettings().poll_interval_s:g})")  # fmt: skip
    parser.add_argument("--grace", type=float, default=2.0, help="seconds to wait for duplicates after the last reply")
    parser.add_argument("--timeout", type=float, default=None,
                        help="give up on replies this long after the first mail (default: the sending time + 60 s, "
                             "+ the poll interval)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.mails < 1 or args.senders < 1 or args.rate < 0 or args.model_ms < 0 or args.grace < 0:
        parser.error("--mails and --senders must be at least 1; --rate, --model-ms and --grace not negative")
    if args.poll and not 1 <= args.poll_interval <= 3600:
        parser.error("--poll-interval must be between 1 and 3600 s (the connector's poll_interval_s)")
    if args.timeout is None:
        args.timeout = (args.mails / args.rate if args.rate else 0) + 60 + (args.poll_interval if args.poll else 0)
    if not Dovecot.available():
        print("the email benchmark needs Dovecot: apt-get install --no-install-recommends dovecot-imapd",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    # The server runs this checkout's code, as the benchmark does, whatever is installed.
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    mode = f"polling every {args.poll_interval:g} s" if args.poll else "IMAP IDLE"
    print(
        f"pid {os.getpid()}: {args.mails} mails from {args.senders} senders at "
        f"{f'{args.rate:g}/s' if args.rate else 'once'}, {mode}, model {args.model_ms:g} ms",
        flush=True,
    )
    measured = asyncio.run(run(args))
    print(report(measured, args))
    if not passed(measured, args):
        sys.exit(1)
