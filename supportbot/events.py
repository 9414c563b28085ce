"""Events the engine emits while a turn runs; each channel decides how to render them.

A turn ends with exactly one ``TurnFinished`` or ``TurnFailed``. When the bot works on the
message, ``TurnStarted`` comes first, then any number of ``TextDelta``/``ToolCallStarted``/
``ToolCallFinished``/``Handoff``. A message that is refused (too long, too many images) gets one
``TextDelta`` with the reason; one sent while a person has the conversation gets only
``TurnFinished`` with empty text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from supportbot._frozen import fast_init
from supportbot.messages import Usage


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class TurnStarted:
    conversation_id: str
    flow: str
    type: Literal["turn_started"] = "turn_started"


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class TextDelta:
    """A piece of the reply. ``seq`` counts the deltas of the turn from 0, so a channel can de-duplicate."""

    text: str
    seq: int
    type: Literal["text_delta"] = "text_delta"


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallStarted:
    call_id: str
    name: str
    arguments: str
    type: Literal["tool_call_started"] = "tool_call_started"


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallFinished:
    call_id: str
    name: str
    result: str
    is_error: bool
    duration_ms: float
    type: Literal["tool_call_finished"] = "tool_call_finished"


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class Handoff:
    """The conversation moved: ``target`` is ``"human"`` or the name of the flow it was transferred to."""

    target: str
    reason: str = ""
    ticket_id: int | None = None
    type: Literal["handoff"] = "handoff"


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class TurnFinished:
    """The turn's reply is complete and stored. ``text`` is the whole reply (empty when a human took over)."""

    text: str
    message_id: int | None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    awaiting_confirmation: bool = False
    type: Literal["turn_finished"] = "turn_finished"


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class TurnFailed:
    """The model could not answer; ``fallback_text`` was stored and must be shown, ``ticket_id`` escalates it."""

    reason: str
    fallback_text: str
    ticket_id: int | None
    message_id: int | None
    type: Literal["turn_failed"] = "turn_failed"


Event = TurnStarted | TextDelta | ToolCallStarted | ToolCallFinished | Handoff | TurnFinished | TurnFailed
