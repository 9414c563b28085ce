"""The channels' side of the store: replies queued with their messages, the outbox's delivery
bookkeeping, channel state, conversation keys and addresses, and new tickets.

``add_messages(outgoing=…)`` is part of every store's contract (``any_store``); the rest is the
``Mailboxes`` protocol, which only ``SQLStore`` has (``store``: SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from supportbot.errors import StorageError
from supportbot.store import _mailbox, _tokens
from supportbot.store import sql as sql_module
from supportbot.store.base import NewMessage, Outgoing, Store
from supportbot.store.mailboxes import ChannelState, ConversationAddress
from supportbot.store.memory import MemoryStore
from supportbot.store.models import conversation_addresses, outbox
from supportbot.store.sql import SQLStore
from tests.store.conftest import raw_row, sqlalchemy_insert

AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


async def _conversation(store: Store, email: str = "ana@example.com", channel: str = "slack") -> str:
    customer = await store.get_or_create_customer(email=email, verified=True)
    return (await store.create_conversation(customer_id=customer.id, channel=channel, flow="general")).id


async def _queued(store: Store) -> list[tuple[str, str | None, int | None, Any]]:
    """What the store queued so far, as ``MemoryStore.outbox`` has it, oldest first."""
    if isinstance(store, MemoryStore):
        return list(store.outbox)
    assert isinstance(store, SQLStore)
    rows = [o for channel in ("slack", "web") for o in await store.outbox_pending(channel)]
    assert all((o.status, o.attempts, o.external_id, o.last_error) == ("pending", 0, None, None) for o in rows)
    return [(o.channel, o.conversation_id, o.message_id, o.payload) for o in sorted(rows, key=lambda o: o.id)]


REPLY = {"kind": "answer", "text": "Your parcel ships today. 📦", "turn": 7, "author": None}


# -- add_messages(outgoing=…): on every store ---------------------------------------------------


async def test_outgoing_is_queued_with_the_messages_and_names_the_last(any_store: Store) -> None:
    cid = await _conversation(any_store)
    await any_store.add_messages(cid, [NewMessage(role="user", content="where is my parcel?")])
    assert await _queued(any_store) == []  # no outgoing, no row
    stored = await any_store.add_messages(
        cid,
        [
            NewMessage(role="assistant", content=None, tool_calls=()),
            NewMessage(role="assistant", content=REPLY["text"]),
        ],
        outgoing=Outgoing(channel="slack", payload=REPLY),
    )
    assert await _queued(any_store) == [("slack", cid, stored[-1].id, REPLY)]
    # The messages were stored as without it, and counted.
    assert [m.id for m in await any_store.list_messages(cid)][-2:] == [m.id for m in stored]
    conversation = await any_store.get_conversation(cid)
    assert conversation is not None and conversation.turns == 1


async def test_no_outbox_row_when_the_messages_could_not_be_stored(any_store: Store) -> None:
    with pytest.raises(StorageError, match=r"no (such )?conversation"):
        await any_store.add_messages(
            "missing", [NewMessage(role="assistant", content="hi")], outgoing=Outgoing(channel="slack", payload=REPLY)
        )
    assert await _queued(any_store) == []
    cid = await _conversation(any_store)
    with pytest.raises(ValueError, match="outgoing names the last of the messages, but there are none"):
        await any_store.add_messages(cid, [], outgoing=Outgoing(channel="slack", payload=REPLY))
    assert await _queued(any_store) == []


async def test_queued_rows_of_the_hot_path_are_those_sqlalchemy_writes(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_module, "_now", lambda: AT)
    monkeypatch.setattr(_mailbox, "now", lambda: AT)
    cid = await _conversation(store)
    (message,) = await store.add_messages(
        cid, [NewMessage(role="assistant", content="hi")], outgoing=Outgoing(channel="slack", payload=REPLY)
    )
    orm = await store.outbox_add("slack", REPLY, conversation_id=cid, message_id=message.id)
    (hot_id,) = [o.id for o in await store.outbox_pending("slack") if o.id != orm]
    hot, written = await raw_row(store, outbox, "id", hot_id), await raw_row(store, outbox, "id", orm)
    del hot["id"], written["id"]
    assert hot == written
    (item,) = [o for o in await store.outbox_pending("slack") if o.id == hot_id]
    assert (item.payload, item.created_at, item.sent_at) == (REPLY, AT, None)

    monkeypatch.setattr(_tokens, "now", lambda: AT)
    other = await _conversation(store, "ben@example.com")
    address = {"channel": "C1", "thread_ts": "1700000000.000100", "ünï": [1, None, True]}
    await store.set_conversation_address(cid, channel="slack", key="T1:C1:1700000000.000100", address=address)
    await sqlalchemy_insert(store, conversation_addresses, {"conversation_id": other, "channel": "slack",
                             "key": "T1:C1:1700000000.000100", "address": address, "updated_at": AT})  # fmt: skip
    hot, written = (
        await raw_row(store, conversation_addresses, "conversation_id", cid),
        await raw_row(store, conversation_addresses, "conversation_id", other),
    )
    del hot["conversation_id"], written["conversation_id"]
    assert hot == written
    assert await store.conversation_address(other) == ConversationAddress(
        conversation_id=other, channel="slack", key="T1:C1:1700000000.000100", address=address
    )


# -- the outbox ---------------------------------------------------------------------------------


async def test_a_delivery_is_counted_before_it_is_sent_and_marked_sent_once(store: SQLStore) -> None:
    cid = await _conversation(store)
    (message,) = await store.add_messages(
        cid, [NewMessage(role="assistant", content="hi")], outgoing=Outgoing(channel="slack", payload=REPLY)
    )
    (row,) = await store.outbox_pending("slack")
    assert await store.outbox_attempt(row.id) == 1
    await store.outbox_mark_failed(row.id, error="ratelimited")
    assert await store.outbox_attempt(row.id) == 2
    assert await store.outbox_mark_sent(row.id, external_id="1700000000.000200") is True
    assert await store.outbox_mark_sent(row.id, external_id="1700000000.000200") is False  # another worker's
    assert await store.outbox_attempt(row.id) is None  # not pending: nothing to send

    sent = await store.outbox_get(row.id)
    assert sent is not None
    assert (sent.status, sent.attempts, sent.external_id, sent.message_id) == (
        "sent", 2, "1700000000.000200", message.id,
    )  # fmt: skip
    assert sent.last_error == "ratelimited"  # what the failed attempt left
    assert sent.sent_at is not None and sent.sent_at.tzinfo is UTC
    assert await store.outbox_pending("slack") == []
    assert await store.outbox_find("slack", "1700000000.000200") == sent
    assert await store.outbox_find("slack", "1700000000.999999") is None
    assert await store.outbox_find("email", "1700000000.000200") is None
    assert await store.outbox_get(row.id + 1000) is None
    assert await store.outbox_attempt(row.id + 1000) is None
    assert await store.outbox_mark_sent(row.id + 1000, external_id="x") is False

    # One channel message is one reply: its id cannot name a second row.
    second = await store.outbox_add("slack", {"kind": "notice", "text": "x"}, conversation_id=cid)
    with pytest.raises(StorageError, match=f"marking reply {second} sent"):
        await store.outbox_mark_sent(second, external_id="1700000000.000200")
    assert [o.id for o in await store.outbox_pending("slack")] == [second]


async def test_failed_deliveries_keep_their_error_and_given_up_rows_are_listed(store: SQLStore) -> None:
    assert await store.outbox_failed() == []
    ids = [await store.outbox_add("slack", {"n": n}) for n in range(4)]
    await store.outbox_mark_failed(ids[0], error="channel_not_found", give_up=True)
    await store.outbox_mark_failed(ids[1], error="timeout")  # pending still: it is retried
    await store.outbox_mark_failed(ids[2], error="x" * 5000, give_up=True)
    assert await store.outbox_mark_sent(ids[3]) is True

    failed = await store.outbox_failed()
    assert [(o.id, o.status, o.attempts) for o in failed] == [(ids[2], "failed", 0), (ids[0], "failed", 0)]
    assert failed[1].last_error == "channel_not_found"
    error = failed[0].last_error
    assert error is not None and len(error) == _mailbox.ERROR_LIMIT and error.startswith("xxx")
    assert [o.id for o in await store.outbox_failed(limit=1)] == [ids[2]]
    (retried,) = await store.outbox_pending("slack")
    assert (retried.id, retried.last_error) == (ids[1], "timeout")

    for given_up_or_sent in (ids[0], ids[3]):
        with pytest.raises(StorageError, match=f"outbox reply {given_up_or_sent} does not exist or is not pending"):
            await store.outbox_mark_failed(given_up_or_sent, error="again")
    with pytest.raises(StorageError, match="does not exist or is not pending"):
        await store.outbox_mark_failed(ids[-1] + 1000, error="no such row", give_up=True)
    assert await store.outbox_mark_sent(ids[0]) is False  # given up on: never sent after all


async def test_outbox_add_sets_the_channel_state_in_the_same_transaction(store: SQLStore) -> None:
    cursor = ChannelState(channel="slack", key="relay:C9", value="1700000000.000100")
    queued = await store.outbox_add("web", {"kind": "operator", "text": "On it."}, state=cursor)
    assert [o.id for o in await store.outbox_pending("web")] == [queued]
    assert await store.channel_state("slack", "relay:C9") == "1700000000.000100"

    # The row is refused (no such message): the state stays as it was.
    later = ChannelState(channel="slack", key="relay:C9", value="1700000000.000200")
    with pytest.raises(StorageError, match="queueing a reply"):
        await store.outbox_add("web", {"text": "lost"}, message_id=987654321, state=later)
    assert await store.channel_state("slack", "relay:C9") == "1700000000.000100"
    assert [o.id for o in await store.outbox_pending("web")] == [queued]

    await store.outbox_add("web", {"text": "next"}, state=later)
    assert await store.channel_state("slack", "relay:C9") == "1700000000.000200"


# -- channel state ------------------------------------------------------------------------------


async def test_channel_state_is_set_and_replaced_per_channel_and_key(store: SQLStore) -> None:
    assert await store.channel_state("slack", "cursor") is None
    await store.set_channel_state(ChannelState(channel="slack", key="cursor", value="1"))
    await store.set_channel_state(ChannelState(channel="email", key="cursor", value="uid:7"))
    await store.set_channel_state(ChannelState(channel="slack", key="cursor", value="2"))
    assert await store.channel_state("slack", "cursor") == "2"
    assert await store.channel_state("email", "cursor") == "uid:7"
    assert await store.channel_state("slack", "other") is None

    # Racing writers of one key: each is an upsert, none fails, one value wins.
    values = [str(n) for n in range(10)]
    await asyncio.gather(*(store.set_channel_state(ChannelState(channel="slack", key="race", value=v)) for v in values))
    assert await store.channel_state("slack", "race") in values

    with pytest.raises(ValueError, match="is 256 characters long, more than the 255"):
        await store.set_channel_state(ChannelState(channel="slack", key="k" * 256, value="x"))


# -- conversation keys and addresses ------------------------------------------------------------


async def test_a_key_finds_the_newest_conversation_bound_to_it(store: SQLStore) -> None:
    key = "T1:C1:1700000000.000100"
    assert await store.conversation_for_key("slack", key) is None
    older = await _conversation(store)
    newer = await _conversation(store)
    # Bound newest first: the answer goes by the conversations' age, not by the order of binding.
    await store.set_conversation_address(newer, channel="slack", key=key, address={"channel": "C1"})
    await store.set_conversation_address(older, channel="slack", key=key, address={"channel": "C1"})
    assert await store.conversation_for_key("slack", key) == newer
    assert await store.conversation_for_key("email", key) is None
    assert await store.conversation_for_key("slack", "T1:C1:other") is None

    # Rebinding the newer one elsewhere leaves the older one for the key.
    await store.set_conversation_address(newer, channel="slack", key="T1:C2", address={"channel": "C2"})
    assert await store.conversation_for_key("slack", key) == older
    assert await store.conversation_for_key("slack", "T1:C2") == newer


async def test_a_conversation_address_is_replaced_when_set_again(store: SQLStore) -> None:
    cid = await _conversation(store)
    assert await store.conversation_address(cid) is None
    await store.set_conversation_address(cid, channel="slack", key="T1:D1", address={"channel": "D1"})
    await store.set_conversation_address(
        cid, channel="slack", key="T1:D1", address={"channel": "D1", "thread_ts": "1700000000.000300"}
    )
    assert await store.conversation_address(cid) == ConversationAddress(
        conversation_id=cid, channel="slack", key="T1:D1", address={"channel": "D1", "thread_ts": "1700000000.000300"}
    )
    # A channel without keys (the web widget's conversations are known by id) binds no key.
    await store.set_conversation_address(cid, channel="web", key=None, address={})
    assert await store.conversation_address(cid) == ConversationAddress(
        conversation_id=cid, channel="web", key=None, address={}
    )
    assert await store.conversation_for_key("slack", "T1:D1") is None

    # Racing writers (two messages of one conversation): upserts, none fails.
    await asyncio.gather(*(
        store.set_conversation_address(cid, channel="slack", key="T1:D1", address={"n": n}) for n in range(10)
    ))  # fmt: skip
    found = await store.conversation_address(cid)
    assert found is not None and found.address["n"] in range(10)

    with pytest.raises(StorageError, match="storing a conversation's address"):
        await store.set_conversation_address("missing", channel="slack", key="T1:D2", address={})
    with pytest.raises(ValueError, match="conversation key"):
        await store.set_conversation_address(cid, channel="email", key="<" + "m" * 300 + ">", address={})


# -- new tickets --------------------------------------------------------------------------------


async def test_tickets_after_an_id_oldest_first(store: SQLStore) -> None:
    assert await store.last_ticket_id() == 0
    assert await store.tickets_after(0) == []
    cid = await _conversation(store)
    first, second, third = [
        await store.create_ticket(subject=f"#{n}", conversation_id=cid, channel="slack") for n in range(3)
    ]
    assert await store.last_ticket_id() == third.id
    assert [t.id for t in await store.tickets_after(0)] == [first.id, second.id, third.id]
    assert await store.tickets_after(first.id, limit=1) == [second]
    assert await store.tickets_after(third.id) == []
