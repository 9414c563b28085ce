"""Every assertion of ``expect:``, passing and failing, with the failure's ``file:line`` and text.

Each test runs a file with a passing case and a failing case of the same conversation, so the
assertion is seen to hold and to catch the difference.
"""

from __future__ import annotations

import pytest

from supportbot.flowtest.records import CaseResult
from tests.flowtest.conftest import FlowTests

HEADER = """\
flow: order_status
customer: {email: ana@example.com, name: Ana Lima, verified: true}
now: "2026-11-20T10:00:00Z"
fixtures:
  orders:
    - {order_id: A1001, customer_email: ana@example.com, status: shipped, eta: "2026-11-25"}
cases:
"""
# The conversation of the table's cases: an order lookup, answered by the script.
LOOKUP = """\
  - name: {name}
    turns:
      - customer: Where is my order A1001?
        model:
          - {{call: lookup_order, args: {{order_id: A1001}}, usage: {{input_tokens: 1000, output_tokens: 100}}}}
          - reply: Your order A1001 has shipped.
            usage: {{input_tokens: 1000, output_tokens: 100}}
        expect: {expect}
"""
PASS_LINE, FAIL_LINE = 15, 23


def failures(result: CaseResult) -> list[str]:
    return [f"{f.where}: {f.what}: {f.message}" for run in result.runs for f in run.failures]


async def lookup(flowtests: FlowTests, passing: str, failing: str) -> tuple[CaseResult, CaseResult]:
    """Run the lookup conversation twice: with ``passing`` and with ``failing`` as its turn's expect:."""
    text = HEADER + LOOKUP.format(name="passes", expect=passing) + LOOKUP.format(name="fails", expect=failing)
    good, bad = await flowtests.run(text)
    assert failures(good) == [], failures(good)
    assert good.passed and not bad.passed
    return good, bad


@pytest.mark.parametrize(
    ("passing", "failing", "message"),
    [
        ("{called: [lookup_order]}", "{called: [create_ticket]}",
         "called: expected a call of create_ticket; it was not called"),
        ("{called: [{tool: lookup_order, args: {order_id: A1001}}]}",
         "{called: [{tool: lookup_order, args: {order_id: A1002}}]}",
         "called: expected a call of lookup_order; no call of it had these arguments and result"),
        ("{called: [{tool: lookup_order, ok: true}]}", "{called: [{tool: lookup_order, ok: false}]}",
         "called: expected a call of lookup_order; no call of it had these arguments and result"),
        ("{not_called: [create_ticket, handoff_to_human]}", "{not_called: [create_ticket, lookup_order]}",
         "not_called: lookup_order was called"),
        ("{reply_contains: [SHIPPED, a1001]}", "{reply_contains: [shipped, delivered]}",
         "reply_contains: the reply does not contain 'delivered'"),
        ("{reply_not_contains: delivered}", "{reply_not_contains: [delivered, Shipped]}",
         "reply_not_contains: the reply contains 'Shipped'"),
        (r"{reply_matches: 'A\d{4} has'}", "{reply_matches: SHIPPED}",
         "reply_matches: the reply does not match /SHIPPED/"),
        ("{reply_matches: '(?i)SHIPPED'}", "{reply_matches: delivered}",
         "reply_matches: the reply does not match /delivered/"),
        ("{ticket: false}", "{ticket: true}", "ticket: no ticket was opened"),
        ("{ticket: false}", "{ticket: {subject: Broken}}", "ticket: no ticket was opened"),
        ("{handoff: false}", "{handoff: true}", "handoff: the conversation was not handed to a person"),
        ("{transfer: false}", "{transfer: returns}", "transfer: the conversation was not transferred to returns"),
        ("{transfer: false}", "{transfer: true}", "transfer: the conversation was not transferred"),
        ("{flow: order_status}", "{flow: returns}", "flow: the conversation is in flow order_status, not returns"),
        ("{confirmation: false}", "{confirmation: true}", "confirmation: the customer was not asked to confirm a call"),
        ("{confirmation: false}", "{confirmation: create_ticket}",
         "confirmation: the customer was not asked to confirm a call of create_ticket"),
        ("{failed: false}", "{failed: true}", "failed: the model did not fail"),
        ("{max_cost_usd: 0.0024}", "{max_cost_usd: 0.001}", "max_cost_usd: the model cost $0.0024, more than $0.0010"),
        ("{max_tokens: 2200}", "{max_tokens: 2199}", "max_tokens: 2200 tokens, more than 2199"),
        ("{system_prompt_contains: [Friday, 20 November 2026, identity verified]}",
         "{system_prompt_contains: Saturday}", "system_prompt_contains: the system prompt does not contain 'Saturday'"),
        ("{system_prompt_omits: identity not verified}", "{system_prompt_omits: [Saturday, Acme Outdoor]}",
         "system_prompt_omits: the system prompt contains 'Acme Outdoor'"),
    ],
)  # fmt: skip
async def test_an_assertion_passes_and_fails(flowtests: FlowTests, passing: str, failing: str, message: str) -> None:
    _, bad = await lookup(flowtests, passing, failing)
    assert failures(bad) == [f"tests/t.yaml:{FAIL_LINE}: turn 1: {message}"]


async def test_a_failure_shows_expected_and_actual(flowtests: FlowTests) -> None:
    _, bad = await lookup(
        flowtests,
        "{called: [lookup_order]}",
        "{called: [{tool: lookup_order, args: {order_id: A1002}}], reply_contains: delivered, max_tokens: 10}",
    )
    called, reply, tokens = bad.runs[0].failures
    assert called.expected == ('lookup_order {"order_id": "A1002"}',)
    assert called.actual == ('lookup_order {"order_id": "A1001"} → ok',)
    assert reply.expected == ("contains: delivered",) and reply.actual == ("reply: Your order A1001 has shipped.",)
    assert (tokens.expected, tokens.actual) == (("at most 10 tokens",), ("2200 tokens",))


async def test_a_confirmation_then_the_ticket(flowtests: FlowTests) -> None:
    text = (
        HEADER
        + """\
  - name: ticket
    turns:
      - customer: My tent arrived torn, please open a ticket
        model: [{call: create_ticket, args: {subject: Torn tent, description: Arrived torn, priority: high}}]
        expect: {confirmation: create_ticket, ticket: false, not_called: [create_ticket], reply_contains: Torn tent}
      - customer: yes
        model: [{reply: "Done: ticket opened."}]
        expect:
          called: [{tool: create_ticket, args: {subject: Torn tent}, ok: true}]
          ticket: {subject: torn TENT, description: arrived, priority: high, kind: request, status: open}
          confirmation: false
    expect: {confirmation: create_ticket, ticket: true, reply_contains: Done}
  - name: wrong fields
    turns:
      - customer: My tent arrived torn, please open a ticket
        model: [{call: create_ticket, args: {subject: Torn tent, description: Arrived torn}}]
        expect: {confirmation: lookup_order}
      - customer: yes
        model: [{reply: "Done: ticket opened."}]
        expect: {ticket: {subject: Torn tent, priority: urgent}}
    expect: {ticket: false, confirmation: false}
"""
    )
    good, bad = await flowtests.run(text)
    assert failures(good) == []
    assert failures(bad) == [
        "tests/t.yaml:24: turn 1: confirmation: the customer was not asked to confirm a call of lookup_order",
        "tests/t.yaml:27: turn 2: ticket: no ticket has subject 'Torn tent', priority 'urgent'",
        "tests/t.yaml:28: case: ticket: a ticket was opened",
        "tests/t.yaml:28: case: confirmation: the customer was asked to confirm a call",
    ]
    ticket = bad.runs[0].failures[1]
    assert ticket.expected == ('ticket {"subject": "Torn tent", "priority": "urgent"}',)
    assert ticket.actual == ("ticket #1 'Torn tent' (kind request, priority normal, status open)",)


async def test_a_handoff_and_a_transfer(flowtests: FlowTests) -> None:
    text = (
        HEADER
        + """\
  - name: handoff
    turns:
      - customer: I want a person
        model: [{call: handoff_to_human, args: {reason: asks for a person}}, {reply: A colleague will answer.}]
        expect: {handoff: true, ticket: {kind: handoff}, transfer: false}
  - name: transfer
    turns:
      - customer: I want to return my tent
        model: [{call: transfer_to_returns, args: {reason: return}}, {reply: Returns here.}]
        expect: {transfer: returns, flow: returns, handoff: false}
      - customer: thanks
        model: [{reply: You're welcome.}]
        expect: {transfer: false, flow: returns}
    expect: {transfer: returns, flow: returns, reply_contains: welcome}
  - name: wrong
    turns:
      - customer: I want a person
        model: [{call: handoff_to_human, args: {reason: asks for a person}}, {reply: A colleague will answer.}]
        expect: {handoff: false}
      - customer: I want to return my tent
        model: [{call: transfer_to_returns, args: {reason: return}}, {reply: Returns here.}]
    expect: {transfer: true}
"""
    )
    handoff, transfer, wrong = await flowtests.run(text)
    assert failures(handoff) == [] and failures(transfer) == []
    # A person has the conversation after the handoff: the second turn never reaches the model.
    assert failures(wrong) == [
        "tests/t.yaml:26: turn 1: handoff: the conversation was handed to a person",
        "tests/t.yaml:28: turn 2: model: has 2 entries but the engine did not ask the model in this turn (a person "
        "has the conversation, or the message was refused); remove model:",
        "tests/t.yaml:29: case: transfer: the conversation was not transferred",
    ]


async def test_a_model_failure(flowtests: FlowTests) -> None:
    text = (
        HEADER
        + """\
  - name: down
    turns:
      - customer: Where is my order A1001?
        model: [{error: the provider is down}]
        expect: {failed: true, reply_contains: technical problem, ticket: {kind: escalation, priority: high}}
  - name: not down
    turns:
      - customer: Where is my order A1001?
        model: [{error: the provider is down}]
        expect: {failed: false}
"""
    )
    down, not_down = await flowtests.run(text)
    assert failures(down) == []
    assert failures(not_down) == ["tests/t.yaml:17: turn 1: failed: the model failed: the provider is down"]


CALL = """\
  - name: {name}
    turns:
      - customer: Where is my order?
        model: [{{call: lookup_order, args: {sent}}}, {{reply: Let me see.}}]
        expect: {{called: [{{tool: lookup_order, args: {wanted}}}]}}
"""


@pytest.mark.parametrize(
    ("sent", "wanted", "matches"),
    [
        ("{order_id: 1}", "{order_id: 1}", True),
        ("{order_id: 1}", "{order_id: 1.0}", True),
        ("{order_id: 1}", "{order_id: true}", False),
        ("{order_id: true}", "{order_id: 1}", False),
        ("{order_id: 0}", "{order_id: false}", False),
        ("{order_id: false}", "{order_id: false}", True),
        ("{order_id: '1'}", "{order_id: 1}", False),
        ("{order_id: 1}", "{order_id: '1'}", False),
        ("{order_id: A1001, extra: 1}", "{order_id: A1001}", True),
        ("{order_id: {id: A1, shop: eu}}", "{order_id: {id: A1}}", True),
        ("{order_id: {id: A1}}", "{order_id: {id: A1, shop: eu}}", False),
        ("{order_id: [1, 2]}", "{order_id: [1, 2]}", True),
        ("{order_id: [1, 2]}", "{order_id: [1]}", False),
        ("{order_id: [1, 2]}", "{order_id: [2, 1]}", False),
        ("{order_id: [1]}", "{order_id: [true]}", False),
        ("{order_id: null}", "{order_id: null}", True),
        ("{order_id: null}", "{order_id: ''}", False),
    ],
)
async def test_called_args_compare_as_json_values(flowtests: FlowTests, sent: str, wanted: str, matches: bool) -> None:
    """A boolean is not a number (Python's True == 1), a number is not text; mappings are subsets, lists exact."""
    (result,) = await flowtests.run(HEADER + CALL.format(name="call", sent=sent, wanted=wanted))
    expected = [] if matches else [
        "tests/t.yaml:12: turn 1: called: expected a call of lookup_order; no call of it had these arguments and "
        "result"
    ]  # fmt: skip
    assert failures(result) == expected
