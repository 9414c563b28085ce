"""From stored messages to the ``messages`` array a model sees, fitted into the context window.

Rules:
- Only what the model should see goes in: confirmation prompts, fallback replies, notices and
  refused customer messages are for the customer only.
- Every tool call is followed by its result, whatever order the results were stored in (a call
  that waited for the customer's yes gets its result after the customer's reply was stored).
  A call whose result is missing (a crash mid-tool) gets an explicit "no result" result, so the
  request stays valid.
- The oldest turns are dropped first; a tool call is never separated from its result.
"""

from __future__ import annotations

from collections.abc import Sequence

from supportbot._json import dumps_compact
from supportbot.messages import ChatMessage
from supportbot.store.base import StoredMessage

_HIDDEN_KINDS = frozenset({"confirmation", "fallback", "notice"})
_IMAGE_TOKENS = 1100  # OpenAI high-detail worst case; Gemini charges 258 per tile, so this over-counts
_MESSAGE_OVERHEAD = 4
MISSING_RESULT = "No result: the tool call was interrupted before it finished."
CONVERTED_CACHE_SIZE = 4096
"""Stored messages whose model message is kept (``_model_message``)."""

# id(stored message) -> (that message, its model message). The stores hand out the same frozen
# ``StoredMessage`` objects turn after turn (the memory store keeps them, the SQLite hot path
# keeps them by row), and each turn converts its whole history again. The reference held here
# keeps the id from being reused. Oldest entries go first once ``CONVERTED_CACHE_SIZE`` are kept.
_converted: dict[int, tuple[StoredMessage, ChatMessage]] = {}


def _model_message(m: StoredMessage) -> ChatMessage:
    """The user or assistant model message of a stored one (which ``to_chat_messages`` keeps)."""
    entry = _converted.get(id(m))
    if entry is not None and entry[0] is m:
        return entry[1]
    if m.role == "user":
        message = ChatMessage(role="user", content=m.content or "", images=m.images)
    else:
        message = ChatMessage(role="assistant", content=m.content, tool_calls=m.tool_calls, extra=m.extra)
    if len(_converted) >= CONVERTED_CACHE_SIZE:
        del _converted[next(iter(_converted))]
    _converted[id(m)] = (m, message)
    return message


def to_chat_messages(stored: Sequence[StoredMessage]) -> list[ChatMessage]:
    """Turn a conversation's stored messages into model messages, tool results placed after their calls."""
    results: dict[str, StoredMessage] = {}
    for m in stored:
        if m.role == "tool" and m.tool_call_id is not None and m.status != "pending":
            results[m.tool_call_id] = m
    out: list[ChatMessage] = []
    for m in stored:
        if m.kind in _HIDDEN_KINDS or m.role == "tool":
            continue
        if m.role == "user":
            if m.status == "error":
                continue
            out.append(_model_message(m))
        elif m.role == "assistant":
            if not m.tool_calls and not m.content:
                continue
            out.append(_model_message(m))
            for call in m.tool_calls:
                result = results.get(call.id)
                out.append(
                    ChatMessage(
                        role="tool",
                        tool_call_id=call.id,
                        name=call.name,
                        content=result.content if result is not None and result.content is not None else MISSING_RESULT,
                    )
                )
    return out


def estimate_tokens(message: ChatMessage) -> int:
    """A deliberately high estimate so a request never overflows the window: about 3 characters a
    token for ASCII text, and 3 UTF-8 bytes a token otherwise (Chinese or Japanese text runs to
    about a token per character, which is 3 bytes)."""
    content = message.content or ""
    chars = len(content) if content.isascii() else len(content.encode("utf-8", "replace"))
    for call in message.tool_calls:
        chars += len(call.name) + len(call.arguments) + 24
    if message.extra:
        # Provider extras go back with the message: DeepSeek's reasoning_content can be long.
        chars += len(dumps_compact(message.extra))
    return chars // 3 + _MESSAGE_OVERHEAD + _IMAGE_TOKENS * len(message.images)


def _turns(messages: Sequence[ChatMessage]) -> list[list[ChatMessage]]:
    """Split at each user message: a turn is a user message and everything the bot did after it."""
    turns: list[list[ChatMessage]] = []
    for m in messages:
        if m.role == "user" or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    return turns


def _blocks(turn: list[ChatMessage]) -> list[list[ChatMessage]]:
    """Split a turn into pieces that can be dropped alone: an assistant message with its tool results."""
    blocks: list[list[ChatMessage]] = []
    for m in turn:
        if m.role == "tool" and blocks:
            blocks[-1].append(m)
        else:
            blocks.append([m])
    return blocks


def fit(system: ChatMessage, messages: Sequence[ChatMessage], *, budget: int) -> list[ChatMessage]:
    """The system prompt and as much recent history as fits in ``budget`` tokens.

    Whole turns go first, oldest first. If the newest turn alone is still too large, its oldest
    tool rounds go next (its user message stays). The result never starts with a tool result.
    """
    remaining = budget - estimate_tokens(system)
    if sum(map(estimate_tokens, messages)) <= remaining:
        return [system, *messages]  # the usual case, with no need to split into turns
    turns = _turns(messages)
    sizes = [sum(estimate_tokens(m) for m in t) for t in turns]
    total = sum(sizes)
    start = 0
    while total > remaining and start < len(turns) - 1:
        total -= sizes[start]
        start += 1
    kept = turns[start:]
    if total > remaining and kept:
        last = kept[-1]
        head, blocks = ([last[0]], _blocks(last[1:])) if last[0].role == "user" else ([], _blocks(last))
        block_sizes = [sum(estimate_tokens(m) for m in b) for b in blocks]
        size = sum(block_sizes) + sum(estimate_tokens(m) for m in head)
        i = 0
        while size > remaining and i < len(blocks) - 1:
            size -= block_sizes[i]
            i += 1
        kept = [head + [m for b in blocks[i:] for m in b]]
    out = [system]
    for t in kept:
        out.extend(t)
    return out
