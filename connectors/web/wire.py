"""What the web channel sends: stored messages and engine events as JSON-able dicts (docs/web-protocol.md).

Only what a customer may see leaves the server: no tool calls or results, no system prompt, no
tool arguments; a tool's name comes with a few words for the customer. A confirmation question
comes with the answers to offer (``quick_replies``). Words for operators (how to connect a model)
stay in the server's log; the customer reads ``unavailable_text``.
"""

from __future__ import annotations

from typing import Any

from supportbot.channels import Reply
from supportbot.dispatch import CustomerMessage, Delivered, LiveTurn, Published, TurnEvent
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

__all__ = ["QUICK_REPLIES", "answered", "delivered", "frame", "live", "message", "unavailable_text", "visible"]

QUICK_REPLIES = ("Yes", "No")
"""The answers offered under a confirmation question; "Yes" is a yes to ``supportbot.confirm.is_yes``."""
UNAVAILABLE_TEXT = "The assistant is not available right now. Please try again later."
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
    shown = {
        "id": m.id,
        "role": role,
        "text": m.content or "",
        "kind": m.kind,
        "images": len(m.images),
        "created_at": m.created_at.isoformat(),
    }
    return _offer(shown)


def _offer(shown: dict[str, Any]) -> dict[str, Any]:
    """A confirmation question carries the answers to offer as buttons."""
    if shown["kind"] == "confirmation":
        shown["quick_replies"] = list(QUICK_REPLIES)
    return shown


def answered(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history's messages with the quick replies of questions the customer already answered removed."""
    later_customer = False
    for m in reversed(shown):
        if m["role"] == "customer":
            later_customer = True
        elif later_customer:
            m.pop("quick_replies", None)
    return shown


def unavailable_text(company: dict[str, Any]) -> str:
    """What a customer reads while no model is connected (the how-to is for the operator's console and log)."""
    email = company.get("support_email")
    return f"{UNAVAILABLE_TEXT} You can also write to us at {email}." if email else UNAVAILABLE_TEXT


def live(turn: LiveTurn | None) -> dict[str, Any] | None:
    if turn is None:
        return None
    label = tool_label(turn.tool) if turn.tool else None
    return {"turn": turn.turn, "seq": turn.seq, "text": turn.text, "tool": turn.tool, "label": label}


def tool_label(name: str) -> str:
    if name.startswith("transfer_to_"):
        return "Finding the right help for you…"
    return _TOOL_LABELS.get(name, "Working on it…")


# How a delivered reply shows: its role and its message kind (as the history gives it).
_SHOWN_AS = {
    "answer": ("bot", "normal"),
    "confirmation": ("bot", "confirmation"),
    "fallback": ("bot", "fallback"),
    "notice": ("bot", "notice"),
    "operator": ("human", "human"),
    "handback": ("bot", "notice"),
}


def delivered(reply: Reply) -> dict[str, Any] | None:
    """The frame of a reply from the outbox. An operator's reply means a person has the conversation; the
    hand-back notice, that the bot has it again."""
    role, kind = _SHOWN_AS.get(reply.kind, ("bot", "normal"))
    shown = _offer({"id": reply.message_id, "role": role, "text": reply.text, "kind": kind, "images": 0,
                    "created_at": None})  # fmt: skip
    frame: dict[str, Any] = {"type": "message", "message": shown}
    if reply.kind in ("operator", "handback"):
        frame["conversation_status"] = "human" if reply.kind == "operator" else "bot"
    return frame


def _final(text: str, message_id: int | None, kind: str) -> dict[str, Any]:
    return _offer({"id": message_id, "role": "bot", "text": text, "kind": kind, "images": 0, "created_at": None})


def frame(item: Published) -> dict[str, Any] | None:
    """The wire frame for something published to a conversation; None for what the customer doesn't see."""
    if isinstance(item, CustomerMessage):
        return {
            "type": "message",
            "client_message_id": item.external_id.partition(":")[2] or None,
            "message": {"id": None, "role": "customer", "text": item.text, "kind": "normal", "images": item.images,
                        "created_at": None},
        }  # fmt: skip
    if isinstance(item, Delivered):
        return delivered(item.reply)
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
        # No words of its own: the turn's reply (or the engine's notice) says it, in the transcript
        # a reload shows too; a second line here would be a twin that vanishes on reload.
        return {"type": "status", "status": "human"}
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
