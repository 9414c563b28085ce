"""Who a widget user is: verified attributes are exactly the ones the host site signed.

Over real HTTP against a real server and SQLite; the order tool runs in real turns of the fake
model, so what these tests read is what a model would have been shown.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from connectors.web.security import identity_hash_v2, identity_token
from supportbot.runtime import open_runtime
from supportbot.server import DISPATCHER, build_app
from supportbot.testing.fake_llm import FakeLLMServer, Reply
from tests.connectors.web.conftest import SECRET, WebServer, hashed, signed, write_config

ANA = "ana@example.com"  # owns the example orders A1001 and A1002


def token(claims: dict[str, Any], *, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode({"sub": "42", "exp": int(time.time()) + 600, **claims}, secret, algorithm=algorithm)


async def post_user(server: WebServer, user: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with server.http.post(
        f"{server.url}/api/v1/conversations", json={"user": user, "flow": "order_status"}
    ) as response:
        return response.status, await response.json()


async def customer_of(server: WebServer, conversation: dict[str, Any]) -> Any:
    found = await server.runtime.store.get_conversation(conversation["id"])
    assert found is not None
    return await server.runtime.store.get_customer(found.customer_id)


async def ask_for_order(server: WebServer, conversation: dict[str, Any], order_id: str = "A1001") -> str:
    """A turn in which the model calls lookup_order; returns the tool result the model was given."""
    server.fake.script(Reply(tool_calls=[("lookup_order", {"order_id": order_id})]), Reply(text="done"))
    before = len(server.fake.requests)
    assert (await server.ask(conversation, f"Where is my order {order_id}?"))["status"] == "finished"
    results = [m for r in server.fake.requests[before:] for m in r.body["messages"] if m["role"] == "tool"]
    assert results, "the model was never given a tool result"
    return str(results[-1]["content"])


def shows_order(result: str) -> bool:
    return "TENT-2P-GRN" in result or "Trailhead" in result or "shipped" in result


# -- the attack of the issue ------------------------------------------------------------------------


async def test_own_valid_hash_with_someone_elses_email_reads_none_of_their_orders(server: WebServer) -> None:
    ana = await server.open(user=signed("ana-1", ANA, "Ana"), flow="order_status")
    ana_customer = await customer_of(server, ana)
    assert ana_customer.email == ANA and ana_customer.verified
    # Mallory is a real shop user with a valid hash for her own id, and edits the email in the page.
    status, mallory = await post_user(server, hashed("666", email=ANA, name="Mallory"))
    assert status == 201
    assert (mallory["verified"], mallory["email_verified"]) == (True, False)
    customer = await customer_of(server, mallory)
    assert customer.id != ana_customer.id
    assert (customer.external_id, customer.email, customer.verified) == ("web:666", None, True)
    result = await ask_for_order(server, mallory)
    assert not shows_order(result)
    assert "email address is not verified" in result
    # Ana, signed in by her token, still reads her own order.
    assert shows_order(await ask_for_order(server, ana))


async def test_own_valid_hash_with_someone_elses_email_creates_no_verified_email(server: WebServer) -> None:
    # Nobody with that email has chatted yet: the unsigned email must not become a verified one either.
    status, mallory = await post_user(server, hashed("666", email=ANA))
    assert status == 201 and mallory["email_verified"] is False
    assert (await customer_of(server, mallory)).email is None
    assert not shows_order(await ask_for_order(server, mallory))
    status, ana = await post_user(server, signed("ana-1", ANA))
    assert status == 201 and ana["email_verified"] is True
    assert (await customer_of(server, ana)).external_id == "web:ana-1"


async def test_an_unverified_conversation_with_a_verified_customers_email_stays_apart(server: WebServer) -> None:
    ana = await server.open(user=signed("42", ANA), flow="order_status")
    status, claimed = await post_user(server, {"id": "42", "email": ANA, "name": "Ana"})  # no signature
    assert status == 201 and claimed["verified"] is False
    customer = await customer_of(server, claimed)
    assert customer.id != (await customer_of(server, ana)).id and customer.verified is False
    assert not shows_order(await ask_for_order(server, claimed))


# -- the token ----------------------------------------------------------------------------------------


async def test_a_token_verifies_its_sub_email_and_name(server: WebServer) -> None:
    status, opened = await post_user(server, {"token": token({"sub": "42", "email": "Ana@Example.com", "name": "Ana"})})
    assert status == 201
    assert (opened["verified"], opened["email_verified"]) == (True, True)
    customer = await customer_of(server, opened)
    assert (customer.external_id, customer.email, customer.name) == ("web:42", ANA, "Ana")
    result = await ask_for_order(server, opened)
    assert "TENT-2P-GRN" in result


async def test_a_token_without_an_email_verifies_the_id_only(server: WebServer) -> None:
    status, opened = await post_user(server, {"token": token({"sub": "42"})})
    assert status == 201 and (opened["verified"], opened["email_verified"]) == (True, False)
    assert not shows_order(await ask_for_order(server, opened))


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: token({"exp": int(time.time()) - 120}), "expired 2 min ago"),
        (lambda: jwt.encode({"sub": "42", "exp": int(time.time()) + 600}, None, algorithm="none"), "alg 'none'"),
        (lambda: token({}, secret=SECRET * 2, algorithm="HS512"), "alg 'HS512', but only HS256"),
        (lambda: token({}, secret="another-secret-of-at-least-32-bytes!"), "signature does not verify"),
        (lambda: jwt.encode({"sub": "42"}, SECRET, algorithm="HS256"), "no 'exp' claim"),
        (lambda: jwt.encode({"exp": int(time.time()) + 600}, SECRET, algorithm="HS256"), "no 'sub' claim"),
        (lambda: token({"exp": int(time.time()) + 365 * 86400}), "at most 7 days"),
        (lambda: token({"email": "not an email"}), "'email' must be an email address"),
        (lambda: "not-a-token", "not a JWT"),
    ],
    ids=["expired", "alg-none", "other-alg", "wrong-secret", "no-exp", "no-sub", "forever", "bad-email", "garbage"],
)
async def test_a_token_that_does_not_verify_is_refused_with_what_to_fix(
    server: WebServer, make: Any, says: str
) -> None:
    status, body = await post_user(server, {"token": make()})
    assert status == 403
    assert body["error"]["code"] == "identity_invalid"
    assert says in body["error"]["message"]
    assert body["error"]["message"].startswith("user.token")


async def test_a_token_within_the_clock_skew_leeway_is_accepted(server: WebServer) -> None:
    status, opened = await post_user(server, {"token": token({"exp": int(time.time()) - 20, "email": ANA})})
    assert status == 201 and opened["email_verified"] is True


async def test_an_id_beside_a_token_for_another_id_is_refused(server: WebServer) -> None:
    # The token wins nothing by default: a page that sends another id than it signed is refused.
    status, body = await post_user(server, {"token": token({"sub": "42", "email": ANA}), "id": "43"})
    assert status == 403 and body["error"]["code"] == "identity_invalid"
    assert "user.id '43' is not what user.token signs (its 'sub' is '42')" in body["error"]["message"]
    status, body = await post_user(server, {"token": token({"sub": "42", "email": ANA}), "email": "ben@example.com"})
    assert status == 403 and "user.email 'ben@example.com'" in body["error"]["message"]
    status, body = await post_user(server, {"token": token({"sub": "42"}), "email": ANA})
    assert status == 403 and "it has no 'email' claim" in body["error"]["message"]


async def test_fields_beside_a_token_that_agree_with_it_are_fine(server: WebServer) -> None:
    user = {"token": token({"sub": "42", "email": ANA, "name": "Ana"}), "id": "42", "email": "ANA@example.com"}
    status, opened = await post_user(server, {**user, "name": "Ana"})
    assert status == 201 and opened["email_verified"] is True


async def test_a_token_and_a_hash_together_are_refused(server: WebServer) -> None:
    status, body = await post_user(server, {"token": token({}), **hashed("42")})
    assert status == 400 and "not both" in body["error"]["message"]


# -- the hashes -----------------------------------------------------------------------------------


async def test_a_v2_hash_verifies_the_id_and_the_email(server: WebServer) -> None:
    user = {"id": "42", "email": ANA, "hash": identity_hash_v2(SECRET, "42", ANA)}
    status, opened = await post_user(server, user)
    assert status == 201 and (opened["verified"], opened["email_verified"]) == (True, True)
    assert "TENT-2P-GRN" in await ask_for_order(server, opened)
    status, body = await post_user(server, {**user, "email": "ben@example.com"})  # the email edited in the page
    assert status == 403 and body["error"]["code"] == "identity_invalid"
    status, body = await post_user(server, {"id": "42", "hash": user["hash"]})
    assert status == 403 and "send both" in body["error"]["message"]


async def test_a_hash_without_an_id_is_refused(server: WebServer) -> None:
    status, body = await post_user(server, {"email": ANA, "hash": hashed(ANA)["hash"]})
    assert status == 400 and "user.hash signs user.id" in body["error"]["message"]


async def test_a_line_break_in_an_id_is_refused(server: WebServer) -> None:
    status, body = await post_user(server, {"id": "42\nana@example.com", "hash": "v2:00"})
    assert status == 400 and body["error"]["message"].startswith("user.id:")


# -- the demo -------------------------------------------------------------------------------------


async def test_the_demo_page_signs_in_its_customer_whose_orders_the_demo_model_reads(
    tmp_path: Path, fake: FakeLLMServer
) -> None:
    config = write_config(tmp_path, fake, f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}",
                          {"web": {"identity_secret": None}})  # fmt: skip
    runtime = await open_runtime(config, demo=True)
    app = build_app(runtime)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/") as response:
                page = await response.text()
            boot = re.search(r"Supportbot\('boot', (\{.*?\})\);", page)
            assert boot, page
            user = json.loads(boot.group(1))["user"]
            assert set(user) == {"token"}  # everything about the customer is inside the signed token
            async with http.post(f"{base}/api/v1/conversations", json={"user": user}) as response:
                assert response.status == 201, await response.text()
                opened = await response.json()
            assert (opened["verified"], opened["email_verified"]) == (True, True)
            async with http.post(
                f"{base}/api/v1/conversations/{opened['id']}/messages?stream=false",
                json={"text": "Where is my order A1001?"},
                headers={"Authorization": f"Bearer {opened['token']}"},
            ) as response:
                reply = await response.json()
        assert "A1001" in reply["message"]["text"] and "shipped" in reply["message"]["text"], reply
    finally:
        await app[DISPATCHER].drain(5)
        await runner.cleanup()
        await runtime.aclose()


@pytest.mark.parametrize("settings", [{"web": {"identity_secret": "short-secret"}}], indirect=True)
async def test_a_short_secret_still_works_and_the_operator_is_told_once(
    server: WebServer, caplog: pytest.LogCaptureFixture
) -> None:
    warned = [r.getMessage() for r in caplog.get_records("setup") if r.name == "supportbot.web"]
    assert any("identity_secret is 12 bytes; HS256 wants at least 32" in m for m in warned), warned
    user = {"token": identity_token("short-secret", "42", email=ANA)}
    status, opened = await post_user(server, user)  # no InsecureKeyLengthWarning at every use (an error here)
    assert status == 201 and opened["email_verified"] is True
