"""What both dialect backends (``sqlite.py``, ``postgres.py``) share: column lists, the statements written
once for both databases, and how rows become records.

Values are cleaned and encoded the way the SQLAlchemy column types do it (``models``), so rows a backend
writes read back identically through SQLAlchemy and vice versa.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from supportbot.messages import ImagePart, ToolCall, Usage
from supportbot.store.base import Conversation, Customer, NewMessage, StoredMessage
from supportbot.store.models import clean_text, json_dumps

CUSTOMER_COLS = "id, email, name, external_id, verified, created_at"
CONV_COLS = (
    "id, customer_id, channel, flow, status, turns, input_tokens, output_tokens, cost_usd, created_at, updated_at"
)
MSG_COLS = (
    "id, conversation_id, created_at, role, content, images, tool_calls, tool_call_id, tool_name, extra, kind, "
    "status, flow, model, input_tokens, output_tokens, audio_input_tokens, reasoning_tokens, cost_usd, latency_ms, "
    "author"
)
INSERT_COLS = (
    "conversation_id, role, content, images, tool_calls, tool_call_id, tool_name, extra, kind, status, flow, model, "
    "input_tokens, output_tokens, audio_input_tokens, reasoning_tokens, cost_usd, latency_ms, author, created_at"
)


def clean(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


def message_values(m: NewMessage) -> tuple[Any, ...]:
    """The columns of a new message from ``role`` to ``author``, cleaned and JSON-encoded."""
    usage = m.usage
    return (
        m.role,
        clean(m.content),
        # Empty lists/dicts are stored as NULL: nothing to serialize or parse for most messages.
        json_dumps([{"url": i.url, "detail": i.detail} for i in m.images]) if m.images else None,
        json_dumps([{"id": c.id, "name": c.name, "arguments": c.arguments, "extra": c.extra} for c in m.tool_calls])
        if m.tool_calls
        else None,
        clean(m.tool_call_id),
        clean(m.tool_name),
        json_dumps(m.extra) if m.extra else None,
        m.kind,
        m.status,
        clean(m.flow),
        clean(m.model),
        usage.input_tokens if usage else None,
        usage.output_tokens if usage else None,
        usage.audio_input_tokens if usage else None,
        usage.reasoning_tokens if usage else None,
        float(m.cost_usd),
        m.latency_ms,
        clean(m.author),
    )


Started = tuple[StoredMessage, Conversation, Customer, list[StoredMessage]]
"""What ``begin_turn`` found: the new message as stored, the conversation, the customer, the history."""


def customer(row: Sequence[Any]) -> Customer:
    return Customer(id=row[0], email=row[1], name=row[2], external_id=row[3], verified=bool(row[4]),
                    created_at=row[5])  # fmt: skip


def conversation(row: Sequence[Any]) -> Conversation:
    return Conversation(
        id=row[0], customer_id=row[1], channel=row[2], flow=row[3], status=row[4], turns=row[5],
        input_tokens=row[6], output_tokens=row[7], cost_usd=row[8], created_at=row[9], updated_at=row[10],
    )  # fmt: skip


def decode_images(images: list[dict[str, Any]]) -> tuple[ImagePart, ...]:
    return tuple(ImagePart(url=i["url"], detail=i.get("detail", "auto")) for i in images)


def decode_tool_calls(calls: list[dict[str, Any]]) -> tuple[ToolCall, ...]:
    return tuple(
        ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"], extra=c.get("extra") or {}) for c in calls
    )


def message(row: Sequence[Any]) -> StoredMessage:
    """A message from its ``MSG_COLS`` row, with timestamps and JSON already decoded."""
    images, tool_calls, extra, input_tokens = row[5], row[6], row[9], row[14]
    return StoredMessage(
        id=row[0],
        conversation_id=row[1],
        created_at=row[2],
        role=row[3],
        content=row[4],
        images=decode_images(images) if images else (),
        tool_calls=decode_tool_calls(tool_calls) if tool_calls else (),
        tool_call_id=row[7],
        tool_name=row[8],
        extra=extra or {},
        kind=row[10],
        status=row[11],
        flow=row[12],
        model=row[13],
        usage=None
        if input_tokens is None
        else Usage(
            input_tokens=input_tokens,
            output_tokens=row[15] or 0,
            audio_input_tokens=row[16] or 0,
            reasoning_tokens=row[17] or 0,
        ),
        cost_usd=row[18],
        latency_ms=row[19],
        author=row[20],
    )


def stored(m: NewMessage, message_id: int, conversation_id: str, created_at: datetime) -> StoredMessage:
    """The record of ``m`` as stored: its text cleaned (``clean``), as every backend stores it."""
    # ``clean`` spelled out: this runs for every message a turn stores, most of whose text fields are None.
    content, call_id, name, flow, model, author = m.content, m.tool_call_id, m.tool_name, m.flow, m.model, m.author
    return StoredMessage(
        id=message_id, conversation_id=conversation_id, created_at=created_at, role=m.role,
        content=None if content is None else clean_text(content), images=m.images, tool_calls=m.tool_calls,
        tool_call_id=None if call_id is None else clean_text(call_id),
        tool_name=None if name is None else clean_text(name), extra=m.extra, kind=m.kind, status=m.status,
        flow=None if flow is None else clean_text(flow), model=None if model is None else clean_text(model),
        usage=m.usage, cost_usd=m.cost_usd, latency_ms=m.latency_ms,
        author=None if author is None else clean_text(author),
    )  # fmt: skip


def totals(messages: Sequence[NewMessage]) -> tuple[int, int, int, float]:
    """What a batch adds to its conversation: turns (user messages), input and output tokens, cost."""
    turns = input_tokens = output_tokens = 0
    cost = 0.0
    for m in messages:
        turns += m.role == "user"
        if m.usage is not None:
            input_tokens += m.usage.input_tokens
            output_tokens += m.usage.output_tokens
        cost += m.cost_usd
    return turns, input_tokens, output_tokens, cost


def numbered(sql: str) -> str:
    """The statement with PostgreSQL's ``$1, $2, …`` for SQLite's ``?`` placeholders (none may be in a literal)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))


# The channels' per-message statements, written once for both databases (SQLite's placeholders).
# A pending row nobody holds (no lease, or an expired one, or a backoff that has passed): of two workers
# racing for it, one gets it.
OUTBOX_ATTEMPT = (
    "UPDATE outbox SET attempts = attempts + 1, lease_owner = ?, lease_until = ? "
    "WHERE id = ? AND status = 'pending' AND (lease_until IS NULL OR lease_until <= ?) RETURNING attempts"
)
# Only a pending row can become sent: of two workers racing to mark one reply, one wins.
OUTBOX_SENT = (
    "UPDATE outbox SET status = 'sent', external_id = ?, sent_at = ?, lease_owner = NULL, lease_until = NULL "
    "WHERE id = ? AND status = 'pending'"
)
SET_ADDRESS = (
    "INSERT INTO conversation_addresses (conversation_id, channel, key, address, updated_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (conversation_id) DO UPDATE SET channel = excluded.channel, key = excluded.key, "
    "address = excluded.address, updated_at = excluded.updated_at"
)
# Newest by creation; the id (random) only breaks a tie, so the answer is the same on every call.
CONVERSATION_FOR_KEY = (
    "SELECT a.conversation_id FROM conversation_addresses a JOIN conversations c ON c.id = a.conversation_id "
    "WHERE a.channel = ? AND a.key = ? ORDER BY c.created_at DESC, c.id DESC LIMIT 1"
)
ADDRESS = "SELECT conversation_id, channel, key, address FROM conversation_addresses WHERE conversation_id = ?"


INSERT_CUSTOMER = "INSERT INTO customers (id, email, external_id, name, verified, created_at) VALUES (?, ?, ?, ?, ?, ?)"
INSERT_INBOX = (
    "INSERT INTO inbox (channel, external_id, conversation_id, payload, status, created_at, lane) "
    "VALUES (?, ?, ?, ?, 'received', ?, ?) ON CONFLICT DO NOTHING RETURNING id"
)
SET_INBOX_STATUS = "UPDATE inbox SET status = ?, conversation_id = coalesce(?, conversation_id) WHERE id = ?"
TAKEN = "taken"
"""``begin_turn``'s answer when its inbox row was taken by another worker (no longer ``received``)."""
INSERT_TOKEN = "INSERT INTO conversation_tokens (token_hash, conversation_id, created_at) VALUES (?, ?, ?)"
TOKEN_CONVERSATION = "SELECT conversation_id FROM conversation_tokens WHERE token_hash = ?"
