"""Latency and throughput of the bus between two workers (``supportbot.bus.PostgresBus``).

The receiving worker runs in a child process, as it would in a deployment; both use one clock
(``time.monotonic`` is system-wide on Linux), so each event carries its publish time and the
receiver measures the one-way latency. The run uses a schema of its own, dropped afterwards.

- latency: events published one at a time (2 ms apart, so none are batched), p50/p95/p99/max;
  the same for 100 kB events, which go through the ``bus_spill`` table;
- throughput: events published as fast as the publisher can, batched into notices; items/s from
  the first publish to the last arrival.

    python -m bench.bus [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test] [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
import uuid
from typing import Any

from sqlalchemy.engine import make_url

from supportbot.bus import MAX_QUEUED, PostgresBus
from supportbot.store.sql import SQLStore

DEFAULT_URL = os.environ.get("SUPPORTBOT_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


def _receive(url: str, ready: Any, results: Any) -> None:
    async def main() -> None:
        bus = PostgresBus(url, worker_id="bench-receiver")
        latencies: dict[str, list[float]] = {}
        done = asyncio.Event()
        last_arrival: dict[str, float] = {}

        def got(data: dict[str, Any]) -> None:
            now = time.monotonic()
            latencies.setdefault(data["phase"], []).append(now - data["t"])
            last_arrival[data["phase"]] = now
            if data.get("last"):
                results.put((data["phase"], latencies.pop(data["phase"]), last_arrival[data["phase"]]))

        bus.on("bench", got)
        bus.on("done", lambda data: done.set())
        await bus.start()
        ready.set()
        await done.wait()
        await bus.close()

    asyncio.run(main())


async def _paced(bus: PostgresBus, phase: str, count: int, text: str) -> None:
    for n in range(count):
        await bus.publish(
            "bench", {"phase": phase, "t": time.monotonic(), "n": n, "text": text, "last": n == count - 1}
        )
        await asyncio.sleep(0.002)


async def _flood(bus: PostgresBus, phase: str, count: int, text: str) -> float:
    started = time.monotonic()
    for n in range(count):
        await bus.publish(
            "bench", {"phase": phase, "t": time.monotonic(), "n": n, "text": text, "last": n == count - 1}
        )
        if n % 500 == 499:
            await asyncio.sleep(0)  # let the sender run, as a busy worker's loop would
            if bus.queued > MAX_QUEUED // 2:  # a flood this size would overflow the queue: let the sender catch up
                await bus.flush()
    return started


def _ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.2f}"


async def run(url: str, events: int, results: Any) -> list[str]:
    lines = []
    sender = PostgresBus(url, worker_id="bench-sender")
    await sender.start()
    try:
        for phase, count, text in (("small, one at a time", 1000, "x" * 40), ("100 kB, spilled", 100, "y" * 100_000)):
            await _paced(sender, phase, count, text)
            name, latencies, _ = await asyncio.to_thread(results.get, True, 60)
            lines.append(
                f"latency  {name:<22} n={len(latencies):>6}  p50 {_ms(latencies, 0.5)} ms  p95 "
                f"{_ms(latencies, 0.95)} ms  p99 {_ms(latencies, 0.99)} ms  max {max(latencies) * 1000:.2f} ms"
            )
        for phase, text in (("small (~90 B)", "x" * 40), ("TextDelta-like (~300 B)", "z" * 250), ("1 kB", "w" * 1000)):
            started = await _flood(sender, phase, events, text)
            name, latencies, last = await asyncio.to_thread(results.get, True, 120)
            lines.append(
                f"throughput {name:<24} {len(latencies):>7} events in {last - started:.2f} s = "
                f"{len(latencies) / (last - started):,.0f}/s  (latency p50 {_ms(latencies, 0.5)} ms, "
                f"p95 {_ms(latencies, 0.95)} ms)"
            )
            assert len(latencies) == events, f"{events - len(latencies)} events lost"
        await sender.publish("done", {})
    finally:
        await sender.close()
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bus", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="a PostgreSQL database (a schema is made and dropped)")
    parser.add_argument("--events", type=int, default=100_000, help="events per throughput run")
    args = parser.parse_args(argv)

    import asyncpg

    schema = f"bench_bus_{uuid.uuid4().hex[:12]}"
    dsn = make_url(args.url).set(drivername="postgresql", query={}).render_as_string(hide_password=False)

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f"CREATE SCHEMA {schema}"))
    try:
        url = make_url(args.url).update_query_dict({"search_path": schema}).render_as_string(hide_password=False)

        async def migrate() -> None:
            await (await SQLStore.open(url)).close()

        asyncio.run(migrate())
        ctx = multiprocessing.get_context("spawn")
        ready, results = ctx.Event(), ctx.Queue()
        receiver = ctx.Process(target=_receive, args=(url, ready, results), daemon=True)
        receiver.start()
        if not ready.wait(30):
            raise SystemExit("the receiving worker did not start listening within 30 s")
        print(f"pid {os.getpid()}: two workers on {make_url(url).render_as_string(hide_password=True)}", flush=True)
        for line in asyncio.run(run(url, args.events, results)):
            print(line, flush=True)
        receiver.join(timeout=10)
    finally:
        asyncio.run(admin(f"DROP SCHEMA {schema} CASCADE"))


if __name__ == "__main__":
    main()
