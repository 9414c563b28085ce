"""CPU per turn of the engine, next to a bare aiohttp client making the same HTTP calls.

Each turn is what a support bot does most: the customer asks about an order, the model calls
``lookup_order``, the tool runs, the model streams an answer. The fake provider runs in a child
process at zero latency, so this process's CPU time is the client side only: the engine's (SSE
parsing, tool dispatch, history, persistence) or the bare client's.

    python -m bench engine [--turns 10000] [--rounds 20] [--concurrency 1] [--turns-per-conversation 5]
                           [--warm-up 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from supportbot.config import Config, DatabaseSettings, FileOrders, FlowSettings, LLMSettings
from supportbot.events import TurnFailed
from supportbot.flows import TemplateContext
from supportbot.runtime import Runtime, open_runtime
from supportbot.store.memory import MemoryStore
from supportbot.testing import FakeLLMServer, tool_then_text

EXAMPLES = Path(__file__).resolve().parent.parent / "supportbot" / "examples"
QUESTION = "Hi, where is my order A1001? It should have arrived by now."
ANSWER = "Your order A1001 has shipped with DHL and should arrive on 3 December. You can track it with the link above."


# -- the fake provider in its own process ---------------------------------------------------------------


def _serve_fake(port_queue: Any, stop: Any) -> None:
    async def main() -> None:
        server = FakeLLMServer(mode="openai", record=False)
        server.responder = tool_then_text("lookup_order", {"order_id": "A1001"}, ANSWER)
        await server.start()
        port_queue.put(server.base_url)
        await asyncio.to_thread(stop.wait)
        await server.close()

    asyncio.run(main())


class FakeProcess:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._queue = ctx.Queue()
        self._stop = ctx.Event()
        self._process = ctx.Process(target=_serve_fake, args=(self._queue, self._stop), daemon=True)

    def __enter__(self) -> str:
        self._process.start()
        return str(self._queue.get(timeout=30))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(timeout=10)


# -- measurement -----------------------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Result:
    name: str
    turns: int
    cpu_ms_per_turn: float
    wall_s: float
    errors: int


async def drive(
    name: str, turns: int, per_conversation: int, concurrency: int, conversation: Callable[[int], Awaitable[int]]
) -> Result:
    """Run ``turns`` turns as conversations of ``per_conversation`` turns, ``concurrency`` at a time."""
    conversations = turns // per_conversation
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(conversations):
        queue.put_nowait(i)
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while not queue.empty():
            errors += await conversation(queue.get_nowait())

    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = conversations * per_conversation
    return Result(name, n, cpu / n * 1000, wall, errors)


# -- the bare client -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BareScript:
    """What the engine's requests carry, so the bare client sends the same bytes."""

    system: str
    greeting: str
    tools: list[dict[str, Any]]
    tool_result: str


async def bare_turns(session: aiohttp.ClientSession, url: str, script: BareScript, per_conversation: int) -> int:
    """A minimal hand-written bot: the same two streamed requests per turn, history in a list, no persistence."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": script.system},
        {"role": "assistant", "content": script.greeting},
    ]
    errors = 0
    for _ in range(per_conversation):
        messages.append({"role": "user", "content": QUESTION})
        calls, text = await bare_request(session, url, messages, script.tools)
        if not calls:
            errors += 1
            continue
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        for call in calls:
            name = call["function"]["name"]
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": script.tool_result, "name": name})
        calls, text = await bare_request(session, url, messages, script.tools)
        messages.append({"role": "assistant", "content": text})
        errors += int(not text)
    return errors


async def bare_script(runtime: Runtime) -> BareScript:
    """Run one engine turn and take its system prompt, greeting and tool result as they were sent."""
    customer = await runtime.store.get_or_create_customer(email="ana@example.com", verified=True)
    conversation, greeting = await runtime.engine.start_conversation(customer, channel="bench")
    async for _ in runtime.engine.run_turn(conversation.id, QUESTION):
        pass
    stored = await runtime.store.list_messages(conversation.id)
    flow = runtime.flows.get(conversation.flow)
    context = TemplateContext(company=runtime.config.company, customer=customer, channel="bench",
                              now=datetime.now(UTC), conversation_id=conversation.id, flow=flow)  # fmt: skip
    return BareScript(
        system=flow.render_system_prompt(context),
        greeting=greeting or "",
        tools=runtime.engine.snapshot.tool_schemas(flow, verified=customer.verified)[0],
        tool_result=next(m.content or "" for m in stored if m.role == "tool"),
    )


async def bare_request(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], str]:
    body = {
        "model": "m",
        "messages": messages,
        "tools": tools,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 1.0,
        "top_p": 0.95,
        "max_tokens": 1024,
    }
    calls: dict[int, dict[str, Any]] = {}
    text: list[str] = []
    async with session.post(
        url, data=json.dumps(body), headers={"Content-Type": "application/json", "Authorization": "Bearer bench"}
    ) as resp:
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                data = json.loads(line[6:])
                for choice in data.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        text.append(delta["content"])
                    for tc in delta.get("tool_calls") or ():
                        call = calls.setdefault(
                            tc.get("index", 0),
                            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                        )
                        call["id"] = tc.get("id") or call["id"]
                        fn = tc.get("function") or {}
                        call["function"]["name"] += fn.get("name") or ""
                        call["function"]["arguments"] += fn.get("arguments") or ""
    return list(calls.values()), "".join(text)


# -- the engine ------------------------------------------------------------------------------------------


def bench_config(base_url: str, db_path: Path) -> Config:
    return Config(
        llm=LLMSettings(base_url=base_url, api_key="bench"),
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{db_path}"),
        flows=FlowSettings(dir=EXAMPLES / "flows", default="order_status"),
        orders=FileOrders(source="file", path=EXAMPLES / "orders.yaml"),
    )


async def engine_turns(runtime: Runtime, per_conversation: int, forget: bool) -> int:
    engine = runtime.engine
    customer = await runtime.store.get_or_create_customer(email="ana@example.com", verified=True)
    conversation, _ = await engine.start_conversation(customer, channel="bench")
    errors = 0
    for _ in range(per_conversation):
        tools_ran = 0
        async for event in engine.run_turn(conversation.id, QUESTION):
            if isinstance(event, TurnFailed):
                errors += 1
            elif event.type == "tool_call_finished":
                tools_ran += 1
        errors += int(tools_ran != 1)
    if forget and isinstance(runtime.store, MemoryStore):
        runtime.store.forget(conversation.id)
    return errors


MODES = ("bare aiohttp client", "engine + SQLite", "engine, no persistence")


async def run(args: argparse.Namespace) -> tuple[dict[str, list[Result]], list[float]]:
    """Every mode runs ``args.rounds`` times, interleaved, so the machine's drift hits all of them alike."""
    per_round = args.turns // args.rounds
    results: dict[str, list[Result]] = {mode: [] for mode in MODES}
    rss_after_round: list[float] = []
    with FakeProcess() as base_url, tempfile.TemporaryDirectory() as tmp:
        url = base_url.rstrip("/") + "/chat/completions"
        sqlite = await open_runtime(bench_config(base_url, Path(tmp) / "bench.db"))
        memory = await open_runtime(bench_config(base_url, Path(tmp) / "unused.db"), store=MemoryStore())
        session = aiohttp.ClientSession()
        try:
            script = await bare_script(memory)
            n = args.turns_per_conversation
            workloads: dict[str, Callable[[int], Awaitable[int]]] = {
                MODES[0]: lambda _i: bare_turns(session, url, script, n),
                MODES[1]: lambda _i: engine_turns(sqlite, n, True),
                MODES[2]: lambda _i: engine_turns(memory, n, True),
            }
            # Until the caches (prompts, histories, decoded rows, SQLite's pages) are full, as in a server
            # that has run a while: the first few thousand turns allocate more than the ones after.
            for work in workloads.values():
                if args.warm_up:
                    await drive("warm-up", args.warm_up, n, args.concurrency, work)
            order = list(workloads)
            for i in range(args.rounds):
                # The order turns round by round: no mode always follows the same one.
                for mode in order[i % len(order) :] + order[: i % len(order)]:
                    results[mode].append(await drive(mode, per_round, n, args.concurrency, workloads[mode]))
                rss_after_round.append(rss_mb())
        finally:
            await session.close()
            await memory.aclose()
            await sqlite.aclose()
    return results, rss_after_round


def ratios(results: dict[str, list[Result]], mode: str) -> list[float]:
    """The mode's CPU per turn over the bare client's, round by round (the two ran seconds apart)."""
    return [r.cpu_ms_per_turn / b.cpu_ms_per_turn for r, b in zip(results[mode], results[MODES[0]], strict=True)]


def report(results: dict[str, list[Result]], rss_after_round: list[float]) -> str:
    """Per mode: the median CPU per turn and its range, and the median of the per-round ratios with its middle half.

    The ratio is taken within each round, then the median over rounds: the machine's speed drifts by
    ±15 % over minutes on a shared virtual machine, and a ratio of two medians taken over the whole
    run would carry that drift.
    """
    lines = [
        f"{'':24}{'turns':>7}{'CPU ms/turn: median (range)':>30}{'ratio (middle half)':>22}{'wall s':>8}{'errors':>8}"
    ]
    for mode, rounds in results.items():
        cpu = statistics.median(r.cpu_ms_per_turn for r in rounds)
        spread = f"{min(r.cpu_ms_per_turn for r in rounds):.3f}-{max(r.cpu_ms_per_turn for r in rounds):.3f}"
        per_round = ratios(results, mode)
        # "inclusive": the quarters lie within the rounds measured (the default extrapolates past them).
        quarters = statistics.quantiles(per_round, n=4, method="inclusive") if len(per_round) > 1 else per_round * 3
        ratio = f"{statistics.median(per_round):.2f} ({quarters[0]:.2f}-{quarters[2]:.2f})"
        lines.append(
            f"{mode:24}{sum(r.turns for r in rounds):>7}{cpu:>16.3f} ({spread}){ratio:>22}"
            f"{sum(r.wall_s for r in rounds):>8.1f}{sum(r.errors for r in rounds):>8}"
        )
    lines.append("resident memory (MB) after each round: " + " ".join(f"{x:.1f}" for x in rss_after_round))
    lines.append("targets: engine + SQLite ratio <= 2.0, no persistence <= 1.4, memory flat round after round")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench engine", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=10_000, help="turns per mode, over all rounds")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds; a ratio is taken in each")
    parser.add_argument("--turns-per-conversation", type=int, default=5)
    parser.add_argument("--warm-up", type=int, default=2000, help="turns per mode before the measured rounds")
    parser.add_argument("--concurrency", type=int, default=1, help="conversations running at once")
    args = parser.parse_args(argv)
    per = args.turns_per_conversation
    if args.rounds < 1 or per < 1:
        parser.error("--rounds and --turns-per-conversation must be at least 1")
    if args.turns // args.rounds < per:
        parser.error(f"--turns {args.turns} in {args.rounds} rounds leaves less than one conversation of {per} turns "
                     "a round; give more turns or fewer rounds")  # fmt: skip
    if 0 < args.warm_up < per:
        parser.error(f"--warm-up {args.warm_up} is less than one conversation of {per} turns; give 0 or at least {per}")
    print(
        f"pid {os.getpid()}: {args.turns} turns per mode in {args.rounds} interleaved rounds, "
        f"{args.turns_per_conversation} per conversation, {args.concurrency} at a time",
        flush=True,
    )
    print(report(*asyncio.run(run(args))))
