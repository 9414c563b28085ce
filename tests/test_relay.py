"""Operators' replies reach open conversations, also when another process stored them."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from supportbot.dispatch import Dispatcher, StaffMessage, Subscription
from supportbot.operators import Operators, OperatorStore
from supportbot.relay import OperatorRelay
from supportbot.store.sql import SQLStore


async def _nothing_for(subscription: Subscription) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await subscription.next(within=0.05)


async def _conversation(store: SQLStore) -> str:
    customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
    conversation = await store.create_conversation(customer_id=customer.id, channel="web", flow="general")
    return conversation.id


async def test_a_reply_stored_by_another_process_is_delivered_once(store: SQLStore, _migrated_db_url: str) -> None:
    conversation_id = await _conversation(store)
    dispatcher = Dispatcher(cast(Any, None), store)
    relay = OperatorRelay(store, dispatcher, interval_s=3600)  # polled by hand below
    await relay.start()
    subscription = dispatcher.subscribe(conversation_id)
    try:
        other = await SQLStore.open(_migrated_db_url)  # "the CLI": its own connections, no relay
        try:
            message = await Operators(cast(OperatorStore, other)).reply(
                actor="cli:dana", text="Hello from the terminal", conversation_id=conversation_id
            )
        finally:
            await other.close()
        await _nothing_for(subscription)  # nothing pushed yet: another process stored it
        assert await relay.poll_once() == 1
        item = await subscription.next(within=1)
        assert isinstance(item, StaffMessage) and item.message.id == message.id
        assert item.message.content == "Hello from the terminal" and item.message.author == "cli:dana"
        assert await relay.poll_once() == 0
        await _nothing_for(subscription)
    finally:
        subscription.close()
        await relay.stop()


async def test_a_reply_made_here_is_pushed_at_once_and_not_again_by_the_poll(store: SQLStore) -> None:
    conversation_id = await _conversation(store)
    dispatcher = Dispatcher(cast(Any, None), store)
    relay = OperatorRelay(store, dispatcher, interval_s=3600)
    await relay.start()
    subscription = dispatcher.subscribe(conversation_id)
    try:
        operators = Operators(cast(OperatorStore, store), deliver=relay.deliver)
        message = await operators.reply(actor="dana", text="Right away", conversation_id=conversation_id)
        item = await subscription.next(within=1)
        assert isinstance(item, StaffMessage) and item.message.id == message.id
        assert await relay.poll_once() == 1  # seen in the table, but already delivered
        await _nothing_for(subscription)
    finally:
        subscription.close()
        await relay.stop()


async def test_the_relay_starts_after_the_replies_already_stored(store: SQLStore) -> None:
    conversation_id = await _conversation(store)
    await Operators(cast(OperatorStore, store)).reply(actor="dana", text="old", conversation_id=conversation_id)
    dispatcher = Dispatcher(cast(Any, None), store)
    relay = OperatorRelay(store, dispatcher, interval_s=3600)
    await relay.start()
    try:
        assert await relay.poll_once() == 0
    finally:
        await relay.stop()
