"""The offline demo model: hints first, then the built-in rules, then custom tools by their words.

``DemoLLM.stream`` is driven with requests built from real tool schemas (``@tool`` functions in a
``ToolRegistry``); one test runs a whole turn through the engine with a project's own tools module.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import aiohttp
import pytest
from pydantic import Field

from supportbot._yaml import load_yaml
from supportbot.config import Config, load_config
from supportbot.confirm import DECLINED
from supportbot.errors import ToolRetry
from supportbot.events import ToolCallFinished, TurnFinished
from supportbot.hints import DemoHint
from supportbot.llm import demo
from supportbot.llm.base import Completion, LLMRequest, TextChunk
from supportbot.llm.demo import LABEL, DemoLLM
from supportbot.llm.demo_match import best_tool
from supportbot.messages import ChatMessage, ToolCall
from supportbot.runtime import open_runtime
from supportbot.store.base import Conversation, Customer
from supportbot.tools import ToolContext, default_registry, tool

# -- the tools ----------------------------------------------------------------------------------------


@tool
def warranty_status(
    serial: Annotated[str, Field(pattern=r"^SN-\d{4,}$")], region: Literal["EU", "UK"] | None = None
) -> dict[str, Any]:
    """Check the warranty of a product by its serial number.

    Args:
        serial: The serial number on the box, e.g. SN-12345.
        region: Where it was bought.
    """
    return {"serial": serial, "covered": True, "expires": "2027-05-01"}


@tool
def store_hours(city: Literal["Berlin", "Paris", "Lisbon"]) -> str:
    """Opening hours of our shops in a city."""
    return f"Our {city} shop is open 9-18."


@tool
def gift_card_balance(card_code: str, details: str | None = None) -> dict[str, Any]:
    """The remaining balance of a gift card."""
    return {"balance": 25, "currency": "EUR"}


@tool
def search_faq(query: str) -> list[str]:
    """Search the help centre for answers about payment methods, invoices and vouchers."""
    return ["We take cards and PayPal.", "Vouchers never expire."]


@tool
def book_repair(model_name: str) -> str:
    """Book a repair appointment for a broken device."""
    return "booked"


@tool
def reserve_seats(
    seats: Annotated[int, Field(ge=1, le=8)],
    email: Annotated[str, Field(json_schema_extra={"format": "email"})],
    newsletter: bool = False,
) -> dict[str, Any]:
    """Reserve seats at a cooking class."""
    return {"seats": seats}


@tool
def newsletter_signup(opt_in: bool) -> str:
    """Sign up for the newsletter."""
    return "ok"


@tool
def rate_delivery(stars: int) -> str:
    """Rate a delivery."""
    return "thanks"


@tool
def rate_service(stars: int) -> str:
    """Rate a service."""
    return "thanks"


@tool
def broken_tool(code: str) -> str:
    """Fails every time."""
    raise RuntimeError("the warranty database is down")


@tool
def picky_tool(code: str) -> str:
    """Asks the model to try again."""
    raise ToolRetry("serials look like SN-12345")


@tool(requires_verified=True)
def account_balance(account_id: str) -> str:
    """The balance of an account."""
    return "0"


@tool
def report_bug(reference: str) -> str:
    """Tell the app team about something that does not work."""
    return "thanks"


REGISTRY = default_registry()
for _tool in (warranty_status, store_hours, gift_card_balance, search_faq, book_repair, reserve_seats,
              newsletter_signup, rate_delivery, rate_service, broken_tool, picky_tool, account_balance,
              report_bug):  # fmt: skip
    REGISTRY.register(_tool)
CUSTOM = ["warranty_status", "store_hours", "gift_card_balance", "search_faq", "book_repair", "reserve_seats"]


def transfer(flow: str, description: str) -> dict[str, Any]:
    """A ``transfer_to_<flow>`` definition, as the engine makes it from a flow's handoffs."""
    return {
        "type": "function",
        "function": {
            "name": f"transfer_to_{flow}",
            "description": f"Hand the conversation to the '{flow}' specialist: {description}",
            "parameters": {
                "type": "object",
                "properties": {"reason": {"type": "string", "description": "Why the customer needs this."}},
                "required": [],
                "additionalProperties": False,
            },
        },
    }


BILLING = transfer("billing", "Invoices, payments and charges on a subscription, and updating a card.")
RETURNS = transfer("returns", "Returns, exchanges and refunds.")


# -- driving the model ---------------------------------------------------------------------------------


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def calling(name: str, arguments: dict[str, Any], call_id: str = "demo_1") -> ChatMessage:
    return ChatMessage(role="assistant", tool_calls=(ToolCall(id=call_id, name=name, arguments=json.dumps(arguments)),))


def result(name: str, content: Any, call_id: str = "demo_1") -> ChatMessage:
    text = content if isinstance(content, str) else json.dumps(content)
    return ChatMessage(role="tool", tool_call_id=call_id, name=name, content=text)


async def answer(
    *messages: ChatMessage,
    tools: list[str] | None = None,
    extra: list[dict[str, Any]] | None = None,
    hints: list[dict[str, Any]] | None = None,
    llm: DemoLLM | None = None,
) -> Completion:
    """One response of the demo model to ``messages``, checking the stream adds up to it."""
    request = LLMRequest(
        messages=[ChatMessage(role="system", content="You are a support assistant."), *messages],
        tools=[*REGISTRY.schemas(CUSTOM if tools is None else tools), *(extra or [])],
        model="demo",
        hints=[DemoHint.model_validate(h) for h in hints or []],
    )
    events = [event async for event in (llm or DemoLLM()).stream(request)]
    completion = events[-1]
    assert isinstance(completion, Completion)
    chunks = [e.text for e in events[:-1] if isinstance(e, TextChunk)]
    assert len(chunks) == len(events) - 1
    assert "".join(chunks) == (completion.message.content or "")
    return completion


def call_of(completion: Completion) -> tuple[str, dict[str, Any]] | None:
    if not completion.message.tool_calls:
        assert completion.finish_reason == "stop"
        return None
    assert completion.finish_reason == "tool_calls"
    (call,) = completion.message.tool_calls
    return call.name, json.loads(call.arguments)


def text_of(completion: Completion) -> str:
    assert call_of(completion) is None
    text = completion.message.content or ""
    assert text.startswith(LABEL)
    return text.removeprefix(LABEL)


# -- hints ----------------------------------------------------------------------------------------------

WARRANTY_HINT = {
    "when": r"warranty .*?(?P<serial>SN-\d+)(?: in (?P<shop>\w+))?",
    "call": "warranty_status",
    "args": {"serial": "{serial}", "region": "EU", "note": "{serial} in {shop}", "tags": ["{serial}", 3]},
}


async def test_a_when_hint_calls_its_tool_with_the_named_groups() -> None:
    completion = await answer(user("WARRANTY please for sn-12345, order A1001"), hints=[WARRANTY_HINT],
                              tools=["lookup_order", *CUSTOM])  # fmt: skip

    # Before the built-in order rule; values without braces kept; a group that did not match stays visible.
    assert call_of(completion) == (
        "warranty_status",
        {"serial": "sn-12345", "region": "EU", "note": "sn-12345 in {shop}", "tags": ["sn-12345", 3]},
    )


async def test_the_first_matching_hint_wins_and_one_naming_a_tool_not_offered_is_ignored() -> None:
    hints = [
        {"when": "warranty", "call": "ghost_tool"},  # not offered: ignored
        {"when": "nothing like this", "reply": "never"},
        {"when": r"warranty (?P<serial>SN-\d+)", "reply": "First: {serial}."},
        {"when": "warranty", "reply": "Second."},
    ]
    assert text_of(await answer(user("warranty SN-777"), hints=hints)) == "First: SN-777."
    # A hint whose tool is not offered falls through to the rules after the hints.
    only_ghost = await answer(user("warranty SN-77777"), hints=hints[:1])
    assert call_of(only_ghost) == ("warranty_status", {"serial": "SN-77777"})


async def test_the_models_own_hints_come_before_the_requests() -> None:
    own = DemoLLM(hints=[DemoHint(when="warranty", reply="From the script.")])
    hints = [{"when": "warranty", "reply": "From the flow."}]
    assert text_of(await answer(user("warranty?"), hints=hints, llm=own)) == "From the script."
    assert text_of(await answer(user("warranty?"), hints=hints)) == "From the flow."


async def test_a_reply_hint_fills_its_groups_and_leaves_the_rest_visible() -> None:
    hint = {"when": r"size (?P<size>\d+)(?: in (?P<colour>\w+))?", "reply": "Size {size} {colour} {size.real} {{x}}"}
    assert text_of(await answer(user("Do you have size 42?"), hints=[hint])) == "Size 42 {colour} {size.real} {x}"


@pytest.mark.parametrize(
    "hostile",
    ["{__class__}", "{0.__class__.__mro__}", "{serial!r:>99}", "{", "}}{{", "%(x)s", "{reply.__globals__}"],
)
async def test_hostile_text_in_groups_is_just_data(hostile: str) -> None:
    hints = [
        {"when": r"say (?P<said>.+)", "reply": "You said: {said}. {said.__class__} {said[0]} {said!r}"},
        {"when": r"file (?P<said>.+)", "call": "search_faq", "args": {"query": "{said}", "also": "<{said}>"}},
    ]
    reply = await answer(user(f"say {hostile}"), hints=hints)
    assert text_of(reply) == f"You said: {hostile}. {{said.__class__}} {{said[0]}} {{said!r}}"
    call = await answer(user(f"file {hostile}"), hints=hints)
    assert call_of(call) == ("search_faq", {"query": hostile, "also": f"<{hostile}>"})


async def test_a_template_that_is_not_format_text_stays_as_written() -> None:
    hint = {"when": "broken", "reply": "Oops { not closed"}
    assert text_of(await answer(user("broken"), hints=[hint])) == "Oops { not closed"


async def test_dates_in_a_hints_args_are_sent_as_iso_text() -> None:
    # YAML reads these as a date and a datetime, which JSON has no type for.
    loaded = load_yaml("{when: serial, call: search_faq, args: {query: 2026-01-01, at: [{t: 2026-01-01 09:30:00}]}}")
    hint = DemoHint.model_validate(loaded.data)
    assert hint.args == {"query": "2026-01-01", "at": [{"t": "2026-01-01T09:30:00"}]}
    completion = await answer(user("my serial"), llm=DemoLLM(hints=[hint]))
    assert call_of(completion) == ("search_faq", {"query": "2026-01-01", "at": [{"t": "2026-01-01T09:30:00"}]})


@pytest.mark.parametrize(
    ("hint", "problem"),
    [
        ({"when": r"warranty (?P<sn>SN-\d+)", "call": "warranty_status", "args": {"serial": "{serial}"}},
         "'{serial}' in args.serial is not a named group of when (its groups: sn); name a group (?P<serial>...) "
         "or fix the placeholder"),
        ({"when": "warranty", "call": "search_faq", "args": {"query": "ok", "tags": ["a", {"b": "x {sn} y"}]}},
         "'{sn}' in args.tags[1].b is not a named group of when (it has no named groups); name a group "
         "(?P<sn>...) or fix the placeholder"),
        ({"when": r"(?P<a>\d+) (?P<b>\w+)", "reply": "{a} {c}"},
         "'{c}' in reply is not a named group of when (its groups: a, b); name a group (?P<c>...) or fix the "
         "placeholder"),
    ],
)  # fmt: skip
def test_a_when_rules_placeholders_must_be_its_named_groups(hint: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match="named group") as raised:
        DemoHint.model_validate(hint)
    assert problem in str(raised.value)


def test_placeholders_that_are_not_plain_names_or_name_result_keys_are_not_checked() -> None:
    DemoHint.model_validate({"when": "(?P<a>x)", "reply": "{a} {{literal}} {a.real} {0} { not format"})
    DemoHint.model_validate({"after": "warranty_status", "reply": "Until {expires}."})


async def test_an_after_hint_replies_from_the_result_of_its_tool() -> None:
    hints = [
        {"after": "store_hours", "reply": "never: the result was not store_hours'"},
        {"after": "warranty_status", "reply": "never: the result has no key {missing}"},
        {"after": "warranty_status", "reply": "Covered: {covered}, until {expires}. {covered.real} {{x}}"},
    ]
    messages = [
        user("Is SN-12345 under warranty?"),
        calling("warranty_status", {"serial": "SN-12345"}),
        result("warranty_status", {"covered": True, "expires": "2027-05-01"}),
    ]
    assert text_of(await answer(*messages, hints=hints)) == "Covered: yes, until 2027-05-01. {covered.real} {x}"


async def test_a_when_call_is_followed_by_its_after_hint_or_else_by_a_description() -> None:
    when = {"when": r"(?P<serial>SN-\d+)", "call": "warranty_status", "args": {"serial": "{serial}"}}
    after = {"after": "warranty_status", "reply": "Until {expires}."}
    question = user("Check SN-12345")
    first = await answer(question, hints=[when, after])
    assert call_of(first) == ("warranty_status", {"serial": "SN-12345"})
    done = [question, first.message, result("warranty_status", {"expires": "2027"})]
    assert text_of(await answer(*done, hints=[when, after])) == "Until 2027."
    assert text_of(await answer(*done, hints=[when])) == "Here is what warranty_status returned: expires: 2027."


async def test_an_after_hint_calls_a_tool_with_result_values_once() -> None:
    hints = [{"after": "gift_card_balance", "call": "reserve_seats",
              "args": {"seats": "{balance}", "email": "a@example.com", "note": "{currency} {balance}"}}]  # fmt: skip
    messages = [user("gift card GC-1234"), calling("gift_card_balance", {"card_code": "GC-1234"}),
                result("gift_card_balance", {"balance": 2, "currency": "EUR"})]  # fmt: skip
    then = await answer(*messages, hints=hints)
    # A whole "{key}" keeps the result's value as it is (a number stays a number).
    expected = {"seats": 2, "email": "a@example.com", "note": "EUR 2"}
    assert call_of(then) == ("reserve_seats", expected)
    # The same call already made since the customer wrote: no loop, the result is described instead.
    again = [*messages, calling("reserve_seats", expected, "demo_2"), result("gift_card_balance", {"balance": 2,
             "currency": "EUR"}, "demo_2")]  # fmt: skip
    assert "Here is what gift_card_balance returned: balance: 2; currency: EUR." == text_of(
        await answer(*again, hints=hints)
    )


@pytest.mark.parametrize(
    ("content", "described"),
    [
        # A ToolRetry's message: the tool's own words, not the rule's reply with its placeholders unfilled.
        ("serials look like SN-12345", "serials look like SN-12345"),
        ({"error": "no such serial"}, "Here is what warranty_status returned: error: no such serial."),
        (["SN-12345"], "Here is what warranty_status found: SN-12345."),
    ],
)
async def test_an_after_hint_applies_only_to_a_result_with_the_keys_it_names(content: Any, described: str) -> None:
    hints = [
        {"after": "warranty_status", "reply": "Your warranty runs until {expires}."},
        {"after": "warranty_status", "call": "search_faq", "args": {"query": "{expires}"}},
    ]
    messages = [
        user("SN-12345"),
        calling("warranty_status", {"serial": "SN-12345"}),
        result("warranty_status", content),
    ]
    assert text_of(await answer(*messages, hints=hints)) == described
    # A rule without placeholders still applies to any result that is not an error.
    plain = [{"after": "warranty_status", "reply": "Checked."}]
    assert text_of(await answer(*messages, hints=plain)) == "Checked."


async def test_an_after_hint_needs_a_result_not_an_error_and_its_tool_offered() -> None:
    hints = [{"after": "warranty_status", "reply": "Until {expires}."}]
    failed = [user("SN-12345"), calling("warranty_status", {"serial": "SN-12345"}),
              result("warranty_status", "tool failed: RuntimeError: boom")]  # fmt: skip
    assert text_of(await answer(*failed, hints=hints)) == (
        "The warranty_status tool reported a problem: “tool failed: RuntimeError: boom”"
    )
    not_offered = [{"after": "gift_card_balance", "call": "ghost", "args": {}}]
    done = [user("card GC-1234"), calling("gift_card_balance", {"card_code": "GC-1234"}),
            result("gift_card_balance", {"balance": 5})]  # fmt: skip
    assert text_of(await answer(*done, hints=not_offered)) == "Here is what gift_card_balance returned: balance: 5."


# -- the built-in rules ---------------------------------------------------------------------------------

BUILTIN = ["lookup_order", "create_ticket", "handoff_to_human"]
TRANSFERS = [RETURNS, transfer("order_status", "Track an existing order.")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Where is my order a1001?", ("lookup_order", {"order_id": "A1001"})),
        ("I want to file a complaint", ("create_ticket", {"subject": "I want to file a complaint",
                                                          "description": "I want to file a complaint"})),
        ("Can I talk to a human?", ("handoff_to_human", {"reason": "Can I talk to a human?"})),
        ("I'd like a refund", ("transfer_to_returns", {"reason": "I'd like a refund"})),
        ("my parcel is late", ("transfer_to_order_status", {"reason": "my parcel is late"})),
        # The built-in rules come before custom tools: the order number wins over a warranty serial.
        ("warranty of order A1001", ("lookup_order", {"order_id": "A1001"})),
    ],
)  # fmt: skip
async def test_the_built_in_rules_stay(text: str, expected: tuple[str, dict[str, Any]]) -> None:
    completion = await answer(user(text), tools=[*BUILTIN, *CUSTOM], extra=TRANSFERS)
    assert call_of(completion) == expected


@pytest.mark.parametrize(
    ("text", "tools", "expected"),
    [
        # A custom tool a word of whose name is in the message, with its arguments, beats the order rule.
        ("what's the warranty for SN-12345", [*BUILTIN, *CUSTOM], ("warranty_status", {"serial": "SN-12345"})),
        ("weird report W-100", [*BUILTIN, "report_bug"], ("report_bug", {"reference": "W-100"})),
        # "report" alone is not a ticket word, nor are "real" and "someone" a wish for a person.
        ("weird report W-100", BUILTIN, ("lookup_order", {"order_id": "W-100"})),
        ("Is this real leather?", BUILTIN, None),
        ("Can someone tell me your opening hours?", BUILTIN, None),
        ("I'd like to talk to a real person", BUILTIN,
         ("handoff_to_human", {"reason": "I'd like to talk to a real person"})),
        ("Get me an operator", BUILTIN, ("handoff_to_human", {"reason": "Get me an operator"})),
        ("I want to report a problem, please open a ticket", BUILTIN,
         ("create_ticket", {"subject": "I want to report a problem, please open a ticket",
                            "description": "I want to report a problem, please open a ticket"})),
    ],
)  # fmt: skip
async def test_built_in_rules_leave_room_for_fitting_custom_tools(
    text: str, tools: list[str], expected: tuple[str, dict[str, Any]] | None
) -> None:
    assert call_of(await answer(user(text), tools=tools, extra=TRANSFERS)) == expected


async def test_a_long_ticket_is_opened_within_the_tools_limits() -> None:
    text = "Please open a ticket: " + "my tent pole snapped on the first night, " * 200  # over 8000 characters
    name, arguments = call_of(await answer(user(text), tools=BUILTIN)) or ("", {})
    assert name == "create_ticket"
    assert len(arguments["subject"]) <= 80 and arguments["subject"].endswith("…")
    assert 4000 < len(arguments["description"]) <= 5000 and arguments["description"].endswith("…")
    assert text.startswith(arguments["description"].removesuffix("…"))
    ticket = REGISTRY.get("create_ticket")
    assert ticket is not None
    ticket.arguments.model.model_validate(arguments)  # the real tool takes them


async def test_built_in_results_are_described_as_before() -> None:
    order = {"order_id": "A1001", "status": "shipped", "eta": "2026-12-07", "carrier": "DHL"}
    messages = [user("A1001"), calling("lookup_order", {"order_id": "A1001"}), result("lookup_order", order)]
    described = text_of(await answer(*messages, tools=BUILTIN))
    assert described == "Order A1001 is shipped. Expected delivery: 2026-12-07. Carrier: DHL."
    ticket = [user("ticket"), calling("create_ticket", {}), result("create_ticket", {"ticket_id": 7})]
    assert text_of(await answer(*ticket, tools=BUILTIN)) == "I've opened ticket #7 for you; our team will follow up."


# -- custom tools ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a pattern (anchored: it matches one word of the message); the optional region left out
        ("Is my SN-12345 still under warranty?", ("warranty_status", {"serial": "SN-12345"})),
        # an optional enum is sent when the message clearly has it
        ("Warranty for SN-12345 bought in the uk", ("warranty_status", {"serial": "SN-12345", "region": "UK"})),
        # an enum, mentioned in any case; two description words (shops, opening)
        ("When are your shops in paris opening?", ("store_hours", {"city": "Paris"})),
        # *_code: a word with a digit
        ("What's left on my gift cards? It's GC-88123.", ("gift_card_balance", {"card_code": "GC-88123"})),
        # a free-text argument: the message
        ("Which payment methods and vouchers do you take?",
         ("search_faq", {"query": "Which payment methods and vouchers do you take?"})),
        # an integer within its bounds (20 is above the maximum of 8), an email address
        ("Reserve seats for 20, sorry, 4 people: ana@example.com",
         ("reserve_seats", {"seats": 4, "email": "ana@example.com"})),
    ],
)  # fmt: skip
async def test_a_custom_tool_is_called_when_its_words_fit_and_its_arguments_are_there(
    text: str, expected: tuple[str, dict[str, Any]]
) -> None:
    assert call_of(await answer(user(text))) == expected


async def test_a_long_message_is_shortened_for_a_free_text_argument() -> None:
    text = "Which payment methods do you take for invoices? " + "I really need to know this soon. " * 30
    name, arguments = call_of(await answer(user(text))) or ("", {})
    assert name == "search_faq"
    assert len(arguments["query"]) <= 500 and arguments["query"].endswith("…")
    assert text.startswith(arguments["query"].removesuffix("…"))


async def test_ties_go_to_the_name_that_sorts_first() -> None:
    completion = await answer(user("I want to rate it: 5"), tools=["rate_service", "rate_delivery"])
    assert call_of(completion) == ("rate_delivery", {"stars": 5})


@pytest.mark.parametrize(
    "text",
    [
        "hello there",  # no signal at all
        "Do you take payment by cheque?",  # one description word is not enough
        "It's about my device",  # neither is one that only another word of a tool shares
    ],
)
async def test_no_signal_no_call(text: str) -> None:
    reply = text_of(await answer(user(text)))
    assert reply.startswith("I'm the offline demo, not a real model. I call this flow's tools when your words fit")


ASK = "; please include it in your message."


@pytest.mark.parametrize(
    ("text", "tools", "asked"),
    [
        ("I want to book a repair", CUSTOM,
         "I could call book_repair (book a repair appointment for a broken device), but I need the model name "
         "for that" + ASK),
        ("Is my tent under warranty?", CUSTOM,
         "I could call warranty_status (check the warranty of a product by its serial number), but I need the "
         "serial (the serial number on the box, e.g. SN-12345) for that" + ASK),
        ("Reserve seats for 20 people: ana@example.com", CUSTOM,
         "I could call reserve_seats (reserve seats at a cooking class), but I need the seats for that" + ASK),
        ("Sign me up for the newsletter", ["newsletter_signup"],
         "I could call newsletter_signup (sign up for the newsletter), but I need the opt in for that" + ASK),
    ],
)  # fmt: skip
async def test_a_required_argument_that_cannot_be_filled_means_no_call(text: str, tools: list[str], asked: str) -> None:
    assert text_of(await answer(user(text), tools=tools)) == asked


async def test_a_long_message_without_an_address_is_read_in_linear_time() -> None:
    # A regression guard, not a benchmark: the quadratic email pattern took seconds here, the linear one ~1 ms.
    text = "Reserve seats for 4 people: " + "a." * 25_000
    started = time.perf_counter()
    reply = text_of(await answer(user(text), tools=["reserve_seats"]))
    assert time.perf_counter() - started < 0.5
    assert reply.startswith("I could call reserve_seats (reserve seats at a cooking class), but I need the email")


async def test_the_tools_are_matched_once_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    matched: list[str] = []

    def counting(text: str, tools: Any) -> Any:
        matched.append(text)
        return best_tool(text, tools)

    monkeypatch.setattr(demo, "best_tool", counting)
    assert "I need the model name" in text_of(await answer(user("I want to book a repair")))
    assert matched == ["I want to book a repair"]


async def test_a_tool_that_is_not_offered_is_never_called() -> None:
    reply = await answer(user("Is my SN-12345 still under warranty?"), tools=["store_hours"])
    assert call_of(reply) is None


async def test_a_transfer_is_chosen_by_the_words_of_its_flow_when_no_keyword_decides() -> None:
    charged = await answer(user("I was charged twice on my last invoice"), tools=BUILTIN, extra=[BILLING, *TRANSFERS])
    assert call_of(charged) == ("transfer_to_billing", {"reason": "I was charged twice on my last invoice"})
    # The keywords of the example flows decide first.
    refund = await answer(user("I'd like a refund on my invoice charges"), tools=BUILTIN, extra=[BILLING, *TRANSFERS])
    assert call_of(refund) == ("transfer_to_returns", {"reason": "I'd like a refund on my invoice charges"})


async def test_after_a_transfer_the_question_is_acted_on_with_the_new_flows_tools() -> None:
    question = user("Is SN-12345 under warranty?")
    moved = [question, calling("transfer_to_warranty", {}), result("transfer_to_warranty", "Transferred to warranty.")]
    completion = await answer(*moved, tools=["warranty_status"], extra=[BILLING])
    assert call_of(completion) == ("warranty_status", {"serial": "SN-12345"})
    # With the new flow's hints, and without anything to do it just says where the customer is.
    hinted = await answer(*moved, tools=[], hints=[{"when": "warranty", "reply": "Warranty desk here."}])
    assert text_of(hinted) == "Warranty desk here."
    nothing = await answer(*moved, tools=[], extra=[BILLING])
    assert text_of(nothing) == "I've moved you to our warranty assistant. How can I help?"


async def test_after_a_transfer_the_question_does_not_transfer_again() -> None:
    question = user("I'd like a refund of the charges on my invoice")
    moved = [question, calling("transfer_to_billing", {}), result("transfer_to_billing", "Transferred to billing.")]
    completion = await answer(*moved, tools=BUILTIN, extra=[RETURNS])
    assert text_of(completion) == "I've moved you to our billing assistant. How can I help?"


# -- results --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "described"),
    [
        ("gift_card_balance", {"balance": 25, "active": False, "note": None, "tags": ["a", "b"], "owner": {"id": 1}},
         "Here is what gift_card_balance returned: balance: 25; active: no; note: none; tags: a, b; owner: (id: 1)."),
        ("search_faq", ["We take cards.", {"q": "vouchers", "a": "never expire"}],
         "Here is what search_faq found: We take cards.; q: vouchers, a: never expire."),
        ("search_faq", [], "search_faq found nothing."),
        ("gift_card_balance", {}, "gift_card_balance returned nothing."),
        ("store_hours", "Our Paris shop is open 9-18.", "Our Paris shop is open 9-18."),
        ("store_hours", "42", "42"),
        ("store_hours", DECLINED, "All right, I haven't done that."),
    ],
)  # fmt: skip
async def test_a_custom_tools_result_is_described(name: str, content: Any, described: str) -> None:
    messages = [user("question"), calling(name, {}), result(name, content)]
    assert text_of(await answer(*messages)) == described


async def test_a_long_result_is_shortened() -> None:
    messages = [user("faq"), calling("search_faq", {}), result("search_faq", [f"answer {i}" for i in range(500)])]
    assert len(text_of(await answer(*messages))) <= 600


async def test_the_customers_yes_to_a_confirmed_call_gets_its_result() -> None:
    messages = [user("card GC-1234"), calling("gift_card_balance", {}), result("gift_card_balance", {"balance": 5}),
                user("yes")]  # fmt: skip
    assert text_of(await answer(*messages)) == "Here is what gift_card_balance returned: balance: 5."


@pytest.mark.parametrize(
    ("name", "arguments", "problem"),
    [
        ("broken_tool", {"code": "x"}, "tool failed: RuntimeError: the warranty database is down"),
        ("warranty_status", {"serial": "nope"}, "invalid arguments for 'warranty_status': serial: string should "),
        ("warranty_status", "{not json", "the arguments for 'warranty_status' are not valid JSON"),
        ("ghost_tool", {}, "unknown tool 'ghost_tool'; available: "),
        ("account_balance", {"account_id": "1"}, "'account_balance' was not run: the customer's identity is not "),
    ],
)
async def test_errors_of_the_real_registry_are_reported_as_problems(name: str, arguments: Any, problem: str) -> None:
    customer = Customer(id="c1", email=None, name="Ana", verified=False)
    async with aiohttp.ClientSession() as http:
        ctx = ToolContext(customer=customer, conversation=Conversation(id="v1", customer_id="c1", channel="test",
                          flow="general"), channel="test", flow="general", store=None,  # type: ignore[arg-type]
                          config=Config(), http=http, orders=None, tool_call_id="demo_1")  # type: ignore[arg-type]  # fmt: skip
        raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
        outcome = await REGISTRY.call(ToolCall(id="demo_1", name=name, arguments=raw), ctx)
    assert outcome.is_error and outcome.content.startswith(problem)
    messages = [user("go"), calling(name, {}), result(name, outcome.content)]
    assert text_of(await answer(*messages)).startswith(f"The {name} tool reported a problem: “{problem}")


async def test_a_tool_retry_message_is_read_as_the_tools_own_words() -> None:
    messages = [user("go"), calling("picky_tool", {}), result("picky_tool", "serials look like SN-12345")]
    assert text_of(await answer(*messages)) == "serials look like SN-12345"


# -- what the demo offers --------------------------------------------------------------------------------


async def test_the_offer_names_the_custom_tools_too() -> None:
    offer = text_of(
        await answer(user("hi"), tools=["lookup_order", "gift_card_balance", "search_faq"], extra=[BILLING])
    )
    assert offer == (
        "I'm the offline demo, not a real model. I can check an order if you give me its number (like A1001), "
        "bring in our billing assistant. I also call this flow's tools when your words fit them: gift_card_balance "
        "(the remaining balance of a gift card), search_faq (search the help centre for answers about payment "
        "methods…)."
    )
    only_custom = text_of(await answer(user("hi"), tools=["book_repair"]))
    assert only_custom == (
        "I'm the offline demo, not a real model. I call this flow's tools when your words fit them: book_repair "
        "(book a repair appointment for a broken device)."
    )
    assert text_of(await answer(user("hi"), tools=[])) == "I'm the offline demo; connect a model to get real answers."


async def test_call_ids_are_unique_per_model() -> None:
    llm = DemoLLM()
    first = await answer(user("SN-12345 warranty"), llm=llm)
    second = await answer(user("SN-12345 warranty"), llm=llm)
    assert [first.message.tool_calls[0].id, second.message.tool_calls[0].id] == ["demo_1", "demo_2"]


# -- through the engine ---------------------------------------------------------------------------------

TOOLS_MODULE = '''
from supportbot import tool


@tool
def warranty_status(serial: str) -> dict:
    """Check the warranty of a product by its serial number.

    Args:
        serial: The serial number, e.g. SN-12345.
    """
    return {"serial": serial, "covered": True, "expires": "2027-05-01"}
'''

FLOW = """
name: support
description: Product questions and warranty.
system_prompt: You help customers of {{ company.name }}.
tools: [warranty_status, create_ticket]
"""


CONFIRMING_FLOW = """
name: support
description: Orders and tickets.
system_prompt: You help customers of {{ company.name }}.
tools: [lookup_order, create_ticket]
confirm: [create_ticket]
"""


def make_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flow: str) -> Config:
    (tmp_path / "mytools.py").write_text(textwrap.dedent(TOOLS_MODULE))
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "support.yaml").write_text(flow)
    (tmp_path / "config.yaml").write_text(
        json.dumps(
            {
                "company": {"name": "Acme"},
                "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"},
                "flows": {"dir": "flows", "default": "support"},
                "tools": {"modules": ["mytools"]},
                "logging": {"level": "WARNING"},
            }
        )
    )
    # The runtime puts the project on the import path and imports mytools: both are undone afterwards.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "mytools", raising=False)
    return load_config(tmp_path / "config.yaml", env={})


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    return make_project(tmp_path, monkeypatch, FLOW)


async def test_a_custom_tool_runs_through_the_engine_in_demo_mode(project: Config) -> None:
    runtime = await open_runtime(project, demo=True)
    try:
        customer = await runtime.store.get_or_create_customer(email="ana@example.com", name="Ana", verified=True)
        conversation, _ = await runtime.engine.start_conversation(customer, channel="test")
        events = [e async for e in runtime.engine.run_turn(conversation.id, "Is SN-12345 still under warranty?")]
    finally:
        await runtime.aclose()
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [(e.name, e.is_error, json.loads(e.result)) for e in finished] == [
        ("warranty_status", False, {"serial": "SN-12345", "covered": True, "expires": "2027-05-01"})
    ]
    done = events[-1]
    assert isinstance(done, TurnFinished)
    assert done.text == (
        f"{LABEL}Here is what warranty_status returned: serial: SN-12345; covered: yes; expires: 2027-05-01."
    )


@pytest.mark.parametrize(
    ("second", "called", "reply"),
    [
        # Another question instead of yes: the held ticket is declined and the question answered.
        ("Actually, where is my order A1001?", [("lookup_order", False)], "Order A1001 is shipped."),
        ("No thanks.", [], "All right, I haven't done that."),
        # The yes runs the held call, and the demo says what it did.
        ("yes", [("create_ticket", False)], "I've opened ticket #"),
    ],
)
async def test_a_new_question_in_place_of_yes_is_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: str, called: list[tuple[str, bool]], reply: str
) -> None:
    runtime = await open_runtime(make_project(tmp_path, monkeypatch, CONFIRMING_FLOW), demo=True)
    try:
        customer = await runtime.store.get_or_create_customer(email="ana@example.com", name="Ana", verified=True)
        conversation, _ = await runtime.engine.start_conversation(customer, channel="test")
        first = [e async for e in runtime.engine.run_turn(conversation.id, "please open a ticket")]
        events = [e async for e in runtime.engine.run_turn(conversation.id, second)]
    finally:
        await runtime.aclose()
    held = first[-1]
    assert isinstance(held, TurnFinished) and held.awaiting_confirmation
    assert [(e.name, e.is_error) for e in events if isinstance(e, ToolCallFinished)] == called
    done = events[-1]
    assert isinstance(done, TurnFinished)
    assert done.text.startswith(LABEL + reply)
