"""Builds one assistant message from streamed chat-completion chunks.

Two shapes of tool-call deltas reach us (protocols notes, sections 1 and 2):

* OpenAI: fragments keyed by ``index``; the first has ``id``, ``type`` and ``name``, the rest
  add pieces of ``arguments``.
* Gemini's compatibility layer: whole calls without ``index`` (or ``index: null``, ``id: ""``),
  several in one delta, with ``extra_content.google.thought_signature`` on the first.

Every key of a tool-call entry we do not interpret (``extra_content`` and whatever a gateway
invents) is kept verbatim in ``ToolCall.extra`` and sent back in later requests: Gemini
refuses a history whose function calls lost their thought signatures.

Two message-level fields are kept in ``ChatMessage.extra`` and sent back the same way:

* ``reasoning_content`` (DeepSeek's thinking models, also vLLM): the pieces joined; DeepSeek
  refuses a history whose assistant tool-call messages lack it. A field that came only as
  ``null`` is kept as ``""``, as DeepSeek expects.
* ``reasoning_details`` (OpenRouter; Gemini 3's thought signatures ride in it as
  ``reasoning.encrypted`` entries): pieces with the same ``type`` and ``index`` are one
  detail, their ``text``, ``summary`` and ``data`` concatenated and every other field taken
  from the first piece that has it; pieces without an ``index`` are details of their own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from supportbot.llm.base import Completion
from supportbot.messages import ChatMessage, ToolCall, Usage

__all__ = ["ChunkAccumulator", "StreamFacts", "usage_from_dict"]

_KNOWN_CALL_KEYS = frozenset({"index", "id", "type", "function"})
_STREAMED_DETAIL_KEYS = ("text", "summary", "data")


@dataclass(kw_only=True, slots=True)
class StreamFacts:
    """What a stream looked like on the wire; filled in by ``ChunkAccumulator`` (``llm check`` reports it).

    Mutable on purpose: the caller passes an empty one in and reads it after the stream.

    Attributes:
        chunks: chunks received.
        indexed_tool_calls: some tool-call delta carried an ``index`` (OpenAI form).
        indexless_tool_calls: some tool-call delta had no ``index`` (Gemini form).
        raw_finish_reason: the finish_reason the provider sent, before the tool_calls override.
        usage_seen: a non-null ``usage`` object arrived.
    """

    chunks: int = 0
    indexed_tool_calls: bool = False
    indexless_tool_calls: bool = False
    raw_finish_reason: str | None = None
    usage_seen: bool = False


class _PartialCall:
    __slots__ = ("arguments", "extra", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []
        self.extra: dict[str, Any] = {}


def usage_from_dict(raw: Mapping[str, Any]) -> Usage:
    """Converts a chat-completions ``usage`` object.

    Output tokens are ``max(completion_tokens, total_tokens - prompt_tokens)``: Gemini leaves
    thinking tokens out of ``completion_tokens`` but counts (and bills) them in the total.

    Args:
        raw: the ``usage`` object as received.

    Returns:
        The token counts; missing fields count as zero.
    """
    prompt = _int(raw.get("prompt_tokens"))
    completion = _int(raw.get("completion_tokens"))
    total = raw.get("total_tokens")
    output = completion if total is None else max(completion, _int(total) - prompt)
    details = raw.get("completion_tokens_details")
    reasoning = _int(details.get("reasoning_tokens")) if isinstance(details, dict) else 0
    prompt_details = raw.get("prompt_tokens_details")
    audio = _int(prompt_details.get("audio_tokens")) if isinstance(prompt_details, dict) else 0
    return Usage(input_tokens=prompt, output_tokens=output, audio_input_tokens=audio, reasoning_tokens=reasoning)


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


class ChunkAccumulator:
    """Folds the chunks of one streamed response into a ``Completion``.

    Only choice 0 is read (we never ask for ``n > 1``). Feed every decoded chunk to ``add``;
    it returns the chunk's answer text so the caller can stream it on.

    Args:
        facts: optional record of what the stream looked like on the wire.
    """

    __slots__ = (
        "_by_id",
        "_by_index",
        "_calls",
        "_choices",
        "_details",
        "_details_by_key",
        "_extra",
        "_facts",
        "_finish_reason",
        "_last_delta_calls",
        "_model",
        "_reasoning",
        "_text",
        "_usage",
    )

    def __init__(self, facts: StreamFacts | None = None) -> None:
        self._text: list[str] = []
        self._calls: list[_PartialCall] = []
        self._by_index: dict[Any, _PartialCall] = {}
        self._by_id: dict[str, _PartialCall] = {}
        self._last_delta_calls: list[_PartialCall] = []
        self._extra: dict[str, Any] = {}
        self._reasoning: list[str] | None = None  # DeepSeek's reasoning_content, once the field was seen
        self._details: list[dict[str, Any]] = []  # OpenRouter's reasoning_details, merged
        self._details_by_key: dict[tuple[Any, Any], dict[str, Any]] = {}
        self._choices = False
        self._finish_reason: str | None = None
        self._usage: Mapping[str, Any] | None = None
        self._model = ""
        self._facts = facts

    @property
    def finished(self) -> bool:
        """Whether a ``finish_reason`` arrived (a stream that ends without one was cut short)."""
        return self._finish_reason is not None

    def add(self, chunk: Mapping[str, Any]) -> str | None:
        """Takes one decoded chunk.

        Args:
            chunk: a ``chat.completion.chunk`` object.

        Returns:
            The answer text this chunk adds, or None.
        """
        usage = chunk.get("usage")
        if usage and isinstance(usage, dict):  # a usage of another shape is left out, not fatal
            self._usage = usage  # last wins: Gemini repeats the cumulative count in every chunk
        model = chunk.get("model")
        if model:
            self._model = model
        if self._facts is not None:
            self._facts.chunks += 1
        choices = chunk.get("choices")
        if not choices:
            return None
        choice = choices[0]
        self._choices = True
        finish = choice.get("finish_reason")
        if finish:
            self._finish_reason = finish
        delta = choice.get("delta")
        if not delta:
            return None
        extra_content = delta.get("extra_content")
        if extra_content is not None:
            # A thought signature may ride on a text delta or come alone in a metadata-only delta.
            self._extra = {"extra_content": extra_content}
        if "reasoning_content" in delta:
            if self._reasoning is None:
                self._reasoning = []
            piece = delta["reasoning_content"]
            if isinstance(piece, str) and piece:
                self._reasoning.append(piece)
        details = delta.get("reasoning_details")
        if details and isinstance(details, list):
            self._add_details(details)
        tool_calls = delta.get("tool_calls")
        if tool_calls:
            self._add_tool_calls(tool_calls)
        text = delta.get("content")
        if not text:
            text = delta.get("refusal")  # a refusal is shown to the customer like an answer
            if not text:
                return None
        if type(text) is not str:
            if not isinstance(text, list):
                raise TypeError(f"content is a {type(text).__name__}")
            # Some servers send content as a list of parts; only the text parts are the answer.
            text = "".join(p.get("text") or "" for p in text if isinstance(p, dict) and p.get("type") == "text")
            if not text:
                return None
        self._text.append(text)
        return text

    def _add_details(self, pieces: list[Any]) -> None:
        for piece in pieces:
            if not isinstance(piece, dict):
                continue
            index = piece.get("index")
            key = (piece.get("type"), index)
            detail = self._details_by_key.get(key) if index is not None else None
            if detail is None:
                detail = dict(piece)
                self._details.append(detail)
                if index is not None:
                    self._details_by_key[key] = detail
                continue
            for name, value in piece.items():
                if value is None:
                    continue
                old = detail.get(name)
                if name in _STREAMED_DETAIL_KEYS and isinstance(value, str) and isinstance(old, str):
                    detail[name] = old + value
                elif old is None:
                    detail[name] = value

    def _add_tool_calls(self, entries: list[Any]) -> None:
        facts = self._facts
        current: list[_PartialCall] = []
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            index = entry.get("index")
            call_id = entry.get("id") or ""
            function = entry.get("function")
            if not isinstance(function, dict):
                function = {}
            name = function.get("name") or ""
            if index is not None:
                if facts is not None:
                    facts.indexed_tool_calls = True
                call = self._by_index.get(index)
                if call is None:
                    call = self._new_call()
                    self._by_index[index] = call
            else:
                if facts is not None:
                    facts.indexless_tool_calls = True
                call = self._indexless_call(position, call_id, name)
            current.append(call)
            if call_id and not call.id:
                call.id = call_id
                self._by_id[call_id] = call
            if name and not call.name:
                call.name = name
            arguments = function.get("arguments")
            if arguments:
                # Some gateways send the arguments as an object rather than a JSON text.
                call.arguments.append(arguments if isinstance(arguments, str) else json.dumps(arguments))
            if not _KNOWN_CALL_KEYS.issuperset(entry):
                for key, value in entry.items():
                    if key not in _KNOWN_CALL_KEYS:
                        call.extra[key] = value
        self._last_delta_calls = current

    def _indexless_call(self, position: int, call_id: str, name: str) -> _PartialCall:
        if call_id and call_id in self._by_id:
            return self._by_id[call_id]  # a gateway repeating the id on every fragment
        if call_id or name:
            # A new id or name starts a new call: keying every index-less call to one slot would
            # glue two calls' JSON arguments together.
            return self._new_call()
        # A bare fragment continues the call at the same position of the previous delta.
        previous = self._last_delta_calls
        if position < len(previous):
            return previous[position]
        return self._calls[-1] if self._calls else self._new_call()

    def _new_call(self) -> _PartialCall:
        call = _PartialCall()
        self._calls.append(call)
        return call

    def completion(self) -> Completion:
        """Builds the result once the stream has ended.

        Returns:
            The assistant message with its tool calls; ``finish_reason`` is ``tool_calls``
            whenever there are tool calls (Gemini's streams say ``stop`` there), else the
            provider's value, ``stop`` if it sent none.
        """
        tool_calls = tuple(
            # A call without an id (older Gemini sends "") gets one that is unique for good: results,
            # confirmations and at-most-once claims are all keyed by it.
            ToolCall(
                id=call.id or f"call_{uuid.uuid4().hex}",
                name=call.name,
                arguments="".join(call.arguments),
                extra=call.extra,
            )
            for call in self._calls
        )
        text = "".join(self._text)
        extra = self._extra
        if self._reasoning is not None or self._details:
            extra = dict(extra)
            if self._reasoning is not None:
                extra["reasoning_content"] = "".join(self._reasoning)
            if self._details:
                extra["reasoning_details"] = self._details
        message = ChatMessage(
            role="assistant",
            content=text if text or not tool_calls else None,
            tool_calls=tool_calls,
            extra=extra,
        )
        if self._facts is not None:
            self._facts.raw_finish_reason = self._finish_reason
            self._facts.usage_seen = self._usage is not None
        finish = "tool_calls" if tool_calls else self._finish_reason or "stop"
        usage = usage_from_dict(self._usage) if self._usage is not None else Usage()
        return Completion(
            message=message,
            finish_reason=finish,
            usage=usage,
            model=self._model,
            raw_finish_reason=self._finish_reason,
            choices=self._choices,
        )
