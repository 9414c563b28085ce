"""What the web channel sends: stored messages and engine events as JSON-able dicts (docs/web-protocol.md).

Only what a customer may see leaves the server: no tool calls or results, no system prompt, no
tool arguments; a tool's name comes with a few words for the customer.
"""

from __future__ import annotations

from typing import Any

from supportbot.dispatch import CustomerMessage, LiveTurn, Published, StaffMessage, TurnEvent
from supportbot.events import (
    Handoff,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFailed,
    TurnFinished,
    TurnStarted,
)
from supportbot.store.base import StoredMessage

__all__ = ["HUMAN_TEXT", "frame", "live", "message", "visible"]

HUMAN_TEXT = "I've passed this conversation to our support team. A person will reply here."
_TOOL_LABELS = {
    "lookup_order": "Looking up your order…",
    "create_ticket": "Opening a ticket for the team…",
    "handoff_to_human": "Passing you to a person…",
}


def visible(m: StoredMessage) -> bool:
    """Whether the customer sees this message: their own, and assistant or operator messages with text."""
    if m.role == "user":
        return True
    return m.role == "assistant" and bool(m.content)


def message(m: StoredMessage) -> dict[str, Any]:
    role = "customer" if m.role == "user" else "human" if m.kind == "human" else "bot"
    return {
        "id": m.id,
        "role": role,
        "text": m.content or "",
        "kind": m.kind,
        "images": len(m.images),
        "created_at": m.created_at.isoformat(),
    }


def live(turn: LiveTurn | None) -> dict[str, Any] | None:
    if turn is None:
        return None
    label = tool_label(turn.tool) if turn.tool else None
    return {"turn": turn.turn, "seq": turn.seq, "text": turn.text, "tool": turn.tool, "label": label}


def tool_label(name: str) -> str:
    if name.startswith("transfer_to_"):
        return "Finding the right help for you…"
    return _TOOL_LABELS.get(name, "Working on it…")


def _final(text: str, message_id: int | None, kind: str) -> dict[str, Any]:
    return {"id": message_id, "role": "bot", "text": text, "kind": kind, "images": 0, "created_at": None}


def frame(item: Published) -> dict[str, Any] | None:
    """The wire frame for something published to a conversation; None for what the customer doesn't see."""
    if isinstance(item, CustomerMessage):
        return {
            "type": "message",
            "client_message_id": item.external_id.partition(":")[2] or None,
            "message": {"id": None, "role": "customer", "text": item.text, "kind": "normal", "images": item.images,
                        "created_at": None},
        }  # fmt: skip
    if isinstance(item, StaffMessage):
        # An operator's reply means a person has the conversation; an operator's notice, that the bot has it again.
        status = "human" if item.message.kind == "human" else "bot"
        return {"type": "message", "message": message(item.message), "conversation_status": status}
    if not isinstance(item, TurnEvent):  # pragma: no cover - exhaustive
        return None
    turn, event = item.turn, item.event
    if isinstance(event, TurnStarted):
        return {"type": "turn_started", "turn": turn}
    if isinstance(event, TextDelta):
        return {"type": "delta", "turn": turn, "seq": event.seq, "text": event.text}
    if isinstance(event, ToolCallStarted):
        return {"type": "tool_started", "turn": turn, "name": event.name, "label": tool_label(event.name)}
    if isinstance(event, ToolCallFinished):
        return {"type": "tool_finished", "turn": turn, "name": event.name, "label": tool_label(event.name)}
    if isinstance(event, Handoff):
        if event.target != "human":
            return None  # a transfer between flows is invisible to the customer
        return {"type": "status", "status": "human", "text": HUMAN_TEXT}
    if isinstance(event, TurnFinished):
        kind = "confirmation" if event.awaiting_confirmation else "normal"
        return {"type": "turn_finished", "turn": turn, "message": _final(event.text, event.message_id, kind)}
    if isinstance(event, TurnFailed):
        return {
            "type": "turn_failed",
            "turn": turn,
            "message": _final(event.fallback_text, event.message_id, "fallback"),
        }
    return None  # pragma: no cover - every event type is handled above
