"""Slack acknowledgements while the model is busy: how many signed events a second, and how fast each.

Slack gives an Events API endpoint 3 seconds; every event must be stored before the 2xx. This runs
``supportbot serve``'s application (SQLite, the Slack connector) in this process, and in child
processes a fake model that takes ``--model-seconds`` per answer, FakeSlack (where replies and live
updates go) and the load: ``--events`` signed ``message.im`` events from ``--users`` customers over
``--concurrency`` connections. Turns pile up behind the busy model while the acknowledgements are
measured; each customer's messages are one conversation, answered in order.

    python -m bench.slack [--events 2000] [--concurrency 32] [--users 50] [--model-seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

SIGNING_SECRET = "8f742231b10e8888abcd99001185a5fe"


# -- child processes: the fakes, and the load ------------------------------------------------------------


def _fakes(urls: Any, stop: Any, model_seconds: float, users: int) -> None:
    from connectors.slack.testing import FakeSlack
    from supportbot.testing import FakeLLMServer, Reply

    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # the server's drain cuts the model's streams off

    async def main() -> None:
        words = 20
        llm = FakeLLMServer(token_delay=model_seconds / words, record=False)
        llm.responder = lambda body: Reply(text=" ".join(["word"] * words))
        async with llm, FakeSlack() as slack:
            for n in range(users):
                slack.add_user(f"U{n:07d}", email=f"customer{n}@example.com", real_name=f"Customer {n}")
                slack.add_channel(f"D{n:07d}", is_im=True, user=f"U{n:07d}")
            urls.put((llm.base_url, slack.api_url, slack.bot_token))
            await asyncio.to_thread(stop.wait)
            urls.put(len([c for c in slack.calls if c.method in ("chat.postMessage", "chat.update")]))

    asyncio.run(main())


def _load(server: str, events: int, concurrency: int, users: int, results: Any) -> None:
    from connectors.slack.testing import event_callback, im_message, signed_headers, slack_json

    async def main() -> None:
        bodies = []
        for n in range(events):
            user = n % users
            event = event_callback(im_message(f"Question {n}: where is my order?", channel=f"D{user:07d}",
                                              user=f"U{user:07d}"))  # fmt: skip
            bodies.append(slack_json(event))
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def worker() -> None:
                while not queue.empty():
                    body = queue.get_nowait()
                    headers = {"Content-Type": "application/json", **signed_headers(body, SIGNING_SECRET)}
                    started = time.perf_counter()
                    async with http.post(f"{server}/slack/events", data=body, headers=headers) as response:
                        await response.read()
                    latencies.append(time.perf_counter() - started)
                    statuses[response.status] = statuses.get(response.status, 0) + 1

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall = time.perf_counter() - began
        results.put({"latencies": latencies, "statuses": statuses, "wall": wall})

    asyncio.run(main())


# -- the server in this process ---------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from supportbot.config import load_config
    from supportbot.runtime import open_runtime
    from supportbot.server import INTAKE, build_app, drain

    ctx = multiprocessing.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    fakes = ctx.Process(target=_fakes, args=(urls, stop, args.model_seconds, args.users), daemon=True)
    fakes.start()
    llm_url, api_url, bot_token = urls.get(timeout=60)
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(json.dumps({
            "llm": {"base_url": llm_url, "api_key": "bench", "retries": {"max_retries": 0}},
            "server": {"drain_timeout_s": 0.5},
            "database": {"url": f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"},
            "connectors": {"web": {"enabled": False}, "slack": {
                "enabled": True, "bot_token": bot_token, "signing_secret": SIGNING_SECRET, "api_url": api_url}},
            "logging": {"level": "ERROR"},
        }))  # fmt: skip
        runtime = await open_runtime(load_config(config_path, env={}))
        app = build_app(runtime)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        server = f"http://127.0.0.1:{runner.addresses[0][1]}"
        await app[INTAKE].resume()
        results = ctx.Queue()
        load = ctx.Process(target=_load, args=(server, args.events, args.concurrency, args.users, results))
        cpu = time.process_time()
        load.start()
        measured: dict[str, Any] = await asyncio.to_thread(results.get, True, 600)
        measured["server_cpu_s"] = time.process_time() - cpu
        await asyncio.to_thread(load.join, 30)
        measured["turns_running"] = app[INTAKE].dispatcher.running  # still queued behind the busy model
        await drain(app)
        await runner.cleanup()
        await runtime.aclose()
    stop.set()
    measured["slack_updates"] = await asyncio.to_thread(urls.get, True, 30)
    fakes.join(timeout=10)
    return measured


def report(args: argparse.Namespace, measured: dict[str, Any]) -> str:
    latencies = sorted(measured["latencies"])
    ms = [x * 1000 for x in latencies]
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    lines = [
        f"{len(ms)} signed events from {args.users} customers, {args.concurrency} connections, model "
        f"{args.model_seconds:g} s per answer",
        f"acks/s: {len(ms) / measured['wall']:.0f}   ack latency ms: p50 {statistics.median(ms):.1f}  "
        f"p99 {p99:.1f}  max {ms[-1]:.1f}",
        f"statuses: {dict(sorted(measured['statuses'].items()))}   server CPU {measured['server_cpu_s']:.1f} s   "
        f"turns still running at the end: {measured['turns_running']}   live updates + posts to Slack: "
        f"{measured['slack_updates']}",
        "target: every event 200, p99 well under Slack's 3 s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.slack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32, help="connections sending events at once")
    parser.add_argument("--users", type=int, default=50, help="customers (conversations) the events come from")
    parser.add_argument("--model-seconds", type=float, default=5.0, help="how long the fake model takes per answer")
    args = parser.parse_args(argv)
    print(f"pid {os.getpid()}: python -m bench.slack {' '.join(argv or [])}".rstrip(), flush=True)
    print(report(args, asyncio.run(run(args))))


if __name__ == "__main__":
    main()
