"""Leases and inbox lanes, as a part of ``SQLStore``: how several workers share one database's work.

A lease is a named piece of work one worker holds until it expires (``leases`` table): the lane of
an inbox (one conversation's queue of messages), or a channel's receiver. Its holder renews it while
it works; a worker that dies lets go when its leases expire, and another takes the work over. Taking
one is a single ``INSERT … ON CONFLICT DO UPDATE … WHERE`` (atomic on both databases): of two workers
racing for it, exactly one gets it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Interval, String, bindparam, delete, exists, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from supportbot.errors import StorageError
from supportbot.store._engine import make_engine, storage_error
from supportbot.store._mailbox import _INBOX_COLS, _inbox_item
from supportbot.store._sqlbase import SQLBase, now
from supportbot.store.mailboxes import InboxItem
from supportbot.store.models import UTCDateTime
from supportbot.store.models import inbox as _i
from supportbot.store.models import leases as _l
from supportbot.store.models import outbox as _o

__all__ = ["LANE_LEASE_PREFIX", "LeaseMixin"]

LANE_LEASE_PREFIX = "lane:"
"""The lease of an inbox lane is named ``lane:<lane>``."""
UNANSWERED = ("received", "stored")
"""Inbox statuses of a message whose turn has not finished."""
STALE_LEASE = timedelta(hours=1)
"""An expired lease is deleted this long after it expired (its work is done, or was taken over)."""

RENEW_TIMEOUT_S = 2.0
"""How long a renewal waits for its connection (a third of a lease is the most it may take)."""
RENEW_CHUNK = 500
"""Leases renewed per statement."""


@dataclass(frozen=True, slots=True)
class _Sql:
    """The lease statements of one dialect, with the times they compare and set taken from its clock: on
    PostgreSQL the database's (``statement_timestamp()``), so workers on hosts whose clocks disagree still
    agree on when a lease expires; on SQLite, the one process's (``params``)."""

    pg: bool
    take: Callable[[str, str], Any]
    claim: Callable[[str, str], Any]
    renew: Any
    renew_all: Any
    renew_sends: Any
    pass_: Any
    drop_stale: Any
    orphans: Any
    orphans_after: Any

    def params(self, seconds: float = 0.0) -> dict[str, Any]:
        """The times a statement needs: a lease of ``seconds`` from now."""
        if self.pg:
            return {"span": timedelta(seconds=seconds)}
        at = now()
        return {"now": at, "until": at + timedelta(seconds=seconds), "before": at - STALE_LEASE}


def _sql(dialect: str) -> _Sql:
    pg = dialect == "postgresql"
    if pg:
        db_now: Any = func.statement_timestamp(type_=UTCDateTime())
        until: Any = db_now + bindparam("span", type_=Interval())
        before: Any = db_now - literal(STALE_LEASE, Interval())
    else:
        db_now = bindparam("now", type_=UTCDateTime())
        until = bindparam("until", type_=UTCDateTime())
        before = bindparam("before", type_=UTCDateTime())
    mine = (_l.c.name == bindparam("lease"), _l.c.owner == bindparam("holder"))
    named = (_l.c.owner == bindparam("holder"), _l.c.name.in_(bindparam("names", expanding=True)))
    insert = pg_insert if pg else sqlite_insert

    def take(name: str, owner: str) -> Any:
        upsert = insert(_l).values(name=name, owner=owner, expires_at=until)
        return upsert.on_conflict_do_update(
            index_elements=[_l.c.name],
            set_={"owner": upsert.excluded.owner, "expires_at": upsert.excluded.expires_at},
            where=or_(_l.c.expires_at < db_now, _l.c.owner == upsert.excluded.owner),
        ).returning(_l.c.name)

    def claim(name: str, owner: str) -> Any:
        # ``take``, but only while the inbox row is still ``received``: one statement, so a worker that read the
        # row before another finished with it (and let its lease expire) cannot take it up again.
        received = exists().where(_i.c.id == bindparam("iid"), _i.c.status == "received")
        row = select(literal(name, String()), literal(owner, String()), until).where(received)
        upsert = insert(_l).from_select([_l.c.name, _l.c.owner, _l.c.expires_at], row)
        return upsert.on_conflict_do_update(
            index_elements=[_l.c.name],
            set_={"owner": upsert.excluded.owner, "expires_at": upsert.excluded.expires_at},
            where=or_(_l.c.expires_at < db_now, _l.c.owner == upsert.excluded.owner),
        ).returning(_l.c.name)

    orphans = (
        select(_i.c.lane)
        .distinct()
        .select_from(_i.outerjoin(_l, _l.c.name == literal(LANE_LEASE_PREFIX) + _i.c.lane))
        .where(
            _i.c.status.in_(UNANSWERED),
            _i.c.lane.is_not(None),
            or_(_l.c.name.is_(None), _l.c.expires_at < db_now),
        )
    )
    return _Sql(
        pg=pg,
        take=take,
        claim=claim,
        renew=update(_l).where(*mine).values(expires_at=until).returning(_l.c.name),
        renew_all=update(_l).where(*named).values(expires_at=until).returning(_l.c.name),
        # The outbox rows a worker is sending are leased to it as well (``outbox.lease_owner``).
        renew_sends=update(_o)
        .where(
            _o.c.lease_owner == bindparam("holder"),
            _o.c.status == "pending",
            _o.c.id.in_(bindparam("ids", expanding=True)),
        )
        .values(lease_until=until),
        pass_=update(_l).where(*mine).values(owner=bindparam("new_owner"), expires_at=until).returning(_l.c.name),
        drop_stale=delete(_l).where(_l.c.expires_at < before),
        orphans=orphans.limit(bindparam("n")),
        orphans_after=orphans.where(_i.c.lane > bindparam("after")).order_by(_i.c.lane).limit(bindparam("n")),
    )


_SQL = {"postgresql": _sql("postgresql"), "sqlite": _sql("sqlite")}
_FREE_SENDS = (
    update(_o).where(_o.c.status == "pending", _o.c.lease_until.is_not(None)).values(lease_owner=None, lease_until=None)
)
_RELEASE = delete(_l).where(_l.c.name == bindparam("lease"), _l.c.owner == bindparam("holder"))
_LANE = (
    select(*_INBOX_COLS)
    .where(_i.c.lane == bindparam("lane"), _i.c.status.in_(UNANSWERED), _i.c.id > bindparam("after"))
    .order_by(_i.c.id)
    .limit(bindparam("n"))
)
_UNLANED = (
    select(*_INBOX_COLS)
    .where(_i.c.lane.is_(None), _i.c.status.in_(UNANSWERED), _i.c.id > bindparam("after"))
    .order_by(_i.c.id)
    .limit(bindparam("n"))
)
_BIND = (
    update(_i).where(_i.c.id == bindparam("iid"), _i.c.status == "received").values(conversation_id=bindparam("cid"))
)
_SET_LANE = update(_i).where(_i.c.id == bindparam("iid")).values(lane=bindparam("new_lane"))
_FAILED_ONCE_MORE = (
    update(_i).where(_i.c.id == bindparam("iid")).values(attempts=_i.c.attempts + 1).returning(_i.c.attempts)
)


class LeaseMixin(SQLBase):
    """Leases (``take_lease``, ``renew_leases``, ``release_lease``) and the inbox's lanes."""

    _renewals: AsyncEngine | None = None

    @property
    def _lease_sql(self) -> _Sql:
        return _SQL[self._backend.name]

    async def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take the lease ``name`` for ``seconds`` if nobody holds it, it expired, or ``owner`` holds it already.

        Returns whether ``owner`` holds it now.
        """
        sql = self._lease_sql
        async with self._begin(f"taking the lease {name}", write_first=True) as connection:
            return (await connection.execute(sql.take(name, owner), sql.params(seconds))).first() is not None

    async def renew_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Extend ``owner``'s lease ``name`` by ``seconds`` from now; False when ``owner`` no longer holds it."""
        sql = self._lease_sql
        values = {"lease": name, "holder": owner, **sql.params(seconds)}
        async with self._begin(f"renewing the lease {name}", write_first=True) as connection:
            return (await connection.execute(sql.renew, values)).first() is not None

    @asynccontextmanager
    async def _renewing(self, doing: str) -> AsyncIterator[AsyncConnection]:
        """A transaction for renewals: on PostgreSQL on a connection of their own, so that a pool busy with
        turns never delays a renewal past its lease (another worker would take the work over meanwhile)."""
        if self._backend.name != "postgresql":
            async with self._begin(doing, write_first=True) as connection:
                yield connection
            return
        if self._renewals is None:
            self._renewals = make_engine(self._url, pool_size=1, max_overflow=0, pool_timeout=RENEW_TIMEOUT_S)
        try:
            async with self._renewals.begin() as connection:
                yield connection
        except (SQLAlchemyError, OSError) as exc:
            raise storage_error(exc, self._url, doing) from exc

    async def close_renewals(self) -> None:
        if self._renewals is not None:
            await self._renewals.dispose()
            self._renewals = None

    async def renew_sends(self, owner: str, ids: Sequence[int], seconds: float) -> None:
        """Extend ``owner``'s leases of the outbox rows ``ids`` (those it is sending now) by ``seconds`` from now;
        a row it no longer sends is left to expire."""
        sql = self._lease_sql
        times = sql.params(seconds)
        async with self._renewing("renewing this worker's sends") as connection:
            for start in range(0, len(ids), RENEW_CHUNK):
                values = {"holder": owner, "ids": list(ids[start : start + RENEW_CHUNK]), **times}
                await connection.execute(sql.renew_sends, values)

    async def renew_leases(self, owner: str, names: Sequence[str], seconds: float) -> set[str]:
        """Extend ``owner``'s leases of ``names`` (the work it is doing now) by ``seconds`` from now; the names
        of those it still holds.

        A name missing from the answer was taken over by another worker after its lease expired. A lease of
        ``owner`` not named is left to expire: work it no longer does (a lane it could not give back while the
        database was away) passes to another worker then.
        """
        sql = self._lease_sql
        times = sql.params(seconds)
        held: set[str] = set()
        async with self._renewing("renewing this worker's leases") as connection:
            for start in range(0, len(names), RENEW_CHUNK):
                values = {"holder": owner, "names": list(names[start : start + RENEW_CHUNK]), **times}
                held.update(str(name) for (name,) in (await connection.execute(sql.renew_all, values)).all())
        return held

    async def pass_lease(self, name: str, owner: str, to: str, seconds: float) -> bool:
        """Hand ``owner``'s lease to ``to`` for ``seconds`` from now (one statement: nobody can take it between);
        False when ``owner`` did not hold it."""
        sql = self._lease_sql
        values = {"lease": name, "holder": owner, "new_owner": to, **sql.params(seconds)}
        async with self._begin(f"passing the lease {name}", write_first=True) as connection:
            return (await connection.execute(sql.pass_, values)).first() is not None

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease back (if ``owner`` holds it), so another worker may take it at once."""
        async with self._begin(f"releasing the lease {name}", write_first=True) as connection:
            await connection.execute(_RELEASE, {"lease": name, "holder": owner})

    async def drop_stale_leases(self) -> int:
        """Delete leases that expired more than ``STALE_LEASE`` ago; returns how many."""
        sql = self._lease_sql
        async with self._begin("deleting expired leases", write_first=True) as connection:
            return (await connection.execute(sql.drop_stale, sql.params())).rowcount or 0

    async def clear_leases(self) -> None:
        """Delete every lease and free every outbox row being sent or waiting out a backoff: for a server that
        is the database's only worker (SQLite), at its start."""
        async with self._begin("clearing leases", write_first=True) as connection:
            await connection.execute(delete(_l))
            await connection.execute(_FREE_SENDS)

    @asynccontextmanager
    async def hold_lease(self, name: str, *, seconds: float = 10.0, within: float = 10.0) -> AsyncIterator[None]:
        """Hold ``name`` for a short piece of work no two workers may do at once (a read-modify-write of a
        shared value): wait for it (up to ``within`` seconds), do the work, give it back. A holder that
        dies lets go after ``seconds``.

        Raises:
            StorageError: it was not free within ``within`` seconds.
        """
        owner = f"hold:{secrets.token_hex(8)}"
        deadline = time.monotonic() + within
        pause = 0.01
        while not await self.take_lease(name, owner, seconds):
            if time.monotonic() > deadline:
                raise StorageError(f"{name} stayed held by another worker for {within:.0f} s; try again")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)
        try:
            yield
        finally:
            await self.release_lease(name, owner)

    # -- lanes -----------------------------------------------------------------------------------

    async def inbox_next(self, lane: str) -> InboxItem | None:
        """The oldest message of ``lane`` whose turn has not finished (``received`` or ``stored``), or None."""
        found = await self.inbox_lane(lane, limit=1)
        return found[0] if found else None

    async def inbox_lane(self, lane: str, *, limit: int = 1000, after_id: int = 0) -> list[InboxItem]:
        """The messages of ``lane`` whose turns have not finished, oldest first (those after ``after_id``: pages)."""
        async with self._begin("reading a conversation's unanswered messages") as connection:
            rows = (await connection.execute(_LANE, {"lane": lane, "n": limit, "after": after_id})).all()
        return [_inbox_item(row) for row in rows]

    async def inbox_unlaned(self, *, limit: int = 1000, after_id: int = 0) -> list[InboxItem]:
        """Unanswered inbox rows without a lane (stored before lanes existed, or no customer's message: an
        operator's reply), oldest first, those after ``after_id``."""
        async with self._begin("reading inbound messages without a lane") as connection:
            rows = (await connection.execute(_UNLANED, {"n": limit, "after": after_id})).all()
        return [_inbox_item(row) for row in rows]

    async def inbox_orphan_lanes(self, *, limit: int = 100, after: str | None = None) -> list[str]:
        """Lanes with unanswered messages that no worker holds (nobody took them, or their lease expired); with
        ``after``, those after it in the lanes' order (pages through them all)."""
        sql = self._lease_sql
        statement, values = (sql.orphans, {}) if after is None else (sql.orphans_after, {"after": after})
        async with self._begin("looking for unanswered messages nobody holds") as connection:
            rows = (await connection.execute(statement, {"n": limit, **values, **sql.params()})).all()
        return [str(lane) for (lane,) in rows]

    async def inbox_bind(self, inbox_id: int, conversation_id: str) -> None:
        """Record the conversation a keyed message goes to, if its turn was not taken meanwhile."""
        async with self._begin("binding an inbound message to its conversation", write_first=True) as connection:
            await connection.execute(_BIND, {"iid": inbox_id, "cid": conversation_id})

    async def inbox_turn_failed(self, inbox_id: int) -> int:
        """Count one more failed turn of an inbound message (one statement: atomic, whichever worker ran it);
        returns how often its turn failed so far, on any worker and across restarts (0: no such row)."""
        async with self._begin("counting a failed turn", write_first=True) as connection:
            return int((await connection.execute(_FAILED_ONCE_MORE, {"iid": inbox_id})).scalar() or 0)

    async def inbox_claim(self, inbox_id: int, owner: str, seconds: float) -> bool:
        """Take the lease ``inbox:<id>`` of an inbound row that is no customer's message (an operator's reply) for
        ``seconds``, if the row is still ``received`` and nobody else holds it; whether ``owner`` holds it now.

        The one that holds it stores the row's content; a holder that dies lets go when it expires. Left to
        expire after success, so that another worker that read the row before cannot claim it again meanwhile
        (by then the row is ``done``).
        """
        sql = self._lease_sql
        values = {"iid": inbox_id, **sql.params(seconds)}
        async with self._begin("claiming an inbound row", write_first=True) as connection:
            found = (await connection.execute(sql.claim(f"inbox:{inbox_id}", owner), values)).first()
        return found is not None

    async def inbox_set_lanes(self, lanes: Sequence[tuple[int, str]]) -> None:
        """Give inbox rows their lane (rows stored before lanes existed): ``(inbox id, lane)`` pairs."""
        if not lanes:
            return
        async with self._begin("giving inbound messages their lane", write_first=True) as connection:
            await connection.execute(_SET_LANE, [{"iid": iid, "new_lane": lane} for iid, lane in lanes])
