"""The dispatcher's published items as JSON-able dicts, for the bus between workers.

``encode_published`` turns a ``TurnEvent``, ``CustomerMessage`` or ``Delivered`` of a conversation
into a dict of JSON types; ``decode_published`` turns it back into the same value. Every event
class of ``supportbot.events`` is covered by its ``type`` tag; their fields are JSON scalars or
``Usage``. Unknown keys are ignored (a newer worker may send more during a rolling deploy);
an unknown item kind or event type is a ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from supportbot.channels import Reply
from supportbot.dispatch import CustomerMessage, Delivered, Published, TurnEvent
from supportbot.events import Event
from supportbot.messages import Usage

__all__ = ["EVENT_TYPES", "decode_published", "encode_published"]

_T = TypeVar("_T")


def _tag(cls: type[Event]) -> str:
    tag = next(field.default for field in dataclasses.fields(cls) if field.name == "type")
    assert isinstance(tag, str), cls
    return tag


EVENT_TYPES: dict[str, type[Event]] = {_tag(cls): cls for cls in typing.get_args(Event)}
"""Each event class of ``supportbot.events`` by its ``type`` tag."""

_USAGE_FIELDS = {
    cls: frozenset(name for name, hint in typing.get_type_hints(cls).items() if hint is Usage)
    for cls in EVENT_TYPES.values()
}
"""The fields of each event class that hold a ``Usage`` (written as a dict)."""

_SCALARS = (str, int, float, bool, type(None))


def encode_published(conversation_id: str, item: Published) -> dict[str, Any]:
    """``item`` of conversation ``conversation_id`` as a dict of JSON types.

    Raises:
        TypeError: ``item`` is not a published item, or an event has a field the codec cannot write.
    """
    if isinstance(item, TurnEvent):
        return {
            "conversation_id": conversation_id,
            "item": "turn_event",
            "turn": item.turn,
            "event": _encode_event(item.event),
        }
    if isinstance(item, CustomerMessage):
        return {"conversation_id": conversation_id, "item": "customer_message", **_fields(item)}
    if isinstance(item, Delivered):
        reply = _fields(item.reply)
        reply["address"], reply["data"] = dict(item.reply.address), dict(item.reply.data)
        return {"conversation_id": conversation_id, "item": "delivered", "reply": reply}
    raise TypeError(f"cannot encode a {type(item).__name__}: publish a TurnEvent, CustomerMessage or Delivered")


def decode_published(data: Mapping[str, Any]) -> tuple[str, Published]:
    """The conversation id and item that ``encode_published`` wrote.

    Raises:
        ValueError: ``data`` is not an encoded item (the message says what is wrong with it).
    """
    try:
        conversation_id = data["conversation_id"]
        kind = data["item"]
        if kind == "turn_event":
            return conversation_id, TurnEvent(turn=data["turn"], event=_decode_event(data["event"]))
        if kind == "customer_message":
            return conversation_id, _build(CustomerMessage, data)
        if kind == "delivered":
            reply = dict(data["reply"])
            reply["address"], reply["data"] = dict(reply.get("address") or {}), dict(reply.get("data") or {})
            return conversation_id, Delivered(reply=_build(Reply, reply))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not an encoded published item ({type(exc).__name__}: {exc}): {dict(data)!r:.200}") from None
    raise ValueError(f"unknown published item kind {kind!r}; expected turn_event, customer_message or delivered")


def _fields(value: Any) -> dict[str, Any]:
    return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}


def _build(cls: type[_T], data: Mapping[str, Any]) -> _T:
    """``cls`` from the keys of ``data`` that are its fields (others are ignored)."""
    names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{name: value for name, value in data.items() if name in names})


def _encode_event(event: Event) -> dict[str, Any]:
    encoded: dict[str, Any] = {}
    for name, value in _fields(event).items():
        if isinstance(value, Usage):
            encoded[name] = _fields(value)
        elif isinstance(value, _SCALARS):
            encoded[name] = value
        else:
            raise TypeError(
                f"{type(event).__name__}.{name} is a {type(value).__name__}, which supportbot.published cannot "
                "encode; add it to _encode_event and _decode_event"
            )
    return encoded


def _decode_event(data: Mapping[str, Any]) -> Event:
    tag = data["type"]
    cls = EVENT_TYPES.get(tag)
    if cls is None:
        raise ValueError(f"unknown event type {tag!r}; this worker knows {', '.join(sorted(EVENT_TYPES))}")
    values = dict(data)
    for name in _USAGE_FIELDS[cls]:
        if name in values:
            values[name] = _build(Usage, values[name])
    return _build(cls, values)
