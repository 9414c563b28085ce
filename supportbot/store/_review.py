"""The ``Review`` protocol (what operators' surfaces need) as a part of ``SQLStore``.

Searches build their SQLAlchemy Core statement from the query's filters; the overview aggregates
in SQL, one statement per figure, grouped by UTC day (``_day``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from supportbot.errors import StorageError
from supportbot.store._common import CONV_COLS, MSG_COLS
from supportbot.store._common import conversation as _conversation
from supportbot.store._common import message as _message
from supportbot.store._sqlbase import SQLBase
from supportbot.store._sqlbase import now as _now
from supportbot.store._tickets import _EVENT_COLS, _TICKET_COLS, _event, _ticket
from supportbot.store.base import StoredMessage, TicketEvent
from supportbot.store.models import admin_sessions as _s
from supportbot.store.models import conversations as _co
from supportbot.store.models import customers as _cu
from supportbot.store.models import messages as _m
from supportbot.store.models import operators as _op
from supportbot.store.models import ticket_events as _e
from supportbot.store.models import tickets as _t
from supportbot.store.review import (
    AdminSession,
    ConversationPage,
    ConversationQuery,
    Overview,
    TicketPage,
    TicketQuery,
)

__all__ = ["AGE_BUCKETS", "ReviewMixin"]

AGE_BUCKETS = ("< 1 h", "1–24 h", "1–7 d", "> 7 d")
"""The labels of ``Overview.open_by_age``, youngest first."""

_STATUSES = ("open", "pending", "solved", "closed")
_PRIORITY_RANK = case({"low": 0, "normal": 1, "high": 2, "urgent": 3}, value=_t.c.priority, else_=-1)
_STATUS_RANK = case({status: rank for rank, status in enumerate(_STATUSES)}, value=_t.c.status, else_=-1)
_TICKET_SORT: dict[str, ColumnElement[Any]] = {
    "created": _t.c.created_at, "updated": _t.c.updated_at, "priority": _PRIORITY_RANK, "status": _STATUS_RANK,
}  # fmt: skip

# The column orders the decoders in ``_common`` (``message``, ``conversation``) read.
_MSG_COLS = tuple(_m.c[name] for name in MSG_COLS.split(", "))
_CONV_COLS = tuple(_co.c[name] for name in CONV_COLS.split(", "))
_SESSION_COLS = (_s.c.id_hash, _s.c.username, _s.c.csrf_token, _s.c.created_at, _s.c.expires_at)
_USERNAME_MAX = 100


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _contains(column: ColumnElement[Any], text: str) -> ColumnElement[bool]:
    """``column`` contains ``text``, ignoring case; ``%``, ``_`` and ``\\`` in ``text`` are literal."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    # lower() on both sides, so both databases fold case the same way for the column and the pattern.
    return func.lower(column).like(func.lower(f"%{escaped}%"), escape="\\")


def _check_page(offset: int, limit: int) -> None:
    if offset < 0 or limit < 0:
        raise ValueError(f"offset {offset} and limit {limit} must not be negative")


def _as_date(value: date | str) -> date:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _session(row: Sequence[Any]) -> AdminSession:
    return AdminSession(id_hash=row[0], username=row[1], csrf_token=row[2], created_at=row[3], expires_at=row[4])


class ReviewMixin(SQLBase):
    """The ``Review`` protocol: searches, reports, operators and their sessions."""

    # -- searches --------------------------------------------------------------------------------

    async def search_tickets(self, query: TicketQuery) -> TicketPage:
        """Tickets matching every filter of ``query``, one page of them, and how many match in all.

        ``sort="status"`` follows the lifecycle (open, pending, solved, closed); every sort breaks
        ties by id, in the same direction.

        Raises:
            ValueError: a negative offset or limit, or an unknown sort.
        """
        _check_page(query.offset, query.limit)
        if query.sort != "id" and query.sort not in _TICKET_SORT:
            raise ValueError(f"unknown ticket sort {query.sort!r}; use one of id, {', '.join(_TICKET_SORT)}")
        where: list[ColumnElement[bool]] = []
        if query.status:
            where.append(_t.c.status.in_(query.status))
        if query.priority:
            where.append(_t.c.priority.in_(query.priority))
        for column, value in (
            (_t.c.channel, query.channel), (_t.c.flow, query.flow), (_t.c.assignee, query.assignee),
            (_t.c.kind, query.kind),
        ):  # fmt: skip
            if value is not None:
                where.append(column == value)
        if query.created_from is not None:
            where.append(_t.c.created_at >= query.created_from)
        if query.created_to is not None:
            where.append(_t.c.created_at < query.created_to)
        if query.after_id is not None:
            where.append(_t.c.id > query.after_id)
        if query.text:
            in_messages = exists().where(
                _m.c.conversation_id == _t.c.conversation_id, _contains(_m.c.content, query.text)
            )
            where.append(or_(_contains(_t.c.subject, query.text), _contains(_t.c.description, query.text), in_messages))
        keys = [_t.c.id] if query.sort == "id" else [_TICKET_SORT[query.sort], _t.c.id]
        order = [key.desc() if query.descending else key.asc() for key in keys]
        page = select(*_TICKET_COLS).where(*where).order_by(*order).offset(query.offset).limit(query.limit)
        async with self._begin("searching tickets") as connection:
            total = (await connection.execute(select(func.count()).select_from(_t).where(*where))).scalar_one()
            rows = (await connection.execute(page)).all()
        return TicketPage(tickets=[_ticket(row) for row in rows], total=total)

    async def search_conversations(self, query: ConversationQuery) -> ConversationPage:
        """Conversations matching every filter of ``query``, newest activity first, and how many match in all."""
        _check_page(query.offset, query.limit)
        source: FromClause = _co
        where: list[ColumnElement[bool]] = []
        for column, value in (
            (_co.c.channel, query.channel), (_co.c.status, query.status), (_co.c.flow, query.flow),
            (_co.c.customer_id, query.customer_id),
        ):  # fmt: skip
            if value is not None:
                where.append(column == value)
        if query.customer:
            source = _co.join(_cu, _cu.c.id == _co.c.customer_id)
            where.append(or_(_contains(_cu.c.email, query.customer), _contains(_cu.c.name, query.customer)))
        if query.text:
            where.append(exists().where(_m.c.conversation_id == _co.c.id, _contains(_m.c.content, query.text)))
        page = (
            select(*_CONV_COLS).select_from(source).where(*where)
            .order_by(_co.c.updated_at.desc(), _co.c.id.desc()).offset(query.offset).limit(query.limit)
        )  # fmt: skip
        async with self._begin("searching conversations") as connection:
            total = (await connection.execute(select(func.count()).select_from(source).where(*where))).scalar_one()
            rows = (await connection.execute(page)).all()
        return ConversationPage(conversations=[_conversation(row) for row in rows], total=total)

    async def add_ticket_event(self, ticket_id: int, *, actor: str, action: str, detail: str = "") -> TicketEvent:
        """Record something done about a ticket that is not a field change, and bump its ``updated_at``.

        Raises:
            StorageError: there is no ticket ``ticket_id``.
        """
        at = _now()
        values = {"ticket_id": ticket_id, "actor": actor, "action": action, "detail": detail, "created_at": at}
        async with self._begin("recording a ticket event", write_first=True) as connection:
            bumped = await connection.execute(update(_t).where(_t.c.id == ticket_id).values(updated_at=at))
            if bumped.rowcount == 0:
                raise StorageError(f"no ticket #{ticket_id}; list tickets with `supportbot tickets list`")
            row = (await connection.execute(_e.insert().returning(*_EVENT_COLS), values)).one()
        return _event(row)

    # -- reports ---------------------------------------------------------------------------------

    async def overview(self, *, days: int = 14, now: datetime | None = None) -> Overview:
        """The admin overview's figures over the ``days`` days (UTC) ending on ``now``'s day (default: today).

        Raises:
            ValueError: ``days`` is less than 1.
        """
        if days < 1:
            raise ValueError(f"an overview covers at least one day, not {days}")
        at = _utc(now) if now is not None else _now()
        first = at.date() - timedelta(days=days - 1)
        start = datetime.combine(first, time(), UTC)
        end = datetime.combine(at.date() + timedelta(days=1), time(), UTC)
        window = [first + timedelta(days=i) for i in range(days)]
        solved = and_(_e.c.action == "status", _e.c.detail.in_(("solved", "closed")))
        created = _t.c.created_at
        hour, day, week = (at - timedelta(hours=hours) for hours in (1, 24, 7 * 24))
        by_age = [  # in the order of AGE_BUCKETS
            func.count(case((condition, 1)))
            for condition in (
                created > hour, and_(created <= hour, created > day), and_(created <= day, created > week),
                created <= week,
            )
        ]  # fmt: skip
        unresolved = or_(_co.c.status == "human", exists().where(_t.c.conversation_id == _co.c.id))
        async with self._begin("reading the overview") as connection:
            day_of = self._backend.day
            opened = await _per_day(connection, day_of, _t.c.created_at, func.count(), start, end)
            # A ticket solved and then closed on one day counts once that day.
            solved_days = await _per_day(connection, day_of, _e.c.created_at, func.count(_e.c.ticket_id.distinct()),
                                         start, end, solved)  # fmt: skip
            cost_days = await _per_day(connection, day_of, _m.c.created_at, func.sum(_m.c.cost_usd), start, end)
            flow_rows = (
                await connection.execute(
                    select(_m.c.flow, func.sum(_m.c.cost_usd))
                    .where(_m.c.created_at >= start, _m.c.created_at < end)
                    .group_by(_m.c.flow)
                )
            ).all()
            ages = (await connection.execute(select(*by_age).where(_t.c.status.in_(("open", "pending"))))).one()
            conversations, without_ticket = (
                await connection.execute(
                    select(func.count(), func.count(case((~unresolved, 1)))).where(
                        _co.c.created_at >= start, _co.c.created_at < end
                    )
                )
            ).one()
            by_status = (await connection.execute(select(_t.c.status, func.count()).group_by(_t.c.status))).all()
        per_flow: dict[str, float] = {}
        for flow, cost in flow_rows:
            if cost:  # flows whose messages cost nothing (the customers' own) are not a cost
                per_flow[flow or "(none)"] = per_flow.get(flow or "(none)", 0.0) + float(cost)
        return Overview(
            days=days,
            opened_per_day=[(day, int(opened.get(day, 0))) for day in window],
            solved_per_day=[(day, int(solved_days.get(day, 0))) for day in window],
            cost_per_day=[(day, float(cost_days.get(day) or 0.0)) for day in window],
            cost_per_flow=sorted(per_flow.items(), key=lambda item: (-item[1], item[0])),
            open_by_age=list(zip(AGE_BUCKETS, (int(n) for n in ages), strict=True)),
            conversations=conversations,
            resolved_without_ticket=without_ticket,
            tickets_by_status={**dict.fromkeys(_STATUSES, 0), **dict(by_status)},
        )

    # -- messages --------------------------------------------------------------------------------

    async def operator_messages_after(self, message_id: int, *, limit: int = 500) -> list[StoredMessage]:
        """Operators' replies (``kind == "human"``) and notices (``notice`` with an author) after ``message_id``."""
        by_operator = or_(_m.c.kind == "human", and_(_m.c.kind == "notice", _m.c.author.is_not(None)))
        query = select(*_MSG_COLS).where(_m.c.id > message_id, by_operator).order_by(_m.c.id).limit(limit)
        async with self._begin("reading operators' replies") as connection:
            rows = (await connection.execute(query)).all()
        return [_message(row) for row in rows]

    async def last_message_id(self) -> int:
        """The largest message id so far (0 for none)."""
        async with self._begin("reading the last message id") as connection:
            return int((await connection.execute(select(func.coalesce(func.max(_m.c.id), 0)))).scalar_one())

    # -- operators and their sessions ------------------------------------------------------------

    async def set_operator_password(self, username: str, password_hash: str) -> None:
        """Create the operator or replace their password hash.

        Raises:
            StorageError: ``username`` is empty or longer than 100 characters.
        """
        if not username or len(username) > _USERNAME_MAX:
            raise StorageError(
                f"operator name {username[:20]!r} is {len(username)} characters long; "
                f"use a name of 1 to {_USERNAME_MAX} characters"
            )
        at = _now()
        insert = self._insert(_op).values(username=username, password_hash=password_hash, created_at=at, updated_at=at)
        upsert = insert.on_conflict_do_update(
            index_elements=[_op.c.username], set_={"password_hash": password_hash, "updated_at": at}
        )
        async with self._begin("setting an operator's password") as connection:
            await connection.execute(upsert)

    async def operator_password_hash(self, username: str) -> str | None:
        """The operator's password hash, or None when there is no such operator."""
        query = select(_op.c.password_hash).where(_op.c.username == username)
        async with self._begin("reading an operator") as connection:
            found: str | None = (await connection.execute(query)).scalar_one_or_none()
        return found

    async def create_admin_session(self, session: AdminSession) -> None:
        values = {column.name: getattr(session, column.name) for column in _SESSION_COLS}
        async with self._begin("creating an admin session") as connection:
            await connection.execute(_s.insert(), values)

    async def get_admin_session(self, id_hash: str, *, now: datetime | None = None) -> AdminSession | None:
        """The session if it exists and has not expired."""
        query = select(*_SESSION_COLS).where(_s.c.id_hash == id_hash, _s.c.expires_at > (now or _now()))
        async with self._begin("reading an admin session") as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else _session(row)

    async def delete_admin_session(self, id_hash: str) -> None:
        async with self._begin("deleting an admin session") as connection:
            await connection.execute(delete(_s).where(_s.c.id_hash == id_hash))

    async def purge_admin_sessions(self, *, now: datetime | None = None) -> int:
        """Delete expired sessions; returns how many."""
        async with self._begin("purging admin sessions") as connection:
            result = await connection.execute(delete(_s).where(_s.c.expires_at <= (now or _now())))
        return result.rowcount


async def _per_day(
    connection: AsyncConnection,
    day_of: Callable[[ColumnElement[Any]], ColumnElement[Any]],
    column: ColumnElement[Any],
    value: ColumnElement[Any],
    start: datetime,
    end: datetime,
    *where: ColumnElement[bool],
) -> dict[date, Any]:
    """``value`` aggregated per UTC day of ``column`` over ``[start, end)``; days without rows are absent."""
    day = day_of(column)
    query = select(day, value).where(column >= start, column < end, *where).group_by(day)
    return {_as_date(found): total for found, total in (await connection.execute(query)).all()}
