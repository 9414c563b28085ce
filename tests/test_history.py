from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from supportbot import history
from supportbot.history import MISSING_RESULT, estimate_tokens, fit, to_chat_messages
from supportbot.messages import ChatMessage, ToolCall
from supportbot.store.base import NewMessage, StoredMessage

NOW = datetime(2026, 11, 24, tzinfo=UTC)


def stored(i: int, **kw: object) -> StoredMessage:
    return StoredMessage(id=i, conversation_id="c", created_at=NOW, **kw)  # type: ignore[arg-type]


def call(cid: str, name: str = "lookup_order") -> ToolCall:
    return ToolCall(id=cid, name=name, arguments='{"order_id":"A1001"}', extra={"extra_content": {"google": {"x": 1}}})


def test_tool_results_follow_their_call_whatever_the_storage_order() -> None:
    messages = [
        stored(1, role="user", content="open a ticket"),
        stored(2, role="assistant", tool_calls=(call("a", "create_ticket"),), status="ok"),
        stored(3, role="assistant", content="Please confirm", kind="confirmation"),
        stored(4, role="user", content="yes"),
        stored(5, role="tool", tool_call_id="a", tool_name="create_ticket", content='{"ticket_id":1}'),
    ]
    chat = to_chat_messages(messages)
    assert [(m.role, m.content) for m in chat] == [
        ("user", "open a ticket"),
        ("assistant", None),
        ("tool", '{"ticket_id":1}'),
        ("user", "yes"),
    ]
    assert chat[1].tool_calls[0].extra == {"extra_content": {"google": {"x": 1}}}


def test_hidden_kinds_and_refused_messages_are_not_sent_to_the_model() -> None:
    messages = [
        stored(1, role="assistant", content="Hi!", kind="greeting"),
        stored(2, role="user", content="x" * 10, status="error"),
        stored(3, role="assistant", content="too long", kind="notice"),
        stored(4, role="assistant", content="sorry", kind="fallback"),
        stored(5, role="assistant", content="A person here", kind="human"),
    ]
    assert [m.content for m in to_chat_messages(messages)] == ["Hi!", "A person here"]


def test_a_call_without_result_gets_an_explicit_one() -> None:
    chat = to_chat_messages([stored(1, role="user", content="q"), stored(2, role="assistant", tool_calls=(call("a"),))])
    assert chat[-1] == ChatMessage(role="tool", tool_call_id="a", name="lookup_order", content=MISSING_RESULT)


def turn(n: int, size: int) -> list[ChatMessage]:
    return [
        ChatMessage(role="user", content=f"q{n} " + "x" * size),
        ChatMessage(role="assistant", tool_calls=(call(f"c{n}"),)),
        ChatMessage(role="tool", tool_call_id=f"c{n}", content="r" * size),
        ChatMessage(role="assistant", content="a" * size),
    ]


def test_fit_drops_oldest_turns_first_and_keeps_calls_with_results() -> None:
    system = ChatMessage(role="system", content="s")
    history = [m for n in range(10) for m in turn(n, 300)]
    per_turn = sum(estimate_tokens(m) for m in turn(0, 300))
    budget = estimate_tokens(system) + per_turn * 3 + 5
    out = fit(system, history, budget=budget)
    assert out[0] is system
    assert out[1].content is not None and out[1].content.startswith("q7 ")
    assert sum(estimate_tokens(m) for m in out) <= budget
    for i, m in enumerate(out):
        if m.tool_calls:
            assert out[i + 1].role == "tool" and out[i + 1].tool_call_id == m.tool_calls[0].id


def test_fit_trims_tool_rounds_of_a_huge_last_turn_but_keeps_its_question() -> None:
    system = ChatMessage(role="system", content="s")
    last = [ChatMessage(role="user", content="where?")]
    for n in range(6):
        last += [
            ChatMessage(role="assistant", tool_calls=(call(f"c{n}"),)),
            ChatMessage(role="tool", tool_call_id=f"c{n}", content="r" * 3000),
        ]
    out = fit(system, last, budget=1500)
    assert out[1].content == "where?"
    assert out[2].tool_calls and out[2].tool_calls[0].id == "c5"
    assert out[3].role == "tool"
    assert len(out) == 4


@pytest.mark.parametrize("size", [0, 10, 10_000])
def test_estimate_is_at_least_a_third_of_the_characters(size: int) -> None:
    assert estimate_tokens(ChatMessage(role="user", content="x" * size)) >= size // 3


def test_new_message_defaults_are_visible_to_the_model() -> None:
    assert NewMessage(role="user").kind == "normal"


def test_cjk_text_counts_about_a_token_a_character() -> None:
    assert estimate_tokens(ChatMessage(role="user", content="注文はどこですか" * 100)) >= 800


def test_converting_the_same_stored_messages_again_gives_the_same_model_messages() -> None:
    messages = [stored(1, role="user", content="where is A1001?"), stored(2, role="assistant", content="On its way.")]
    first = to_chat_messages(messages)
    again = to_chat_messages(messages)
    assert again == first and all(a is b for a, b in zip(again, first, strict=True))
    # A stored message that changed is a new object (they are frozen): it is converted afresh.
    edited = [messages[0], dataclasses.replace(messages[1], content="Delivered today.")]
    assert [m.content for m in to_chat_messages(edited)] == ["where is A1001?", "Delivered today."]


def test_the_conversion_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "CONVERTED_CACHE_SIZE", 4)
    monkeypatch.setattr(history, "_converted", {})
    messages = [stored(i, role="user", content=f"message {i}") for i in range(10)]
    assert [m.content for m in to_chat_messages(messages)] == [f"message {i}" for i in range(10)]
    assert len(history._converted) == 4
