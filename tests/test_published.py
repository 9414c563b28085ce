"""The codec of the dispatcher's published items: every item and event type survives JSON unchanged."""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from typing import Any

import pytest

from supportbot import events
from supportbot.channels import Reply
from supportbot.dispatch import CustomerMessage, Delivered, Published, TurnEvent
from supportbot.messages import Usage
from supportbot.published import EVENT_TYPES, decode_published, encode_published

EVENTS: list[events.Event] = [
    events.TurnStarted(conversation_id="c-9f2e", flow="returns"),
    events.TextDelta(text="Your order A1001 shipped on Monday — ", seq=0),
    events.TextDelta(text="tracking: 1Z999AA10123456784 ✓", seq=17),
    events.ToolCallStarted(call_id="call_a1", name="lookup_order", arguments='{"order_id": "A1001"}'),
    events.ToolCallFinished(
        call_id="call_a1", name="lookup_order", result='{"status": "shipped"}', is_error=False, duration_ms=41.5
    ),
    events.ToolCallFinished(call_id="call_b2", name="refund", result="order not found", is_error=True, duration_ms=3.0),
    events.Handoff(target="human", reason="customer asked for a person", ticket_id=42),
    events.Handoff(target="billing"),
    events.TurnFinished(
        text="Your order A1001 shipped on Monday.",
        message_id=1234,
        usage=Usage(input_tokens=812, output_tokens=64, audio_input_tokens=0, reasoning_tokens=12),
        cost_usd=0.00123,
        latency_ms=950.25,
        awaiting_confirmation=True,
    ),
    events.TurnFinished(text="", message_id=None),
    events.TurnFailed(
        reason="model endpoint answered 503 three times",
        fallback_text="Sorry, I can't answer right now; a person will get back to you.",
        ticket_id=43,
        message_id=1235,
    ),
    events.TurnFailed(reason="timeout", fallback_text="Sorry.", ticket_id=None, message_id=None),
]

ITEMS: list[Published] = [
    *(TurnEvent(turn=5678, event=event) for event in EVENTS),
    CustomerMessage(turn=5679, channel="web", external_id="w-6c1d", text="Where is my order? 📦", images=1),
    Delivered(
        reply=Reply(
            outbox_id=77,
            channel="slack",
            kind="operator",
            text="Hi Ana, I refunded the shipping.",
            attempt=2,
            conversation_id="c-9f2e",
            message_id=1240,
            turn=5679,
            key="T01:C02:1700000000.000100",
            address={"team": "T01", "channel": "C02", "thread_ts": "1700000000.000100"},
            author="maria",
        )
    ),
    Delivered(
        reply=Reply(
            outbox_id=78,
            channel="email",
            kind="ticket",
            text="New ticket #43",
            data={"ticket_id": 43, "subject": "Refund", "customer": "ana@example.com", "url": "/admin/tickets/43"},
        )
    ),
    Delivered(reply=Reply(outbox_id=79, channel="web", kind="notice", text="A person has joined.")),
]


def _classes_of(module: Any) -> set[type]:
    return {
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__ and dataclasses.is_dataclass(cls)
    }


def test_every_event_class_is_in_the_codec_and_in_these_tests() -> None:
    # A new event class in events.py fails here until the codec and the table above know it.
    defined = _classes_of(events)
    assert set(typing.get_args(events.Event)) == defined
    assert set(EVENT_TYPES.values()) == defined
    assert {type(event) for event in EVENTS} == defined


def test_every_published_kind_is_in_these_tests() -> None:
    assert {type(item) for item in ITEMS} == set(typing.get_args(Published))


@pytest.mark.parametrize(
    "item", ITEMS, ids=lambda item: getattr(getattr(item, "event", None), "type", type(item).__name__)
)
def test_an_item_survives_json(item: Published) -> None:
    encoded = encode_published("c-9f2e", item)
    wire = json.loads(json.dumps(encoded))  # only JSON types: a tuple or a dataclass would not survive unchanged
    assert wire == encoded
    conversation_id, decoded = decode_published(wire)
    assert conversation_id == "c-9f2e"
    assert decoded == item and type(decoded) is type(item)
    if isinstance(item, TurnEvent) and isinstance(item.event, events.TurnFinished):
        assert isinstance(decoded, TurnEvent) and isinstance(decoded.event, events.TurnFinished)
        assert type(decoded.event.usage) is Usage


def test_keys_a_newer_worker_added_are_ignored() -> None:
    encoded = encode_published("c1", TurnEvent(turn=1, event=events.TextDelta(text="hi", seq=0)))
    encoded["event"]["colour"] = "blue"
    encoded["trace"] = "abc"
    assert decode_published(encoded) == ("c1", TurnEvent(turn=1, event=events.TextDelta(text="hi", seq=0)))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"conversation_id": "c1", "item": "telepathy"}, "unknown published item kind 'telepathy'"),
        (
            {"conversation_id": "c1", "item": "turn_event", "turn": 1, "event": {"type": "mind_read"}},
            "unknown event type 'mind_read'; this worker knows handoff, text_delta",
        ),
        ({"conversation_id": "c1", "item": "turn_event", "turn": 1, "event": {"type": "text_delta"}}, "TypeError"),
        ({"item": "delivered"}, "KeyError"),
    ],
)
def test_what_is_not_an_item_is_a_value_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_published(data)


def test_encoding_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cannot encode a str"):
        encode_published("c1", "hello")  # type: ignore[arg-type]
