"""The shared fixtures of tests/conftest.py: the network guard and database isolation."""

from __future__ import annotations

import asyncio
import socket

import pytest

from supportbot.store.sql import SQLStore


@pytest.mark.parametrize("address", [("10.255.255.1", 443), ("2001:db8::1", 443)])
def test_connecting_beyond_loopback_is_refused(address: tuple[str, int], network_attempts: list[str]) -> None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(RuntimeError, match="may only use 127"):
        sock.connect(address)
    assert len(network_attempts) == 1
    network_attempts.clear()


async def test_name_lookups_beyond_this_machine_are_refused(network_attempts: list[str]) -> None:
    with pytest.raises(RuntimeError, match=r"host 'example\.com'"):
        await asyncio.get_running_loop().getaddrinfo("example.com", 443)
    network_attempts.clear()


async def test_loopback_is_allowed() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        _, writer = await asyncio.open_connection("localhost", port)
        writer.close()
        await writer.wait_closed()


async def test_each_test_gets_an_empty_database(db_url: str) -> None:
    store = await SQLStore.open(db_url)
    try:
        assert await store.list_conversations() == []
        customer = await store.get_or_create_customer(email="ana@example.com", verified=True)
        await store.create_conversation(customer_id=customer.id, channel="web", flow="general")
    finally:
        await store.close()
