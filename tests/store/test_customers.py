"""Customers by identity: one contract for SQLite, PostgreSQL and the memory store.

A record is either verified (a channel proved who this is) or not, and the two never meet: a
claimed email never opens a proven customer's record, a proven identity never takes over a
claimed one, and a proven email is the one a channel proved last for that external id.
"""

from __future__ import annotations

import asyncio
from datetime import UTC

from supportbot.store.base import Store


async def test_a_claimed_email_never_opens_the_verified_customer(any_store: Store) -> None:
    ana = await any_store.get_or_create_customer(email="ana@example.com", external_id="web:42", verified=True)
    claimed = await any_store.get_or_create_customer(email="ANA@example.com", external_id="web:42", verified=False)
    assert claimed.id != ana.id and claimed.verified is False
    # ... and the claimed record never becomes the verified one either.
    again = await any_store.get_or_create_customer(email="ana@example.com", external_id="web:42", verified=True)
    assert again.id == ana.id


async def test_a_proven_identity_never_takes_over_a_claimed_record(any_store: Store) -> None:
    claimed = await any_store.get_or_create_customer(email="ben@example.com", verified=False)
    proven = await any_store.get_or_create_customer(email="ben@example.com", verified=True)
    assert proven.id != claimed.id and proven.verified is True


async def test_the_external_id_is_looked_up_before_the_email(any_store: Store) -> None:
    ana = await any_store.get_or_create_customer(email="ana@example.com", verified=True)  # e.g. from email
    shop_user = await any_store.get_or_create_customer(external_id="web:7", verified=True)  # id proven, no email
    assert shop_user.id != ana.id and shop_user.email is None
    # A later proof of both for web:7 finds web:7 first; ana's address is proven for it, so ana is who this is.
    found = await any_store.get_or_create_customer(email="ana@example.com", external_id="web:7", verified=True)
    assert found.id == ana.id
    stale = await any_store.get_customer(shop_user.id)
    assert stale is not None and stale.email is None


async def test_a_newly_proven_email_replaces_the_old_one(any_store: Store) -> None:
    first = await any_store.get_or_create_customer(email="old@example.com", external_id="web:42", verified=True)
    moved = await any_store.get_or_create_customer(email="new@example.com", external_id="web:42", verified=True)
    assert moved.id == first.id and moved.email == "new@example.com"
    # The old address is nobody's proven one any more: a proof of it makes a new customer.
    other = await any_store.get_or_create_customer(email="old@example.com", verified=True)
    assert other.id != first.id


async def test_a_proven_email_held_by_another_record_leads_to_that_record(any_store: Store) -> None:
    owner = await any_store.get_or_create_customer(email="ana@example.com", external_id="slack:T1:U1", verified=True)
    web = await any_store.get_or_create_customer(email="old@example.com", external_id="web:42", verified=True)
    found = await any_store.get_or_create_customer(email="ana@example.com", external_id="web:42", verified=True)
    assert found.id == owner.id and found.email == "ana@example.com"
    left = await any_store.get_customer(web.id)
    assert left is not None and left.email is None  # the old address is no longer proven for web:42
    # The id alone (e.g. an id-only signature) now finds a record with no email to read orders by.
    by_id = await any_store.get_or_create_customer(external_id="web:42", verified=True)
    assert by_id.id == web.id and by_id.email is None


async def test_an_unverified_call_keeps_the_first_claimed_email(any_store: Store) -> None:
    first = await any_store.get_or_create_customer(email="a@example.com", external_id="web:9", verified=False)
    again = await any_store.get_or_create_customer(email="b@example.com", external_id="web:9", verified=False)
    assert again.id == first.id and again.email == "a@example.com"


async def test_customer_is_found_by_email_case_insensitively(any_store: Store) -> None:
    first = await any_store.get_or_create_customer(email="Ana@Example.COM", name="Ana Lima", verified=True)
    again = await any_store.get_or_create_customer(email=" ana@example.com", verified=True)
    assert again.id == first.id
    assert again.email == "ana@example.com"
    assert again.name == "Ana Lima"
    assert again.created_at is not None and again.created_at.tzinfo is UTC
    assert await any_store.get_customer(first.id) == first


async def test_customer_is_found_by_external_id_and_missing_fields_are_filled(any_store: Store) -> None:
    first = await any_store.get_or_create_customer(external_id="slack:T1:U1", verified=True)
    again = await any_store.get_or_create_customer(
        external_id="slack:T1:U1", email="Ben@Example.com", name="Ben", verified=True
    )
    assert again.id == first.id
    assert (again.email, again.name, again.external_id) == ("ben@example.com", "Ben", "slack:T1:U1")
    assert (await any_store.get_or_create_customer(email="ben@example.com", verified=True)).id == first.id


async def test_unverified_identity_never_gets_the_verified_record(any_store: Store) -> None:
    verified = await any_store.get_or_create_customer(email="ana@example.com", verified=True)
    claimed = await any_store.get_or_create_customer(email="ANA@example.com", verified=False)
    assert claimed.id != verified.id
    assert claimed.verified is False
    assert (await any_store.get_or_create_customer(email="ana@example.com", verified=False)).id == claimed.id
    assert (await any_store.get_or_create_customer(email="ana@example.com", verified=True)).id == verified.id


async def test_concurrent_get_or_create_makes_one_customer(any_store: Store) -> None:
    found = await asyncio.gather(
        *(any_store.get_or_create_customer(email="c@example.com", verified=True) for _ in range(5))
    )
    assert len({c.id for c in found}) == 1


async def test_missing_customer_is_none(any_store: Store) -> None:
    assert await any_store.get_customer("nope") is None
