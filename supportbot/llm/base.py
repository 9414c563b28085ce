"""What the engine needs from a model: the ``LLM`` protocol and the data crossing it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from supportbot._frozen import fast_init
from supportbot.hints import DemoHint
from supportbot.messages import ChatMessage, Usage


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class LLMRequest:
    """One chat-completions request.

    Attributes:
        messages: the conversation, system prompt first.
        tools: OpenAI function-tool definitions (``{"type": "function", "function": {...}}``).
        model, temperature, top_p, max_tokens, reasoning_effort: sampling settings;
            None leaves a field out of the request.
        json_mode: ask for ``response_format: {"type": "json_object"}``.
        hints: the flow's ``demo:`` rules, for offline models only; never sent to a provider.
    """

    messages: Sequence[ChatMessage]
    tools: Sequence[dict[str, Any]] = ()
    model: str
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    reasoning_effort: str | None = None
    json_mode: bool = False
    hints: Sequence[DemoHint] = ()


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class TextChunk:
    """A piece of answer text, as it streams."""

    text: str


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class Completion:
    """The end of one model response.

    Attributes:
        message: the whole assistant message (text, tool calls with their provider extras).
        finish_reason: ``tool_calls`` whenever the message has tool calls (Gemini streams say
            ``stop`` there), else the provider's value (``stop``, ``length``, ``content_filter``...).
        usage: token counts (last value seen wins).
        model: the model that answered, as the provider named it.
        raw_finish_reason: the finish_reason exactly as the provider sent it; None when it sent none.
        choices: whether the answer had any choice at all (some providers answer ``choices: []``).
    """

    message: ChatMessage
    finish_reason: str
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    raw_finish_reason: str | None = None
    choices: bool = True


StreamEvent = TextChunk | Completion


class LLM(Protocol):
    """A chat model. ``stream`` yields text chunks as they arrive, then exactly one ``Completion``.

    Implementations raise ``supportbot.errors.LLMError`` subclasses; they retry by themselves
    only while nothing has been yielded yet.
    """

    def stream(self, request: LLMRequest) -> AsyncIterator[StreamEvent]: ...

    async def aclose(self) -> None: ...
