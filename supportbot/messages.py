"""The data a conversation is made of, as the engine, the LLM client and the store share it.

All frozen dataclasses: a message, once made, is never changed in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from supportbot._frozen import fast_init

Role = Literal["system", "user", "assistant", "tool"]


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCall:
    """One function call the model asked for.

    Attributes:
        id: the provider's call id; tool results refer to it.
        name: the tool's name.
        arguments: the arguments exactly as the model sent them (a JSON text, possibly invalid).
        extra: every other field the provider put on the call (Gemini's
            ``extra_content.google.thought_signature``), sent back verbatim in later requests.
    """

    id: str
    name: str
    arguments: str
    extra: dict[str, Any] = field(default_factory=dict)


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class ImagePart:
    """An image attached to a user message, sent to the model as an ``image_url`` part.

    Attributes:
        url: an ``https://`` URL or a ``data:image/...;base64,...`` URL.
        detail: OpenAI's detail hint (``auto``, ``low``, ``high``).
    """

    url: str
    detail: str = "auto"


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class ChatMessage:
    """One message of the chat-completions ``messages`` array.

    Attributes:
        role: system, user, assistant or tool.
        content: the text (None for an assistant message that only calls tools).
        images: image inputs of a user message.
        tool_calls: the calls of an assistant message.
        tool_call_id: for a tool message, the call it answers.
        name: for a tool message, the tool's name.
        extra: provider fields of an assistant message other than content and tool calls
            (e.g. Gemini's ``extra_content`` on a text answer), sent back verbatim.
    """

    role: Role
    content: str | None = None
    images: tuple[ImagePart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """Token counts of one model response.

    ``output_tokens`` includes thinking tokens: Gemini leaves them out of ``completion_tokens``
    but counts them in ``total_tokens``, and bills them as output.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    audio_input_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            audio_input_tokens=self.audio_input_tokens + other.audio_input_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )
