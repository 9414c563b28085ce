from __future__ import annotations

import re

import pytest

from supportbot.confirm import confirmation_prompt, fill, generic_sentence, is_yes
from supportbot.errors import ConfigError
from supportbot.messages import ToolCall
from supportbot.tools import ToolRegistry, default_registry, tool


@pytest.mark.parametrize("reply", ["yes", "Yes!", "  ok ", "y", "Yes, please", "go ahead.", "OK 👍", "Sure"])
def test_clear_yes(reply: str) -> None:
    assert is_yes(reply)


@pytest.mark.parametrize("reply", ["no", "yes but change the subject", "not yet", "", "maybe", "yes no", "what?"])
def test_anything_else_is_not_a_yes(reply: str) -> None:
    assert not is_yes(reply)


def test_prompt_asks_in_the_tools_own_words_with_the_calls_arguments() -> None:
    call = ToolCall(id="1", name="create_ticket", arguments='{"subject": "Broken tent", "description": "d"}')
    text = confirmation_prompt([call], default_registry())
    assert (
        text == 'Shall I open a ticket “Broken tent” for the team? Reply "yes" to go ahead, or tell me what to change.'
    )
    assert "create_ticket" not in text and "subject:" not in text


def test_a_tool_without_a_sentence_is_asked_about_from_its_description() -> None:
    registry = ToolRegistry()
    registry.register(refund)
    call = ToolCall(id="1", name="refund", arguments='{"order_id": "A1001", "amount": 12.5}')
    assert confirmation_prompt([call], registry).startswith(
        "Shall I go ahead and refund an order to the customer's card?"
    )
    assert generic_sentence(None) == "Shall I go ahead with that?"


def test_several_calls_are_listed_one_question_each() -> None:
    calls = [
        ToolCall(id="1", name="create_ticket", arguments='{"subject": "Tent", "description": "d"}'),
        ToolCall(id="2", name="create_ticket", arguments='{"subject": "Stove", "description": "d"}'),
    ]
    lines = confirmation_prompt(calls, default_registry()).splitlines()
    assert lines[1:3] == [
        "• Shall I open a ticket “Tent” for the team?",
        "• Shall I open a ticket “Stove” for the team?",
    ]


@pytest.mark.parametrize(
    "arguments",
    ['{"description": "no subject"}', "not json", '{"subject": "", "description": "d"}', '["a list"]'],
    ids=["missing", "bad-json", "empty-subject", "not-an-object"],
)
def test_arguments_that_do_not_fit_give_the_generic_sentence(arguments: str) -> None:
    text = confirmation_prompt([ToolCall(id="1", name="create_ticket", arguments=arguments)], default_registry())
    assert text.startswith("Shall I go ahead and open a support ticket so a person from the team follows up")
    assert "{" not in text


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("Open “{subject}”?", {"subject": "Tent {0} {subject}"}, "Open “Tent {0} {subject}”?"),  # values stay text
        ("Open {subject}?", {}, None),
        ("Open {subject.__class__}?", {"subject": "x"}, None),
        ("Open {subject[0]}?", {"subject": "x"}, None),
        ("Open {subject!r}?", {"subject": "x"}, None),
        ("Open {0}?", {"subject": "x"}, None),
        ("Open {{literally}} {subject}?", {"subject": "x"}, "Open {literally} x?"),
        ("Open {", {"subject": "x"}, None),
    ],
)
def test_fill_only_looks_up_plain_names(template: str, values: dict[str, str], expected: str | None) -> None:
    assert fill(template, values) == expected


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("Refund {order}?", "{order} is not a plain placeholder"),
        ("Refund {order_id.__class__}?", "{order_id.__class__} is not a plain placeholder"),
        ("Refund {order_id!r}?", "{order_id!r}"),
        ("Refund {amount:.2f}?", "{amount:.2f}"),
        ("Refund {", "write braces as {{ and }}"),
        ("  ", "confirm is empty"),
    ],
)
def test_a_bad_confirmation_sentence_stops_the_import(template: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)) as refused:
        tool(confirm=template)(refund.function)
    assert "test_confirm:refund" in str(refused.value)
    assert "use {order_id}, {amount}" in str(refused.value) or "empty" in problem or "braces" in problem


@tool
async def refund(order_id: str, amount: float) -> str:
    """Refund an order to the customer's card. Only after the goods came back.

    Args:
        order_id: The order, e.g. A1001.
        amount: In the order's currency.
    """
    return "refunded"
