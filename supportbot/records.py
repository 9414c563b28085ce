"""Stored records as JSON-able dicts: the one shape of a ticket, a conversation and a message that the
admin API, ``--format json`` of the CLI and the admin page's live updates all use."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

from supportbot.pricing import COST_DECIMALS
from supportbot.store.base import Conversation, StoredMessage, Ticket, TicketEvent

__all__ = ["TICKET_COLUMNS", "conversation_json", "event_json", "jsonable", "message_json", "ticket_json"]

TICKET_COLUMNS = ("id", "status", "priority", "kind", "channel", "flow", "created_at", "subject", "conversation_id")


def jsonable(value: Any) -> Any:
    """``value`` with datetimes as ISO 8601 text, paths as text, tuples as lists, and costs (``…cost_usd``)
    rounded to ``COST_DECIMALS`` (sums of float prices end in noise like ``0.0030644999999999995``)."""
    if isinstance(value, dict):
        return {k: _cost(v) if str(k).endswith("cost_usd") else jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def _cost(value: Any) -> Any:
    return round(value, COST_DECIMALS) if isinstance(value, float) else jsonable(value)


def ticket_json(ticket: Ticket) -> dict[str, Any]:
    """The ticket's fields, the list columns first."""
    row: dict[str, Any] = jsonable(asdict(ticket))
    return {k: row.get(k) for k in TICKET_COLUMNS} | {k: v for k, v in row.items() if k not in TICKET_COLUMNS}


def event_json(event: TicketEvent) -> dict[str, Any]:
    data: dict[str, Any] = jsonable(asdict(event))
    return data


def conversation_json(conversation: Conversation) -> dict[str, Any]:
    data: dict[str, Any] = jsonable(asdict(conversation))
    return data


def message_json(message: StoredMessage) -> dict[str, Any]:
    data: dict[str, Any] = jsonable(asdict(message))
    return data
