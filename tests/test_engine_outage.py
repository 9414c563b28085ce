"""Model outages and cost caps through the engine: the fake provider over HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import text

from supportbot.config import Config, LimitSettings
from supportbot.engine import FALLBACK_TEXT, LIMIT_TEXT
from supportbot.events import Handoff, TurnFailed, TurnFinished
from supportbot.runtime import Runtime
from supportbot.store.spending import Spent
from supportbot.testing import Fail, FakeLLMServer, Reply
from tests.test_engine import RuntimeFactory, fake, make_runtime, start, turn

__all__ = ["fake", "make_runtime"]  # fixtures of tests/test_engine.py, used here too

TOKENS = (100_000, 0)  # input tokens: $0.075 at the default pricing (flows cap a conversation at $0.50)
COST = 0.075
CAP = 0.1


def with_limits(runtime: Runtime, **limits: Any) -> None:
    """Set daily cost caps on a running engine (the config is frozen: a copy with new limits)."""
    config: Config = runtime.engine.config
    runtime.engine.config = config.model_copy(update={"limits": LimitSettings(**limits)})


async def spent(runtime: Runtime, customer_id: str) -> Spent:
    store: Any = runtime.store
    today = runtime.engine.clock().date()
    result: Spent = await store.spending(customer_id, day=today)
    return result


async def customer_of(runtime: Runtime, conversation_id: str) -> str:
    conversation = await runtime.store.get_conversation(conversation_id)
    assert conversation is not None
    return conversation.customer_id


# -- outages ----------------------------------------------------------------------------------------


async def test_an_outage_opens_the_breaker_one_ticket_per_conversation_then_recovery(
    make_runtime: RuntimeFactory, fake: FakeLLMServer
) -> None:
    runtime = await make_runtime(resilience={"failure_threshold": 2, "open_s": 60})
    guard = runtime.guard
    assert guard is not None and guard.inner is runtime.llm
    first, second = await start(runtime), await start(runtime, email="bo@example.com", name="Bo")
    fake.script(*[Fail(503)] * 4)  # two calls, each tried twice (max_retries: 1)
    failed = []
    for conversation, message in [(first, "a1"), (first, "a2"), (first, "a3"), (second, "b1"), (second, "b2"),
                                  (first, "a4")]:  # fmt: skip
        events = await turn(runtime, conversation, message)
        assert isinstance(events[-1], TurnFailed), events
        assert events[-1].fallback_text == FALLBACK_TEXT.format(ticket=events[-1].ticket_id)
        failed.append((conversation, events[-1]))
    assert fake.request_count == 4  # after two failed calls the breaker sent nothing more
    assert guard.state == "open" and guard.stats().fast_failures == 4
    assert "llm.resilience" in failed[-1][1].reason
    tickets = await runtime.store.list_tickets()
    assert sorted((t.conversation_id, t.kind) for t in tickets) == sorted(
        [(first, "escalation"), (second, "escalation")]
    )
    assert {e.ticket_id for c, e in failed if c == first} == {t.id for t in tickets if t.conversation_id == first}

    guard.clock = lambda: time.monotonic() + 10_000  # open_s has passed (whatever the machine's uptime)
    events = await turn(runtime, first, "are you back?")
    assert isinstance(events[-1], TurnFinished) and events[-1].text
    assert guard.state == "closed" and fake.request_count == 5
    assert len(await runtime.store.list_tickets()) == 2


# -- daily cost caps --------------------------------------------------------------------------------


async def test_the_per_customer_cap_hands_the_conversation_to_a_person_without_a_model_call(
    make_runtime: RuntimeFactory, fake: FakeLLMServer
) -> None:
    runtime = await make_runtime()
    with_limits(runtime, max_cost_usd_per_customer_per_day=CAP)
    cid = await start(runtime)
    customer = await customer_of(runtime, cid)
    fake.script(Reply("one", usage=TOKENS), Reply("two", usage=TOKENS))
    for message in ("one", "two"):  # before the second call $0.075 were spent: under the cap
        assert isinstance((await turn(runtime, cid, message))[-1], TurnFinished)
    two: Any = pytest.approx(2 * COST)
    assert await spent(runtime, customer) == Spent(customer=two, everyone=two)

    events = await turn(runtime, cid, "three")
    assert fake.request_count == 2  # no model call over the cap
    handoff = next(e for e in events if isinstance(e, Handoff))
    assert "limits.max_cost_usd_per_customer_per_day" in handoff.reason
    assert isinstance(events[-1], TurnFinished) and events[-1].text == LIMIT_TEXT.format(ticket=handoff.ticket_id)
    conversation = await runtime.store.get_conversation(cid)
    assert conversation is not None and conversation.status == "human"
    # The customer's other conversation is over the cap too: its own one ticket; another customer is answered.
    known = await runtime.store.get_customer(customer)
    assert known is not None
    other = (await runtime.engine.start_conversation(known, channel="test"))[0]
    for _ in range(2):
        await turn(runtime, other.id, "hello again")
    stranger = await start(runtime, email="cy@example.com", name="Cy")
    assert isinstance((await turn(runtime, stranger, "hi"))[-1], TurnFinished) and fake.request_count == 3
    tickets = await runtime.store.list_tickets()
    assert sorted(str(t.conversation_id) for t in tickets) == sorted([cid, other.id])
    assert all(t.kind == "escalation" for t in tickets)


async def test_the_global_cap_stops_every_conversation(make_runtime: RuntimeFactory, fake: FakeLLMServer) -> None:
    runtime = await make_runtime()
    with_limits(runtime, max_cost_usd_per_day=CAP)
    fake.responder = lambda body: Reply("ok", usage=TOKENS)
    ana, bo, cy = [await start(runtime, email=f"{n}@example.com", name=n) for n in ("ana", "bo", "cy")]
    assert isinstance((await turn(runtime, ana, "hi"))[-1], TurnFinished)
    assert isinstance((await turn(runtime, bo, "hi"))[-1], TurnFinished)
    events = await turn(runtime, cy, "hi")
    assert any(isinstance(e, Handoff) and "limits.max_cost_usd_per_day" in e.reason for e in events)
    assert fake.request_count == 2


async def test_no_cap_records_nothing(make_runtime: RuntimeFactory, fake: FakeLLMServer) -> None:
    runtime = await make_runtime()
    cid = await start(runtime)
    fake.script(Reply("one", usage=TOKENS))
    await turn(runtime, cid, "one")
    assert await spent(runtime, await customer_of(runtime, cid)) == Spent(customer=0.0, everyone=0.0)


async def test_concurrent_turns_all_count_and_overshoot_only_by_the_calls_in_flight(
    make_runtime: RuntimeFactory, fake: FakeLLMServer
) -> None:
    runtime = await make_runtime()
    with_limits(runtime, max_cost_usd_per_customer_per_day=CAP)
    customer = await runtime.store.get_or_create_customer(email="ana@example.com", name="Ana", verified=True)
    conversations = [(await runtime.engine.start_conversation(customer, channel="test"))[0].id for _ in range(6)]
    fake.responder = lambda body: Reply("ok", usage=TOKENS)
    # Six turns at once, all checked before any cost is known: each may call the model (the documented
    # overshoot), and every cost is added.
    results = await asyncio.gather(*(turn(runtime, c, "hi") for c in conversations))
    answered = sum(1 for events in results if not any(isinstance(e, Handoff) for e in events))
    assert answered == fake.request_count >= 1
    total: Any = pytest.approx(answered * COST)
    assert await spent(runtime, customer.id) == Spent(customer=total, everyone=total)
    store: Any = runtime.store
    async with store._engine.connect() as connection:
        rows = (await connection.execute(text("SELECT scope, cost_usd FROM spending ORDER BY scope"))).all()
    assert rows == [("all", total), (f"customer:{customer.id}", total)]
    # Once the costs are in, the next turn is refused.
    events = await turn(runtime, conversations[0], "again")
    assert any(isinstance(e, Handoff) for e in events) and fake.request_count == answered


@pytest.mark.parametrize("cap", [0, None])
async def test_a_cap_of_zero_or_null_is_off(
    make_runtime: RuntimeFactory, fake: FakeLLMServer, cap: float | None
) -> None:
    runtime = await make_runtime()
    with_limits(runtime, max_cost_usd_per_customer_per_day=cap, max_cost_usd_per_day=cap)
    cid = await start(runtime)
    fake.responder = lambda body: Reply("ok", usage=TOKENS)
    for _ in range(3):
        assert isinstance((await turn(runtime, cid, "hi"))[-1], TurnFinished)
    assert fake.request_count == 3
