"""The model of a flow test: a turn's ``model:`` script, or else the demo model (or, with ``--live``, the real one).

``CaseModel`` implements ``supportbot.llm.base.LLM``. Each request of a scripted turn takes the
script's next entry: ``{reply: TEXT}`` streams the text, ``{call: TOOL, args: {...}}`` and
``{calls: [...]}`` answer with tool calls, ``{error: MESSAGE}`` fails as a provider would. It keeps
the requests of the turn, so a test can check the system prompt the engine sent, and notes when
the engine asked more often than the script answers, or less.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence

from supportbot.errors import LLMError
from supportbot.flowtest.spec import ModelStep
from supportbot.llm.base import LLM, Completion, LLMRequest, StreamEvent, TextChunk
from supportbot.messages import ChatMessage, ToolCall, Usage

MODEL_NAME = "scripted"


class ScriptExhausted(LLMError):
    """The engine asked the model once more than the turn's script answers (the turn gets the fallback)."""


def ordinal(number: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ``11th``, ``22nd``."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def entries(number: int) -> str:
    """``1 entry``, ``2 entries``."""
    return f"{number} {'entry' if number == 1 else 'entries'}"


def times(number: int) -> str:
    """``once``, ``twice``, ``3 times``."""
    return {0: "not at all", 1: "once", 2: "twice"}.get(number, f"{number} times")


class CaseModel:
    """The model one case talks to.

    Args:
        fallback: answers turns without a script (the demo model, or the real one with ``--live``).
        scripted: whether turn scripts are followed (false with ``--live``: every turn goes to ``fallback``).
    """

    def __init__(self, *, fallback: LLM, scripted: bool = True) -> None:
        self._fallback = fallback
        self._scripted = scripted
        self._script: Sequence[ModelStep] | None = None
        self._turn = 0
        self._used = 0
        self._ids = 0
        self.requests: list[LLMRequest] = []
        """The requests of the current turn, in order."""
        self.exhausted: str | None = None
        """Set when the engine asked more often than the current turn's script answers: what to say."""

    def begin_turn(self, number: int, script: Sequence[ModelStep] | None) -> bool:
        """Start turn ``number`` (1-based) with its script; returns whether the turn is scripted."""
        self._turn = number
        self._script = script if self._scripted else None
        self._used = 0
        self.requests = []
        self.exhausted = None
        return self._script is not None

    def unused(self) -> str | None:
        """After a turn: what to say when the script has entries the engine never asked for, else None."""
        script = self._script
        if script is None or self.exhausted is not None or self._used >= len(script):
            return None
        said = f"has {entries(len(script))} but the engine asked the model only {times(self._used)}"
        if not self._used:
            return (
                f"has {entries(len(script))} but the engine did not ask the model in this turn (a person has the "
                "conversation, or the message was refused); remove model:"
            )
        if script[self._used - 1].reply is not None:
            why = f"the {ordinal(self._used)} is a reply:, which ends the turn"
        else:
            why = f"the turn ended after the {ordinal(self._used)} (a confirmation question or a handoff ends it)"
        return f"{said}: {why}; remove the entries after it, or move them to the next turn"

    @property
    def used(self) -> int:
        """How many script entries the current turn used."""
        return self._used

    async def aclose(self) -> None:
        return None  # the fallback belongs to the runner

    async def stream(self, request: LLMRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        if self._script is None:
            async for event in self._fallback.stream(request):
                yield event
            return
        if self._used >= len(self._script):
            asked = self._used + 1
            self.exhausted = (
                f"the engine asked the model a {ordinal(asked)} time but model: has {entries(len(self._script))}; "
                "add a reply:"
            )
            raise ScriptExhausted(self.exhausted)
        step = self._script[self._used]
        self._used += 1
        if step.error is not None:
            raise LLMError(step.error)
        if step.reply is not None:
            for piece in re.findall(r"\S+\s*|\s+", step.reply):
                yield TextChunk(text=piece)
            message = ChatMessage(role="assistant", content=step.reply)
            yield Completion(message=message, finish_reason="stop", usage=_usage(request, step, step.reply),
                             model=MODEL_NAME)  # fmt: skip
            return
        calls = [(step.call, step.args)] if step.call is not None else [(c.call, c.args) for c in step.calls or ()]
        tool_calls = tuple(self._call(name, args) for name, args in calls)
        said = "".join(call.name + call.arguments for call in tool_calls)
        yield Completion(
            message=ChatMessage(role="assistant", tool_calls=tool_calls),
            finish_reason="tool_calls",
            usage=_usage(request, step, said),
            model=MODEL_NAME,
        )

    def _call(self, name: str, args: object) -> ToolCall:
        self._ids += 1
        return ToolCall(
            id=f"script_{self._ids}", name=name, arguments=json.dumps(args, ensure_ascii=False, default=str)
        )


def _usage(request: LLMRequest, step: ModelStep, said: str) -> Usage:
    """The step's ``usage:``, a count left out estimated as characters / 4 (the request's, the response's)."""
    given = step.usage
    estimate_in = sum(len(m.content or "") for m in request.messages) // 4
    return Usage(
        input_tokens=given.input_tokens if given and given.input_tokens is not None else estimate_in,
        output_tokens=given.output_tokens if given and given.output_tokens is not None else len(said) // 4,
    )
