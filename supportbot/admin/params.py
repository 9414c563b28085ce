"""Ticket and conversation list filters from a query string, the same for the admin page and its API."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast, get_args

from multidict import MultiMapping

from supportbot.store.base import ConversationStatus, TicketPriority, TicketStatus
from supportbot.store.review import ConversationQuery, TicketQuery, TicketSort

__all__ = ["PAGE_SIZE", "ParamError", "conversation_query", "query_string", "ticket_query"]

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
STATUSES: tuple[str, ...] = get_args(TicketStatus)
PRIORITIES: tuple[str, ...] = get_args(TicketPriority)
SORTS: tuple[str, ...] = get_args(TicketSort)
CONVERSATION_STATUSES: tuple[str, ...] = get_args(ConversationStatus)


class ParamError(ValueError):
    """A filter value that makes no sense; the message names the parameter and what it accepts."""


def _one(params: MultiMapping[str], name: str) -> str | None:
    value = params.get(name)
    return value.strip() or None if isinstance(value, str) else None


def _choices(params: MultiMapping[str], name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = [v.strip() for raw in params.getall(name, []) for v in raw.split(",") if v.strip()]
    for value in values:
        if value not in allowed:
            raise ParamError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))


def _day(params: MultiMapping[str], name: str) -> date | None:
    value = _one(params, name)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ParamError(f"{name}: {value!r} is not a date; write YYYY-MM-DD") from None


def _int(params: MultiMapping[str], name: str, default: int, *, low: int, high: int) -> int:
    value = _one(params, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ParamError(f"{name}: {value!r} is not a whole number") from None
    if not low <= number <= high:
        raise ParamError(f"{name}: {number} is out of range; use {low} to {high}")
    return number


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def ticket_query(params: MultiMapping[str]) -> TicketQuery:
    """``status`` and ``priority`` (repeated or comma-separated), ``channel``, ``flow``, ``assignee``,
    ``from``/``to`` (dates, ``to`` inclusive), ``q``, ``sort``, ``order`` (asc|desc), ``page``,
    ``per_page``, ``after`` (ids above it).

    Raises:
        ParamError: a value is not one the parameter accepts.
    """
    sort = _one(params, "sort") or "created"
    if sort not in SORTS:
        raise ParamError(f"sort: {sort!r} is not one of {', '.join(SORTS)}")
    order = _one(params, "order") or "desc"
    if order not in ("asc", "desc"):
        raise ParamError(f"order: {order!r} is not asc or desc")
    start, end = _day(params, "from"), _day(params, "to")
    per_page = _int(params, "per_page", PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)
    page = _int(params, "page", 1, low=1, high=1_000_000)
    after = _one(params, "after")
    return TicketQuery(
        status=cast(tuple[TicketStatus, ...], _choices(params, "status", STATUSES)),
        priority=cast(tuple[TicketPriority, ...], _choices(params, "priority", PRIORITIES)),
        channel=_one(params, "channel"),
        flow=_one(params, "flow"),
        assignee=_one(params, "assignee"),
        created_from=_midnight(start) if start else None,
        created_to=_midnight(end) + timedelta(days=1) if end else None,
        text=_one(params, "q"),
        after_id=_int(params, "after", 0, low=0, high=2**62) if after is not None else None,
        sort=cast(TicketSort, sort),
        descending=order == "desc",
        offset=(page - 1) * per_page,
        limit=per_page,
    )


def conversation_query(params: MultiMapping[str]) -> ConversationQuery:
    """``channel``, ``status``, ``flow``, ``customer`` (email or name, a part of it), ``q``, ``page``, ``per_page``."""
    status = _one(params, "status")
    if status is not None and status not in CONVERSATION_STATUSES:
        raise ParamError(f"status: {status!r} is not one of {', '.join(CONVERSATION_STATUSES)}")
    per_page = _int(params, "per_page", PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)
    page = _int(params, "page", 1, low=1, high=1_000_000)
    return ConversationQuery(
        channel=_one(params, "channel"),
        status=cast(ConversationStatus | None, status),
        flow=_one(params, "flow"),
        customer=_one(params, "customer"),
        text=_one(params, "q"),
        offset=(page - 1) * per_page,
        limit=per_page,
    )


def query_string(params: Mapping[str, Any] | MultiMapping[str], **changes: Any) -> str:
    """``params`` as a query string with ``changes`` applied (None removes a key): for page and sort links."""
    from urllib.parse import urlencode

    items: list[tuple[str, str]] = []
    getall = getattr(params, "getall", None)
    keys = list(dict.fromkeys(params.keys()))
    for key in keys:
        if key in changes:
            continue
        values = getall(key) if getall else [params[key]]
        items += [(key, str(v)) for v in values if str(v) != ""]
    for key, value in changes.items():
        if value is not None and value != "":
            items.append((key, str(value)))
    return urlencode(items)
