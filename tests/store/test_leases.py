"""Leases and inbox lanes (``SQLStore``, SQLite and PostgreSQL): how several workers share one database's work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from supportbot.store.sql import SQLStore


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[SQLStore]:
    opened = await SQLStore.open(pg_url)
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_lease_is_held_by_one_owner_until_it_expires_or_is_released(store: SQLStore) -> None:
    assert await store.take_lease("lane:a", "w1", 30)
    assert not await store.take_lease("lane:a", "w2", 30)
    assert await store.take_lease("lane:a", "w1", 30)  # its holder takes it again: a renewal
    assert await store.renew_lease("lane:a", "w1", 30)
    assert not await store.renew_lease("lane:a", "w2", 30)
    await store.release_lease("lane:a", "w2")  # not w2's: nothing happens
    assert not await store.take_lease("lane:a", "w2", 30)
    await store.release_lease("lane:a", "w1")
    assert await store.take_lease("lane:a", "w2", 30)


async def test_an_expired_lease_passes_to_another_owner_and_its_old_holder_learns_it(store: SQLStore) -> None:
    assert await store.take_lease("lane:a", "w1", 0.05)
    assert await store.take_lease("lane:b", "w1", 30)
    await asyncio.sleep(0.1)
    assert await store.take_lease("lane:a", "w2", 30)
    assert await store.renew_leases("w1", ["lane:a", "lane:b"], 30) == {"lane:b"}  # lane:a is gone: w1 stops
    assert await store.renew_leases("w2", ["lane:a"], 30) == {"lane:a"}


async def test_of_many_owners_racing_for_one_lease_exactly_one_wins(store: SQLStore) -> None:
    won = await asyncio.gather(*(store.take_lease("receiver:email", f"w{n}", 30) for n in range(8)))
    assert won.count(True) == 1


async def test_a_lanes_next_message_is_its_oldest_unanswered_one(store: SQLStore) -> None:
    first = await store.inbox_add("web", "m1", {"text": "one"}, lane="c1")
    second = await store.inbox_add("web", "m2", {"text": "two"}, lane="c1")
    await store.inbox_add("web", "m3", {"text": "other"}, lane="c2")
    assert first is not None and second is not None
    found = await store.inbox_next("c1")
    assert found is not None and (found.id, found.lane) == (first, "c1")
    await store.inbox_set_status(first, "stored")
    found = await store.inbox_next("c1")
    assert found is not None and found.id == first  # stored is unanswered still: its turn was cut off
    await store.inbox_set_status(first, "done")
    found = await store.inbox_next("c1")
    assert found is not None and found.id == second
    await store.inbox_set_status(second, "failed")
    assert await store.inbox_next("c1") is None


async def test_orphan_lanes_are_those_with_unanswered_messages_and_no_live_lease(store: SQLStore) -> None:
    await store.inbox_add("web", "m1", {"text": "one"}, lane="held")
    await store.inbox_add("web", "m2", {"text": "two"}, lane="free")
    await store.inbox_add("web", "m3", {"text": "three"}, lane="expired")
    done = await store.inbox_add("web", "m4", {"text": "four"}, lane="answered")
    assert done is not None
    await store.inbox_set_status(done, "done")
    await store.inbox_add("slack", "op1", {"type": "operator", "text": "hi"})  # no lane: no turn runs it
    assert await store.take_lease("lane:held", "w1", 30)
    assert await store.take_lease("lane:expired", "w1", 0.01)
    await asyncio.sleep(0.05)
    assert sorted(await store.inbox_orphan_lanes()) == ["expired", "free"]


async def test_an_outbox_row_is_sent_by_one_worker_and_a_backoff_holds_for_all(store: SQLStore) -> None:
    row = await store.outbox_add("web", {"kind": "answer", "text": "hi"})
    assert await store.outbox_attempt(row, owner="w1", lease_s=30) == 1
    assert await store.outbox_attempt(row, owner="w2", lease_s=30) is None  # w1 is sending it
    assert {o.id for o in await store.outbox_pending("web")} == {row}
    [pending] = await store.outbox_pending("web")
    assert pending.lease_until is not None and pending.lease_until > datetime.now(UTC)
    await store.outbox_mark_failed(row, error="503", retry_in=30)
    assert await store.outbox_attempt(row, owner="w2", lease_s=30) is None  # waiting out w1's backoff
    await store.outbox_mark_failed(row, error="503", retry_in=-1)
    assert await store.outbox_attempt(row, owner="w2", lease_s=30) == 2
    assert await store.outbox_mark_sent(row, "x1")
    assert await store.outbox_attempt(row, owner="w1", lease_s=30) is None  # sent: nobody's to send


async def test_a_dead_workers_send_lease_expires_and_a_live_ones_is_renewed(store: SQLStore) -> None:
    dead = await store.outbox_add("web", {"kind": "answer", "text": "one"})
    live = await store.outbox_add("web", {"kind": "answer", "text": "two"})
    assert await store.outbox_attempt(dead, owner="w1", lease_s=0.05) == 1
    assert await store.outbox_attempt(live, owner="w2", lease_s=0.05) == 1
    await store.renew_sends("w2", [live], 30)
    await asyncio.sleep(0.1)
    assert await store.outbox_attempt(dead, owner="w3", lease_s=30) == 2  # w1 stopped renewing: w3 sends it
    assert await store.outbox_attempt(live, owner="w3", lease_s=30) is None


async def test_clearing_leases_frees_every_lane_and_send_for_a_lone_server_at_start(store: SQLStore) -> None:
    row = await store.outbox_add("web", {"kind": "answer", "text": "hi"})
    assert await store.outbox_attempt(row, owner="old", lease_s=300) == 1
    assert await store.take_lease("lane:c1", "old", 300)
    await store.clear_leases()
    assert await store.take_lease("lane:c1", "new", 30)
    assert await store.outbox_attempt(row, owner="new", lease_s=30) == 2


async def test_a_held_name_lets_one_holder_at_a_time_do_its_work(store: SQLStore) -> None:
    inside = peak = 0

    async def work() -> None:
        nonlocal inside, peak
        async with store.hold_lease("sent:ana"):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(work() for _ in range(8)))
    assert peak == 1
    assert await store.take_lease("sent:ana", "someone", 30)  # given back after each holder


async def test_a_lease_passed_to_a_waiting_owner_is_nobodys_until_it_expires(store: SQLStore) -> None:
    assert await store.take_lease("lane:c1", "w1", 30)
    assert await store.pass_lease("lane:c1", "w1", "w1/wait", 0.05)
    assert not await store.pass_lease("lane:c1", "w1", "w1/wait", 30)  # w1 holds it no more
    assert await store.renew_leases("w1", ["lane:c1"], 30) == set()  # not renewed with w1's own
    assert not await store.take_lease("lane:c1", "w2", 30)
    await asyncio.sleep(0.1)
    assert await store.take_lease("lane:c1", "w2", 30)


async def test_a_lease_its_owner_no_longer_names_is_left_to_expire(store: SQLStore) -> None:
    assert await store.take_lease("lane:done-with", "w1", 0.05)  # could not be given back (the database away)
    assert await store.take_lease("lane:working", "w1", 0.05)
    assert await store.renew_leases("w1", ["lane:working"], 30) == {"lane:working"}
    await asyncio.sleep(0.1)
    assert await store.take_lease("lane:done-with", "w2", 30)
    assert not await store.take_lease("lane:working", "w2", 30)


async def test_a_turn_whose_inbox_row_another_worker_took_stores_nothing(store: SQLStore) -> None:
    import pytest

    from supportbot.errors import TurnTaken
    from supportbot.store.base import NewMessage

    customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
    conversation = await store.create_conversation(customer_id=customer.id, channel="web", flow="general")
    inbox_id = await store.inbox_add("web", "m1", {"text": "hello"}, conversation.id, lane=conversation.id)
    assert inbox_id is not None
    await store.inbox_set_status(inbox_id, "done")  # another worker answered it while this one was away
    with pytest.raises(TurnTaken):
        await store.begin_turn(conversation.id, NewMessage(role="user", content="hello"), history=10, inbox_id=inbox_id)
    assert await store.list_messages(conversation.id) == []
    [row] = await store.inbox_pending(statuses=("done",))
    assert row.id == inbox_id  # left as the other worker set it
    await store.inbox_bind(inbox_id, "someone-else")  # a late keyed binding does not reopen it either
    [row] = await store.inbox_pending(statuses=("done",))
    assert row.conversation_id == conversation.id


@pytest.mark.postgres
async def test_on_postgresql_lease_times_come_from_the_database_clock_not_the_workers(
    pg_store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def clock(skew: timedelta) -> None:
        monkeypatch.setattr("supportbot.store._leases.now", lambda: datetime.now(UTC) + skew)

    # A worker whose clock is an hour behind takes a lease, and one whose clock is an hour ahead looks at it.
    await pg_store.inbox_add("web", "m1", {"text": "one"}, lane="c1")
    clock(-timedelta(hours=1))
    assert await pg_store.take_lease("lane:c1", "behind", 30)
    assert await pg_store.renew_leases("behind", ["lane:c1"], 30) == {"lane:c1"}
    clock(timedelta(hours=1))
    assert not await pg_store.take_lease("lane:c1", "ahead", 30)
    assert await pg_store.inbox_orphan_lanes() == []
    assert await pg_store.drop_stale_leases() == 0
    assert await pg_store.take_lease("receiver:email", "ahead", 30)
    clock(-timedelta(hours=1))
    assert not await pg_store.take_lease("receiver:email", "behind", 30)
    assert await pg_store.pass_lease("receiver:email", "ahead", "ahead/wait", 30)
    assert not await pg_store.take_lease("receiver:email", "behind", 30)


async def test_on_postgresql_a_replys_send_lease_and_backoff_come_from_the_database_clock(
    pg_store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def clock(skew: timedelta) -> None:
        monkeypatch.setattr("supportbot.store._mailbox.now", lambda: datetime.now(UTC) + skew)

    row = await pg_store.outbox_add("web", {"kind": "answer", "text": "hi"})
    clock(-timedelta(hours=1))  # a worker an hour behind sends it, and sets a backoff when that fails
    assert await pg_store.outbox_attempt(row, owner="behind", lease_s=30) == 1
    clock(timedelta(hours=1))  # one an hour ahead must see both as running still
    assert await pg_store.outbox_attempt(row, owner="ahead", lease_s=30) is None
    clock(-timedelta(hours=1))
    await pg_store.outbox_mark_failed(row, error="503", retry_in=30)
    clock(timedelta(hours=1))
    assert await pg_store.outbox_attempt(row, owner="ahead", lease_s=30) is None
    [pending] = await pg_store.outbox_pending("web")
    assert pending.lease_until is not None and 0 < (pending.lease_until - datetime.now(UTC)).total_seconds() <= 30


async def test_an_inbound_row_is_claimed_by_one_worker_and_not_again_once_done(store: SQLStore) -> None:
    inbox_id = await store.inbox_add("chat", "op1", {"type": "operator", "text": "On it."})
    assert inbox_id is not None
    assert await store.inbox_claim(inbox_id, "w1", 0.05)
    assert not await store.inbox_claim(inbox_id, "w2", 30)
    assert await store.inbox_claim(inbox_id, "w1", 0.05)  # its holder, again
    await store.inbox_set_status(inbox_id, "done")
    await asyncio.sleep(0.1)
    assert not await store.inbox_claim(inbox_id, "w2", 30)  # the claim expired, but the row is done
