"""Running cases: fixtures, real and custom tools, a fresh database per case, the clock, the offline and live models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

from supportbot.config import load_config
from supportbot.flowtest.records import CaseResult
from supportbot.llm.base import Completion, LLMRequest, StreamEvent
from supportbot.llm.client import OpenAICompatibleLLM
from supportbot.messages import ChatMessage
from supportbot.testing import FakeLLMServer, Reply
from tests.flowtest.conftest import FlowTests

ANA = "customer: {email: ana@example.com, name: Ana Lima, verified: true}\n"
ORDERS = """\
fixtures:
  orders:
    - {order_id: A1001, customer_email: ana@example.com, status: shipped, eta: 2026-11-25, total: 249.8, currency: USD}
    - {order_id: B2002, customer_email: ben@example.com, status: processing}
  customers:
    - {email: ben@example.com, name: Ben Okafor, verified: true}
"""


def failures(result: CaseResult) -> list[str]:
    return [f"{f.where}: {f.what}: {f.message}" for run in result.runs for f in run.failures]


def calls(result: CaseResult, turn: int = 0) -> list[tuple[str, str, bool]]:
    """``(tool, result, is_error)`` of the calls of a turn of the last run."""
    return [(c.name, c.result, c.is_error) for c in result.runs[-1].record.turns[turn].outcome.calls]


async def test_the_built_in_tools_run_against_the_fixture_orders(flowtests: FlowTests) -> None:
    # Turns without model: are answered by the demo model, which looks up an order number it sees.
    mine, theirs = await flowtests.run(
        "flow: order_status\n" + ANA + ORDERS
        + """\
cases:
  - name: mine
    turns:
      - customer: Where is my order A1001?
        expect:
          called: [{tool: lookup_order, args: {order_id: A1001}, ok: true}]
          reply_contains: [shipped, 2026-11-25]
  - name: someone else's
    turns:
      - customer: And order B2002?
        expect: {reply_contains: no order B2002 found, reply_not_contains: processing}
"""
    )  # fmt: skip
    assert failures(mine) == [] and failures(theirs) == []


async def test_without_fixture_orders_the_projects_orders_file_is_used(flowtests: FlowTests) -> None:
    # The project's config has no orders: section: the example orders file, where A1001 is Ana's.
    (result,) = await flowtests.run(
        "flow: order_status\n" + ANA + "cases: [{name: a, turns: [{customer: 'Where is A1001?'}], "
        "expect: {reply_contains: shipped}}]\n"
    )
    assert failures(result) == []


async def test_no_order_source_is_reached_but_a_file(flowtests: FlowTests, project: Path) -> None:
    with (project / "config.yaml").open("a") as config:
        config.write('orders: {source: http, url_template: "http://127.0.0.1:9/orders/{order_id}"}\n')
    (result,) = await flowtests.run(
        "flow: order_status\n" + ANA + "cases: [{name: a, turns: [{customer: 'Where is A1001?'}]}]\n"
    )
    assert calls(result) == [("lookup_order", "no order A1001 found for this customer", False)]


async def test_a_custom_tool_runs_against_the_fixtures(flowtests: FlowTests) -> None:
    (result,) = await flowtests.run(
        "flow: billing\n" + ANA + ORDERS
        + """\
cases:
  - name: totals and names
    turns:
      - customer: What did A1001 cost, and who is ben@example.com?
        model:
          - calls: [{call: order_total, args: {order_id: A1001}}, {call: customer_name, args: {email: ben@example.com}}]
          - reply: It cost 249.8 USD.
        expect: {called: [{tool: order_total, args: {order_id: A1001}, ok: true}, customer_name]}
"""
    )  # fmt: skip
    assert failures(result) == []
    assert calls(result) == [
        ("order_total", "order A1001 cost 249.8 USD", False),
        ("customer_name", "Ben Okafor", False),
    ]


async def test_each_case_has_a_fresh_database(flowtests: FlowTests) -> None:
    case = """\
  - name: {name}
    turns:
      - customer: Please open a ticket
        model: [{{call: create_ticket, args: {{subject: Help, description: Please help}}}}]
      - customer: yes
        model: [{{reply: Done.}}]
        expect: {{ticket: true}}
"""
    results = await flowtests.run(
        "flow: order_status\n" + ANA + "cases:\n" + case.format(name="one") + case.format(name="two"), repeat=2
    )
    tickets = [turn.outcome.tickets for result in results for run in result.runs for turn in run.record.turns]
    assert [[t.id for t in found] for found in tickets] == [[], [1], [], [1], [], [1], [], [1]]


async def test_the_prompt_for_a_customer_channel_and_time(flowtests: FlowTests) -> None:
    results = await flowtests.run(
        """\
flow: billing
now: 2026-11-20T10:00:00Z
cases:
  - name: an anonymous visitor by email
    channel: email
    expect:
      system_prompt_contains: [not verified, writing via email, Ask the customer to sign in, Today is 2026-11-20]
  - name: a verified customer on slack
    channel: slack
    customer: {email: ana@example.com, name: Ana Lima, verified: true}
    now: 2026-12-24T23:59:59Z
    expect:
      system_prompt_contains: [Ana Lima (verified), writing via slack, Today is 2026-12-24]
      system_prompt_omits: sign in
  - name: an unverified claim
    customer: {email: ana@example.com, name: Ana Lima}
    turns:
      - customer: hello
        model: [{reply: Hello.}]
        expect: {system_prompt_contains: [Ana Lima (not verified), writing via web, sign in]}
"""
    )
    assert [failures(r) for r in results] == [[], [], []]
    visitor, _, claim = results
    assert visitor.runs[0].record.turns == () and visitor.runs[0].record.greeting == "Hello there, billing here."
    assert claim.runs[0].record.customer == "Ana Lima <ana@example.com> (not verified)"


class Recording:
    """An offline model that keeps the demo hints it is given and answers "ok"."""

    hints: ClassVar[list[list[str | None]]] = []

    async def stream(self, request: LLMRequest) -> AsyncIterator[StreamEvent]:
        Recording.hints.append([hint.reply for hint in request.hints])
        yield Completion(message=ChatMessage(role="assistant", content="ok"), finish_reason="stop")

    async def aclose(self) -> None:
        return None


async def test_rules_come_before_the_flows_hints(flowtests: FlowTests) -> None:
    Recording.hints = []
    await flowtests.run(
        """\
flow: billing
rules: [{when: invoice, reply: the file's}]
cases:
  - name: case rules first
    rules: [{when: invoice, reply: the case's}]
    turns: [{customer: my invoice}, {customer: again, model: [{reply: scripted}]}, {customer: once more}]
  - name: file rules
    turns: [{customer: my invoice}]
""",
        offline=Recording,
    )
    flow = "Invoices are in your account (the flow's hint)."
    # Scripted turns never reach the offline model; the flow's hints come last.
    assert Recording.hints == [["the case's", "the file's", flow], ["the case's", "the file's", flow],
                               ["the file's", flow]]  # fmt: skip


async def test_the_same_case_runs_the_same_way(flowtests: FlowTests) -> None:
    text = (
        "flow: order_status\nnow: 2026-11-20T10:00:00Z\n" + ANA + ORDERS
        + "cases: [{name: a, turns: [{customer: 'Where is A1001?'}, {customer: I want a person}]}]\n"
    )  # fmt: skip
    first, second = (await flowtests.run(text, repeat=2))[0].runs
    assert first.record == second.record and first.record.turns[1].outcome.handoff


async def test_a_script_with_too_few_entries_ends_the_case(flowtests: FlowTests) -> None:
    (result,) = await flowtests.run(
        "flow: order_status\n" + ANA
        + """\
cases:
  - name: short
    turns:
      - customer: Where is A1001?
        model: [{call: lookup_order, args: {order_id: A1001}}]
      - customer: thanks
        model: [{reply: You're welcome.}]
"""
    )  # fmt: skip
    assert failures(result) == [
        "tests/t.yaml:7: turn 1: model: the engine asked the model a 2nd time but model: has 1 entry; add a reply:"
    ]
    (turn,) = result.runs[0].record.turns  # the second turn did not run
    assert turn.outcome.failure is not None and "technical problem" in turn.outcome.reply


async def test_a_case_that_cannot_run_fails_alone(flowtests: FlowTests) -> None:
    def broken() -> Recording:
        raise RuntimeError("no model today")

    first, second = await flowtests.run(
        "cases: [{name: a, turns: [{customer: hi}]}, {name: b, turns: [{customer: hi, model: [{reply: hi}]}]}]\n",
        offline=broken,
    )
    assert failures(first) == ["tests/t.yaml:1: case: the case could not run: RuntimeError: no model today"]
    assert failures(second) == ["tests/t.yaml:1: case: the case could not run: RuntimeError: no model today"]


async def test_live_asks_the_configured_model(flowtests: FlowTests, project: Path) -> None:
    async with FakeLLMServer() as fake:
        with (project / "config.yaml").open("a") as config:
            config.write(f"llm: {{base_url: {fake.base_url}, api_key: sk-test, retries: {{max_retries: 0}}}}\n")
        model = OpenAICompatibleLLM(load_config(project / "config.yaml").llm)
        fake.script(
            Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})]), Reply(text="It has shipped."),
            Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})]), Reply(text="No idea."),
            Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})]), Reply(text="Shipped!"),
        )  # fmt: skip
        try:
            (result,) = await flowtests.run(
                "flow: order_status\nnow: 2026-11-20T10:00:00Z\n" + ANA + ORDERS
                + """\
rules: [{when: order, reply: never used live}]
cases:
  - name: live
    turns:
      - customer: Where is my order A1001?
        model: [{reply: the script is not used live}]
        expect: {called: [lookup_order], reply_contains: shipped, system_prompt_contains: "Friday, 20 November 2026"}
""",
                live=model, repeat=3, min_pass_rate=0.6,
            )  # fmt: skip
        finally:
            await model.aclose()
    assert [run.passed for run in result.runs] == [True, False, True]
    assert (result.passes, result.passed) == (2, True)
    assert failures(result) == ["tests/t.yaml:16: turn 1: reply_contains: the reply does not contain 'shipped'"]
    sent = fake.requests[0].body["messages"][0]
    assert sent["role"] == "system" and sent["content"] == result.runs[0].record.turns[0].outcome.system_prompt
    assert result.runs[0].record.mode == "live" and "never used" not in str(fake.requests[0].body)
