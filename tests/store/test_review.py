"""The ``Review`` protocol on SQLStore (each test runs on SQLite and PostgreSQL through ``store``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Table

from supportbot.errors import StorageError
from supportbot.store.base import NewMessage, Ticket, TicketStatus
from supportbot.store.models import conversations, messages, ticket_events, tickets
from supportbot.store.review import AdminSession, ConversationQuery, Review, TicketQuery
from supportbot.store.sql import SQLStore

NOW = datetime(2020, 3, 10, 12, 0, tzinfo=UTC)


async def _set(store: SQLStore, table: Table, key: object, **values: Any) -> None:
    """Overwrite columns of one row (past timestamps the public methods never write)."""
    async with store.engine.begin() as connection:
        column = table.c.id
        await connection.execute(table.update().where(column == key).values(**values))


async def _conversation(store: SQLStore, email: str, name: str | None = None, **fields: str) -> str:
    customer = await store.get_or_create_customer(email=email, name=name, verified=True)
    options = {"channel": "web", "flow": "general", **fields}
    conversation = await store.create_conversation(customer_id=customer.id, **options)
    return conversation.id


async def _say(store: SQLStore, conversation_id: str, content: str, **fields: Any) -> int:
    return (await store.add_messages(conversation_id, [NewMessage(role="user", content=content, **fields)]))[0].id


def test_sql_store_is_a_review() -> None:
    def accepts(review: Review) -> None: ...

    accepts(SQLStore.__new__(SQLStore))  # mypy checks the protocol here; this only has to run


# -- ticket search ------------------------------------------------------------------------------


async def _four_tickets(store: SQLStore) -> dict[str, Ticket]:
    """A, B, C, D: one per status, each different in every filtered field."""
    b_conversation = await _conversation(store, "ben@example.com")
    await _say(store, b_conversation, "My parcel_id is P-77")
    c_conversation = await _conversation(store, "cy@example.com")
    await _say(store, c_conversation, "The KAPUTT Display arrived")
    specs: list[tuple[str, TicketStatus, dict[str, Any], str | None, timedelta]] = [
        ("A", "open", {"subject": "Refund for order A1001", "priority": "urgent", "kind": "request",
                       "channel": "web", "flow": "returns"}, None, timedelta(days=10)),
        ("B", "pending", {"subject": "Where is my parcel", "description": "tracking says 100% delivered",
                          "priority": "high", "kind": "handoff", "channel": "email", "flow": "orders",
                          "conversation_id": b_conversation}, "mia", timedelta(days=3)),
        ("C", "solved", {"subject": "Invoice copy", "priority": "low", "kind": "escalation", "channel": "slack",
                         "flow": "billing", "conversation_id": c_conversation}, "leo", timedelta(days=1)),
        ("D", "closed", {"subject": "Damaged item", "description": "photo in C:\\temp", "priority": "normal",
                         "kind": "request", "channel": "web", "flow": "returns"}, "mia", timedelta(0)),
    ]  # fmt: skip
    found = {}
    for name, status, fields, assignee, age in specs:
        ticket = await store.create_ticket(**fields)
        await store.update_ticket(ticket.id, actor="ops", status=None if status == "open" else status,
                                  assignee=assignee)  # fmt: skip
        await _set(store, tickets, ticket.id, created_at=NOW - age)
        found[name] = ticket
    return found


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (TicketQuery(), "DCBA"),
        (TicketQuery(status=("open", "pending")), "BA"),
        (TicketQuery(priority=("low", "normal")), "DC"),
        (TicketQuery(channel="web"), "DA"),
        (TicketQuery(flow="returns"), "DA"),
        (TicketQuery(assignee="mia"), "DB"),
        (TicketQuery(kind="request"), "DA"),
        (TicketQuery(created_from=NOW - timedelta(days=2)), "DC"),
        (TicketQuery(created_to=NOW - timedelta(days=3)), "A"),  # B at exactly the bound is excluded
        (TicketQuery(created_from=NOW - timedelta(days=3), created_to=NOW), "CB"),  # D at exactly NOW is excluded
        (TicketQuery(text="rEFUND"), "A"),  # subject, any case
        (TicketQuery(text="100% DEL"), "B"),  # description
        (TicketQuery(text="kaputt display"), "C"),  # a message of the ticket's conversation
        (TicketQuery(text="%"), "B"),  # a literal percent sign, not "anything"
        (TicketQuery(text="_"), "B"),  # a literal underscore ("parcel_id"), not "any character"
        (TicketQuery(text="l_i"), "B"),
        (TicketQuery(text="\\"), "D"),  # a literal backslash
        (TicketQuery(text="nowhere"), ""),
        (TicketQuery(status=("open", "closed"), channel="web", text="damaged"), "D"),
    ],
)
async def test_search_tickets_filters(store: SQLStore, query: TicketQuery, expected: str) -> None:
    made = await _four_tickets(store)
    names = {ticket.id: name for name, ticket in made.items()}
    page = await store.search_tickets(query)
    assert "".join(names[ticket.id] for ticket in page.tickets) == expected
    assert page.total == len(expected)


async def test_search_tickets_after_id_returns_only_newer(store: SQLStore) -> None:
    made = await _four_tickets(store)
    page = await store.search_tickets(TicketQuery(after_id=made["B"].id, sort="id", descending=False))
    assert [ticket.id for ticket in page.tickets] == [made["C"].id, made["D"].id]
    assert page.tickets[0] == await store.get_ticket(made["C"].id)


@pytest.mark.parametrize(
    ("sort", "descending", "expected"),
    [
        ("priority", True, "EABDC"),  # urgent (E after A, ties by id in the same direction), high, normal, low
        ("priority", False, "CDBAE"),
        ("created", True, "EDCBA"),
        ("created", False, "ABCDE"),
        ("status", False, "AEBCD"),  # open (A and E), pending, solved, closed
        ("id", True, "EDCBA"),
    ],
)
async def test_search_tickets_sorts(store: SQLStore, sort: Any, descending: bool, expected: str) -> None:
    made = await _four_tickets(store)
    made["E"] = await store.create_ticket(subject="Second urgent one", priority="urgent")
    await _set(store, tickets, made["E"].id, created_at=NOW + timedelta(hours=1))
    names = {ticket.id: name for name, ticket in made.items()}
    page = await store.search_tickets(TicketQuery(sort=sort, descending=descending))
    assert "".join(names[ticket.id] for ticket in page.tickets) == expected


async def test_search_tickets_pages_and_counts_every_match(store: SQLStore) -> None:
    made = await _four_tickets(store)
    names = {ticket.id: name for name, ticket in made.items()}
    page = await store.search_tickets(TicketQuery(sort="id", descending=False, offset=1, limit=2))
    assert ("".join(names[ticket.id] for ticket in page.tickets), page.total) == ("BC", 4)
    past_the_end = await store.search_tickets(TicketQuery(offset=10))
    assert (past_the_end.tickets, past_the_end.total) == ([], 4)
    with pytest.raises(ValueError, match="must not be negative"):
        await store.search_tickets(TicketQuery(offset=-1))


# -- conversation search ------------------------------------------------------------------------


async def test_search_conversations_filters_newest_first(store: SQLStore) -> None:
    one = await _conversation(store, "ana@example.com", "Ana Lima")
    await _say(store, one, "Is there 50% off?")
    two = await _conversation(store, "ana@example.com", "Ana Lima", channel="email", flow="returns")
    await store.update_conversation(two, status="human")
    three = await _conversation(store, "ben@shop.test", "Benedikt")
    await _say(store, three, "my Order_Nr is 5")
    await store.update_conversation(three, status="closed")
    for age, conversation_id in enumerate((one, three, two)):  # newest activity: one, then three, then two
        await _set(store, conversations, conversation_id, updated_at=NOW - timedelta(hours=age))
    names = {one: "1", two: "2", three: "3"}
    ben = (await store.get_or_create_customer(email="ben@shop.test", verified=True)).id

    async def search(**fields: Any) -> tuple[str, int]:
        page = await store.search_conversations(ConversationQuery(**fields))
        return "".join(names[c.id] for c in page.conversations), page.total

    assert await search() == ("132", 3)
    assert await search(channel="web") == ("13", 2)
    assert await search(status="human") == ("2", 1)
    assert await search(flow="returns") == ("2", 1)
    assert await search(customer_id=ben) == ("3", 1)
    assert await search(customer="LIMA") == ("12", 2)  # the name
    assert await search(customer="Shop.Test") == ("3", 1)  # the email
    assert await search(customer="%") == ("", 0)
    assert await search(text="50% OFF") == ("1", 1)
    assert await search(text="order_nr") == ("3", 1)
    assert await search(text="_") == ("3", 1)
    assert await search(customer="ana", channel="web", text="off") == ("1", 1)
    assert await search(limit=1, offset=1) == ("3", 3)
    found = (await store.search_conversations(ConversationQuery(customer_id=ben))).conversations[0]
    assert found == await store.get_conversation(three)


# -- ticket events ----------------------------------------------------------------------------


async def test_add_ticket_event_records_it_and_bumps_the_ticket(store: SQLStore) -> None:
    ticket = await store.create_ticket(subject="Parcel lost")
    await _set(store, tickets, ticket.id, updated_at=NOW)
    event = await store.add_ticket_event(ticket.id, actor="mia", action="reply", detail="We sent a new one.")
    assert (event.ticket_id, event.actor, event.action, event.detail) == (
        ticket.id,
        "mia",
        "reply",
        "We sent a new one.",
    )
    assert event.created_at is not None and event.created_at.tzinfo is UTC
    assert (await store.ticket_events(ticket.id))[-1] == event
    bumped = await store.get_ticket(ticket.id)
    assert bumped is not None and bumped.updated_at == event.created_at
    assert (await store.add_ticket_event(ticket.id, actor="bot", action="handback")).detail == ""
    with pytest.raises(StorageError, match=r"no ticket #999999; list tickets with `supportbot tickets list`"):
        await store.add_ticket_event(999999, actor="mia", action="reply")


# -- overview ---------------------------------------------------------------------------------


async def _ticket(store: SQLStore, created_at: datetime, **fields: Any) -> int:
    ticket = await store.create_ticket(subject="t", **fields)
    await _set(store, tickets, ticket.id, created_at=created_at)
    return ticket.id


async def _status(store: SQLStore, ticket_id: int, status: TicketStatus, at: datetime) -> None:
    await store.update_ticket(ticket_id, actor="ops", status=status)
    async with store.engine.begin() as connection:
        await connection.execute(
            ticket_events.update()
            .where(ticket_events.c.ticket_id == ticket_id, ticket_events.c.detail == status)
            .values(created_at=at)
        )


async def _message(store: SQLStore, conversation_id: str, at: datetime, cost: float, flow: str | None) -> None:
    stored = await store.add_messages(
        conversation_id, [NewMessage(role="assistant", content="x", cost_usd=cost, flow=flow)]
    )
    await _set(store, messages, stored[0].id, created_at=at)


def _days(*counts: float) -> list[tuple[date, float]]:
    """The five days ending on NOW's day, with these figures."""
    return [(date(2020, 3, 6) + timedelta(days=i), count) for i, count in enumerate(counts)]


async def test_overview_counts_per_utc_day_bucket_and_status(store: SQLStore) -> None:
    day = datetime(2020, 3, 10, tzinfo=UTC)  # NOW's day; the window is 6 to 10 March
    # Tickets, with their age at NOW: only open and pending ones are in open_by_age.
    await _ticket(store, NOW - timedelta(minutes=30))  # < 1 h, opened 10 March
    pending = await _ticket(store, NOW - timedelta(hours=10))  # 1–24 h, opened 10 March
    await _status(store, pending, "pending", NOW - timedelta(hours=9))
    await _ticket(store, NOW - timedelta(hours=1))  # exactly 1 h: 1–24 h, opened 10 March
    # 01:00 on 9 March at +03:00 is 22:00 on 8 March UTC: opened 8 March; 1–7 d
    await _ticket(store, datetime(2020, 3, 9, 1, 0, tzinfo=timezone(timedelta(hours=3))))
    await _ticket(store, day - timedelta(days=4))  # the window's first instant: opened 6 March; 1–7 d
    await _ticket(store, day - timedelta(days=4, microseconds=1))  # just before the window; 1–7 d
    await _ticket(store, NOW - timedelta(days=20))  # > 7 d
    solved_twice = await _ticket(store, day - timedelta(hours=14))  # opened 9 March
    await _status(store, solved_twice, "solved", day - timedelta(hours=10))
    await _status(store, solved_twice, "closed", day - timedelta(hours=9))  # the same ticket on the same day
    closed = await _ticket(store, day - timedelta(days=9))
    await _status(store, closed, "closed", day + timedelta(hours=9))
    note = await store.add_ticket_event(closed, actor="ops", action="note", detail="closed")  # not a status change
    await _set(store, ticket_events, note.id, created_at=day - timedelta(days=2))
    tomorrow = await _ticket(store, day + timedelta(days=1))  # after the window
    await _status(store, tomorrow, "solved", day + timedelta(days=1, hours=1))

    # Conversations of the window: without a ticket and not with a human counts as resolved.
    resolved = await _conversation(store, "a@example.com")
    with_human = await _conversation(store, "b@example.com")
    await store.update_conversation(with_human, status="human")
    with_ticket = await _conversation(store, "c@example.com")
    ticket_of_conversation = await _ticket(store, day + timedelta(days=2), conversation_id=with_ticket)
    await store.update_ticket(ticket_of_conversation, actor="ops", status="solved")
    closed_conversation = await _conversation(store, "d@example.com")
    await store.update_conversation(closed_conversation, status="closed")
    old = await _conversation(store, "e@example.com")
    for conversation_id, at in (
        (resolved, day - timedelta(hours=14)), (with_human, day + timedelta(hours=8)),
        (with_ticket, day - timedelta(hours=39)), (closed_conversation, day + timedelta(hours=9)),
        (old, day - timedelta(days=9)),
    ):  # fmt: skip
        await _set(store, conversations, conversation_id, created_at=at)

    # Message costs (binary fractions, so the sums are exact).
    await _message(store, resolved, day - timedelta(hours=13), 0.25, "returns")
    await _message(store, resolved, day + timedelta(hours=8), 0.5, "orders")
    await _message(store, resolved, day + timedelta(hours=8), 0.125, None)
    await _message(store, resolved, day + timedelta(hours=8), 0.0, "free")  # costs nothing: not listed
    await _message(store, resolved, day - timedelta(days=5), 1.0, "returns")  # before the window
    await _message(store, resolved, day + timedelta(days=1), 2.0, "returns")  # after it

    overview = await store.overview(days=5, now=NOW)

    assert overview.days == 5
    assert overview.opened_per_day == _days(1, 0, 1, 1, 3)
    assert overview.solved_per_day == _days(0, 0, 0, 1, 1)
    assert overview.cost_per_day == _days(0.0, 0.0, 0.0, 0.25, 0.625)
    assert overview.cost_per_flow == [("orders", 0.5), ("returns", 0.25), ("(none)", 0.125)]
    assert overview.open_by_age == [("< 1 h", 1), ("1–24 h", 2), ("1–7 d", 3), ("> 7 d", 1)]
    assert (overview.conversations, overview.resolved_without_ticket) == (4, 2)
    assert overview.tickets_by_status == {"open": 6, "pending": 1, "solved": 2, "closed": 2}

    one_day = await store.overview(days=1, now=NOW)
    assert one_day.opened_per_day == [(date(2020, 3, 10), 3)]
    assert one_day.cost_per_flow == [("orders", 0.5), ("(none)", 0.125)]
    assert one_day.conversations == 2


async def test_overview_of_an_empty_store_has_every_day_bucket_and_status(store: SQLStore) -> None:
    overview = await store.overview()
    today = datetime.now(UTC).date()
    assert [day for day, _ in overview.opened_per_day] == [today - timedelta(days=13 - i) for i in range(14)]
    assert overview.opened_per_day == [(day, 0) for day, _ in overview.opened_per_day]
    assert overview.solved_per_day == overview.opened_per_day
    assert overview.cost_per_day == [(day, 0.0) for day, _ in overview.opened_per_day]
    assert overview.cost_per_flow == []
    assert overview.open_by_age == [("< 1 h", 0), ("1–24 h", 0), ("1–7 d", 0), ("> 7 d", 0)]
    assert (overview.conversations, overview.resolved_without_ticket) == (0, 0)
    assert overview.tickets_by_status == {"open": 0, "pending": 0, "solved": 0, "closed": 0}
    with pytest.raises(ValueError, match="at least one day"):
        await store.overview(days=0)


# -- operators' replies -----------------------------------------------------------------------


async def test_operator_messages_after_and_last_message_id(store: SQLStore) -> None:
    assert await store.last_message_id() == 0
    assert await store.operator_messages_after(0) == []
    conversation_id = await _conversation(store, "ana@example.com")
    stored = await store.add_messages(
        conversation_id,
        [
            NewMessage(role="user", content="hello"),
            NewMessage(role="assistant", content="first", kind="human", author="mia"),
            NewMessage(role="assistant", content="bot", flow="general"),
            NewMessage(role="assistant", content="second", kind="human", author="leo"),
            NewMessage(role="assistant", content="a refusal", kind="notice"),
            NewMessage(role="assistant", content="handed back", kind="notice", author="leo"),
        ],
    )
    assert await store.last_message_id() == stored[-1].id
    humans = await store.operator_messages_after(0)
    assert humans == [stored[1], stored[3], stored[5]]
    assert await store.operator_messages_after(stored[1].id) == [stored[3], stored[5]]
    assert await store.operator_messages_after(0, limit=1) == [stored[1]]
    assert await store.operator_messages_after(stored[5].id) == []


# -- operators and sessions -------------------------------------------------------------------


async def test_operator_password_is_created_then_replaced(store: SQLStore) -> None:
    assert await store.operator_password_hash("mia") is None
    await store.set_operator_password("mia", "hash-1")
    await store.set_operator_password("leo", "hash-leo")
    await store.set_operator_password("mia", "hash-2")
    assert await store.operator_password_hash("mia") == "hash-2"
    assert await store.operator_password_hash("leo") == "hash-leo"
    assert await store.operator_password_hash("MIA") is None
    assert await store.operator_password_hash("x" * 200) is None  # a name the column could not hold
    with pytest.raises(StorageError, match="is 101 characters long; use a name of 1 to 100 characters"):
        await store.set_operator_password("m" * 101, "hash")
    await store.set_operator_password("m" * 100, "hash-long")
    assert await store.operator_password_hash("m" * 100) == "hash-long"


def _admin_session(id_hash: str, expires_at: datetime) -> AdminSession:
    return AdminSession(id_hash=id_hash, username="mia", csrf_token="c" * 64, created_at=NOW, expires_at=expires_at)


async def test_admin_sessions_expire_and_are_purged(store: SQLStore) -> None:
    live = _admin_session("a" * 64, NOW + timedelta(hours=8))
    expired = _admin_session("b" * 64, NOW - timedelta(seconds=1))
    ends_now = _admin_session("c" * 64, NOW)
    for session in (live, expired, ends_now):
        await store.create_admin_session(session)
    assert await store.get_admin_session(live.id_hash, now=NOW) == live
    assert await store.get_admin_session(expired.id_hash, now=NOW) is None
    assert await store.get_admin_session(ends_now.id_hash, now=NOW) is None
    assert await store.get_admin_session(expired.id_hash, now=NOW - timedelta(hours=1)) == expired
    assert await store.get_admin_session("d" * 64, now=NOW) is None
    assert await store.get_admin_session(live.id_hash) is None  # NOW is long past

    with pytest.raises(StorageError):
        await store.create_admin_session(live)  # the same secret twice

    assert await store.purge_admin_sessions(now=NOW) == 2
    assert await store.purge_admin_sessions(now=NOW) == 0
    assert await store.get_admin_session(expired.id_hash, now=NOW - timedelta(hours=1)) is None
    assert await store.get_admin_session(live.id_hash, now=NOW) == live
    await store.delete_admin_session(live.id_hash)
    await store.delete_admin_session(live.id_hash)  # deleting twice is fine
    assert await store.get_admin_session(live.id_hash, now=NOW) is None
    assert await store.purge_admin_sessions() == 0
