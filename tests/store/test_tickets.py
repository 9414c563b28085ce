"""The rules on opening tickets hold atomically in every store, and across processes in the SQL ones.

* ``create_ticket_capped``: at most ``cap`` tickets of a kind per customer in a window;
* ``open_handoff_ticket``: at most one open handoff ticket per conversation.

Both used to be check-then-insert in the tools, and 50 parallel calls opened 45-49 tickets.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, timedelta
from pathlib import Path

import pytest

from supportbot.errors import StorageError
from supportbot.store.base import Store
from supportbot.store.sql import SQLStore
from tests.store.conftest import new_conversation

ROOT = Path(__file__).resolve().parents[2]


async def _customer_with_conversations(store: Store, email: str, count: int) -> tuple[str, list[str]]:
    customer = await store.get_or_create_customer(email=email, verified=True)
    conversations = [
        (await store.create_conversation(customer_id=customer.id, channel="web", flow="general")).id
        for _ in range(count)
    ]
    return customer.id, conversations


async def test_fifty_concurrent_capped_creates_open_exactly_the_cap(any_store: Store) -> None:
    customer, conversations = await _customer_with_conversations(any_store, "ana@example.com", 5)
    # Another kind of ticket of the same customer does not count against the cap on requests.
    await any_store.create_ticket(subject="outage", kind="escalation", customer_id=customer)

    outcomes = await asyncio.gather(
        *(
            any_store.create_ticket_capped(
                cap=3, subject=f"issue {n}", customer_id=customer, conversation_id=conversations[n % 5]
            )
            for n in range(50)
        )
    )

    created = [o.ticket for o in outcomes if o.created]
    assert len(created) == 3
    assert {o.ticket.id for o in outcomes if not o.created} <= {t.id for t in created}
    requests = [t for t in await any_store.list_tickets() if t.kind == "request"]
    assert sorted(t.id for t in requests) == sorted(t.id for t in created)
    assert all(t.customer_id == customer for t in requests)
    assert [e.action for e in await any_store.ticket_events(created[0].id)] == ["created"]

    # The cap is per customer: someone else still gets theirs.
    other, (theirs,) = await _customer_with_conversations(any_store, "ben@example.com", 1)
    outcome = await any_store.create_ticket_capped(cap=3, subject="ben's", customer_id=other, conversation_id=theirs)
    assert outcome.created and outcome.ticket.customer_id == other


async def test_refused_create_returns_the_latest_and_the_window_counts(any_store: Store) -> None:
    customer, (conversation,) = await _customer_with_conversations(any_store, "ana@example.com", 1)
    first = await any_store.create_ticket_capped(cap=2, subject="one", customer_id=customer)
    second = await any_store.create_ticket_capped(cap=2, subject="two", customer_id=customer)
    refused = await any_store.create_ticket_capped(cap=2, subject="three", customer_id=customer)
    assert (first.created, second.created, refused.created) == (True, True, False)
    assert refused.ticket == await any_store.get_ticket(second.ticket.id)

    # Tickets older than the window do not count.
    later = await any_store.create_ticket_capped(
        cap=2, subject="later", customer_id=customer, conversation_id=conversation, window=timedelta(0)
    )
    assert later.created and later.ticket.subject == "later"
    with pytest.raises(ValueError, match="cap must be at least 1, got 0"):
        await any_store.create_ticket_capped(cap=0, subject="never", customer_id=customer)


async def test_fifty_concurrent_handoffs_open_one_ticket(any_store: Store) -> None:
    customer, (conversation, other) = await _customer_with_conversations(any_store, "ana@example.com", 2)

    outcomes = await asyncio.gather(
        *(
            any_store.open_handoff_ticket(
                subject="Handoff", note=f"requested again {n}", conversation_id=conversation, customer_id=customer
            )
            for n in range(50)
        )
    )

    assert sum(o.created for o in outcomes) == 1
    (ticket,) = [o.ticket for o in outcomes if o.created]
    assert {o.ticket.id for o in outcomes} == {ticket.id}
    assert [(t.kind, t.status) for t in await any_store.list_tickets(conversation_id=conversation)] == [
        ("handoff", "open")
    ]
    events = await any_store.ticket_events(ticket.id)
    assert [e.action for e in events].count("note") == 49
    assert {e.detail for e in events if e.action == "note"} == {
        f"requested again {n}" for n in range(50) if not outcomes[n].created
    }

    # Other conversations, and other kinds of ticket, are not limited by it.
    elsewhere = await any_store.open_handoff_ticket(subject="Handoff", note="again", conversation_id=other)
    assert elsewhere.created and elsewhere.ticket.id != ticket.id
    await any_store.create_ticket(subject="request", conversation_id=conversation)
    await any_store.create_ticket(subject="request", conversation_id=conversation)


async def test_a_closed_handoff_makes_room_and_cannot_be_reopened_beside_the_new_one(any_store: Store) -> None:
    _, (conversation,) = await _customer_with_conversations(any_store, "ana@example.com", 1)
    first = await any_store.open_handoff_ticket(subject="first", note="again", conversation_id=conversation)
    await any_store.update_ticket(first.ticket.id, actor="ops", status="pending")
    assert not (await any_store.open_handoff_ticket(subject="x", note="again", conversation_id=conversation)).created
    await any_store.update_ticket(first.ticket.id, actor="ops", status="solved")

    second = await any_store.open_handoff_ticket(subject="second", note="again", conversation_id=conversation)
    assert second.created and second.ticket.id != first.ticket.id

    with pytest.raises(StorageError, match=rf"already has an open handoff ticket, #{second.ticket.id}; add to that"):
        await any_store.update_ticket(first.ticket.id, actor="ops", status="open")
    assert (await any_store.get_ticket(first.ticket.id)).status == "solved"  # type: ignore[union-attr]
    await any_store.update_ticket(first.ticket.id, actor="ops", status="closed", note="a solved ticket may close")


# -- across processes ------------------------------------------------------------------------------

RACER = """
import asyncio, sys
from supportbot.store.sql import SQLStore

async def main(url, customer, conversation, calls):
    store = await SQLStore.open(url, create=False)
    try:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        capped = [store.create_ticket_capped(cap=3, subject="race", customer_id=customer,
                                             conversation_id=conversation) for _ in range(calls)]
        handoffs = [store.open_handoff_ticket(subject="race", note="again", conversation_id=conversation,
                                              customer_id=customer) for _ in range(calls)]
        outcomes = await asyncio.gather(*capped, *handoffs)
        print(sum(o.created for o in outcomes[:calls]), sum(o.created for o in outcomes[calls:]), flush=True)
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def test_processes_racing_still_open_the_cap_and_one_handoff(db_url: str) -> None:
    setup = await SQLStore.open(db_url)
    try:
        customer, (conversation,) = await _customer_with_conversations(setup, "ana@example.com", 1)
    finally:
        await setup.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    racers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RACER,
            db_url,
            customer,
            conversation,
            "25",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        for _ in range(3)
    ]
    try:
        for racer in racers:  # every process has its store open before any of them starts
            assert racer.stdout is not None
            line = await asyncio.wait_for(racer.stdout.readline(), 60)
            assert line == b"ready\n", line + (await racer.stderr.read() if racer.stderr else b"")
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write(b"go\n")
            await racer.stdin.drain()
        results = [await asyncio.wait_for(racer.communicate(), 120) for racer in racers]
    finally:
        for racer in racers:
            if racer.returncode is None:
                racer.kill()
                await racer.wait()
    for racer, (_, err) in zip(racers, results, strict=True):
        assert racer.returncode == 0, err.decode()[-2000:]
    created = [tuple(int(n) for n in out.split()) for out, _ in results]
    assert sum(c[0] for c in created) == 3 and sum(c[1] for c in created) == 1, created

    check = await SQLStore.open(db_url)
    try:
        tickets = await check.list_tickets()
    finally:
        await check.close()
    assert sorted(t.kind for t in tickets) == ["handoff", "request", "request", "request"]


async def test_a_cap_per_conversation_counts_one_conversation_atomically(any_store: Store) -> None:
    # An unverified record is whoever claimed that email: each of its conversations has a cap of its own.
    claimed = await any_store.get_or_create_customer(email="ana@example.com", verified=False)
    mine, theirs = [
        (await any_store.create_conversation(customer_id=claimed.id, channel="web", flow="general")).id
        for _ in range(2)
    ]

    outcomes = await asyncio.gather(
        *(
            any_store.create_ticket_capped(
                cap=3, subject=f"issue {n}", customer_id=claimed.id, conversation_id=mine, per="conversation"
            )
            for n in range(50)
        )
    )

    assert sum(o.created for o in outcomes) == 3
    other = await any_store.create_ticket_capped(
        cap=3, subject="theirs", customer_id=claimed.id, conversation_id=theirs, per="conversation"
    )
    assert other.created and other.ticket.conversation_id == theirs
    with pytest.raises(ValueError, match="needs conversation_id"):
        await any_store.create_ticket_capped(cap=3, subject="never", customer_id=claimed.id, per="conversation")


async def test_ticket_lifecycle_with_events(any_store: Store) -> None:
    cid = await new_conversation(any_store)
    ticket = await any_store.create_ticket(
        subject="Parcel lost",
        description="A1001 never came",
        kind="handoff",
        priority="high",
        conversation_id=cid,
        channel="web",
        flow="general",
    )
    assert (ticket.id, ticket.status, ticket.priority, ticket.kind) == (ticket.id, "open", "high", "handoff")
    assert ticket.created_at is not None and ticket.created_at.tzinfo is UTC
    assert await any_store.get_ticket(ticket.id) == ticket

    updated = await any_store.update_ticket(
        ticket.id,
        actor="ops@acme.example",
        status="pending",
        assignee="ops",
        priority="high",
        note="called the carrier",
    )
    assert (updated.status, updated.assignee, updated.priority) == ("pending", "ops", "high")
    events = await any_store.ticket_events(ticket.id)
    assert [(e.action, e.detail, e.actor) for e in events] == [
        ("created", "handoff", "bot"),
        ("status", "pending", "ops@acme.example"),
        ("assignee", "ops", "ops@acme.example"),
        ("note", "called the carrier", "ops@acme.example"),
    ]
    assert all(e.ticket_id == ticket.id for e in events)
    same = await any_store.update_ticket(ticket.id, actor="ops", status="pending")
    assert same == updated and len(await any_store.ticket_events(ticket.id)) == 4

    with pytest.raises(StorageError, match="no ticket #999999"):
        await any_store.update_ticket(999999, actor="ops", status="closed")
    assert await any_store.get_ticket(999999) is None


async def test_list_tickets_filters_by_status_and_conversation(any_store: Store) -> None:
    cid = await new_conversation(any_store)
    first = await any_store.create_ticket(subject="one", conversation_id=cid)
    second = await any_store.create_ticket(subject="two")
    third = await any_store.create_ticket(subject="three", conversation_id=cid)
    await any_store.update_ticket(third.id, actor="ops", status="solved")
    assert [t.id for t in await any_store.list_tickets()] == [third.id, second.id, first.id]
    assert [t.id for t in await any_store.list_tickets(status="open")] == [second.id, first.id]
    assert [t.id for t in await any_store.list_tickets(conversation_id=cid)] == [third.id, first.id]
    assert [t.id for t in await any_store.list_tickets(conversation_id=cid, status="open")] == [first.id]
    assert len(await any_store.list_tickets(limit=1)) == 1
