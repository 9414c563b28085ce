"""The conversation REST/SSE API against a real server, the fake model and SQLite."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import aiohttp
import pytest

from supportbot.testing.fake_llm import Fail, Reply
from tests.connectors.web.conftest import OTHER_ORIGIN, WebServer, signed

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()


def auth(conversation: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {conversation['token']}"}


async def sse_events(response: aiohttp.ClientResponse) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of each event of an SSE stream, parsed the way a browser would."""
    events, ident, name, data = [], "", "", []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                events.append((ident, name, json.loads("\n".join(data))))
            ident, name, data = "", "", []
        elif line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
    return events


async def test_a_conversation_opens_with_a_token_and_the_flow_greeting(server: WebServer) -> None:
    opened = await server.open()
    assert len(opened["token"]) >= 43  # 256 bits, base64url
    assert opened["verified"] is False
    assert opened["greeting"].startswith("Hi there!")
    async with server.http.get(f"{server.url}/api/v1/conversations/{opened['id']}/messages", headers=auth(opened)) as r:
        history = await r.json()
    assert [(m["role"], m["kind"]) for m in history["messages"]] == [("bot", "greeting")]
    assert history["live"] is None


async def test_the_token_is_stored_only_as_a_hash(server: WebServer) -> None:
    opened = await server.open()
    store: Any = server.runtime.store
    async with store._engine.connect() as connection:  # the raw table, as a database dump would show it
        from sqlalchemy import text

        rows = (await connection.execute(text("SELECT token_hash FROM conversation_tokens"))).all()
    assert len(rows) == 1
    assert opened["token"] not in rows[0][0]
    assert len(rows[0][0]) == 64


async def test_a_message_streams_its_reply_as_sse(server: WebServer) -> None:
    server.fake.token_delay = 0.01  # the client joins what arrives in one read
    server.fake.script(Reply(text="Hello there, how can I help?"))
    opened = await server.open()
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages", json={"text": "hi"}, headers=auth(opened)
    ) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = await sse_events(response)
    names = [name for _, name, _ in events]
    assert names[:2] == ["ack", "turn_started"]
    assert names[-1] == "turn_finished"
    deltas = [data for _, name, data in events if name == "delta"]
    assert len(deltas) > 1
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    assert "".join(d["text"] for d in deltas) == "Hello there, how can I help?"
    assert events[-1][2]["message"]["text"] == "Hello there, how can I help?"
    turn = events[0][2]["turn"]
    assert [ident for ident, _, _ in events] == [f"{turn}:{n}" for n in range(len(events))]


async def test_json_mode_waits_for_the_whole_reply(server: WebServer) -> None:
    server.fake.script(Reply(text="Shipped yesterday."))
    opened = await server.open()
    reply = await server.ask(opened, "where is it?")
    assert reply["status"] == "finished"
    assert reply["message"]["text"] == "Shipped yesterday."
    assert reply["message"]["role"] == "bot"


async def test_only_a_verified_customer_gets_order_details(server: WebServer) -> None:
    server.fake.script(
        Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})]), Reply(text="done"),
        Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})]), Reply(text="done"),
    )  # fmt: skip
    verified = await server.open(user=signed("42", "ana@example.com"), flow="order_status")
    assert verified["verified"] is True
    assert (await server.ask(verified, "order A1001?"))["status"] == "finished"
    anonymous = await server.open(user={"id": "42", "email": "ana@example.com", "name": "Ana"}, flow="order_status")
    assert anonymous["verified"] is False
    assert (await server.ask(anonymous, "order A1001?"))["status"] == "finished"
    results = [m for r in server.fake.requests for m in r.body["messages"] if m["role"] == "tool"]
    assert "TENT-2P-GRN" in results[0]["content"] or "Trailhead" in results[0]["content"]
    assert "not verified" in results[-1]["content"]


async def test_a_wrong_identity_hash_is_refused(server: WebServer) -> None:
    user = {**signed("42", "ana@example.com"), "id": "43"}  # the hash of another user
    async with server.http.post(f"{server.url}/api/v1/conversations", json={"user": user}) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "identity_invalid"


@pytest.mark.parametrize("token", [None, "wrong", "other"])
async def test_a_token_opens_only_its_own_conversation(server: WebServer, token: str | None) -> None:
    mine, other = await server.open(), await server.open()
    headers = {} if token is None else {"Authorization": f"Bearer {other['token'] if token == 'other' else token}"}
    url = f"{server.url}/api/v1/conversations/{mine['id']}/messages"
    async with server.http.get(url, headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthorized"
    async with server.http.post(url, json={"text": "hi"}, headers=headers) as response:
        assert response.status == 401
    assert server.fake.request_count == 0


async def test_the_token_is_never_accepted_in_the_url(server: WebServer) -> None:
    opened = await server.open()
    url = f"{server.url}/api/v1/conversations/{opened['id']}/messages?token={opened['token']}"
    async with server.http.get(url) as response:
        assert response.status == 401


async def test_browsers_from_other_origins_are_refused(server: WebServer) -> None:
    async with server.http.post(
        f"{server.url}/api/v1/conversations", json={}, headers={"Origin": "https://evil.example"}
    ) as response:
        assert response.status == 403
        body = await response.json()
    assert body["error"]["code"] == "origin_not_allowed"
    assert "allowed_origins" in body["error"]["message"]


async def test_an_allowed_origin_gets_cors_headers_and_a_preflight(server: WebServer) -> None:
    async with server.http.options(
        f"{server.url}/api/v1/conversations",
        headers={"Origin": OTHER_ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
    ) as response:  # fmt: skip
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == OTHER_ORIGIN
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    opened = await server.open(Origin=OTHER_ORIGIN)
    assert opened["id"]
    async with server.http.options(
        f"{server.url}/api/v1/conversations", headers={"Origin": "https://evil.example"}
    ) as response:
        assert response.status == 403  # a failed preflight: the browser sends nothing
        assert "Access-Control-Allow-Methods" not in response.headers


async def test_the_same_client_message_id_is_answered_once(server: WebServer) -> None:
    server.fake.script(Reply(text="first answer"))
    opened = await server.open()
    first = await server.ask(opened, "hello", client_message_id="abc-1")
    again = await server.ask(opened, "hello", client_message_id="abc-1")
    assert first["status"] == "finished"
    assert again["status"] == "duplicate"
    assert server.fake.request_count == 1
    messages = await server.runtime.store.list_messages(opened["id"])
    assert [m.content for m in messages if m.role == "user"] == ["hello"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"text": ""}, "text: write a message"),
        ({"text": 5}, "text: Input should be a valid string"),
        ({"text": "hi", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"text": "hi", "images": [{"url": "https://evil.example/x.png"}]}, "images[].url: send the image as a data"),
        ({"text": "hi", "images": [{"url": "data:text/html;base64,PGI+"}]}, "images[].url"),
        ({"text": "hi", "client_message_id": "a b"}, "client_message_id"),
    ],
)
async def test_bad_messages_get_a_400_that_says_what_is_wrong(
    server: WebServer, body: dict[str, Any], problem: str
) -> None:
    opened = await server.open()
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages", json=body, headers=auth(opened)
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "bad_request"
    assert problem in error["message"]


async def test_a_body_that_is_not_json_is_refused(server: WebServer) -> None:
    opened = await server.open()
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages", data=b"\xff\xfe binary", headers=auth(opened)
    ) as response:
        assert response.status == 400
        assert "JSON" in (await response.json())["error"]["message"]


async def test_an_oversized_body_is_refused_with_413(server: WebServer) -> None:
    opened = await server.open()
    huge = io.BytesIO(json.dumps({"text": "x" * (server.app._client_max_size + 10)}).encode())
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages", data=huge,
        headers={**auth(opened), "Content-Type": "application/json"},
    ) as response:  # fmt: skip
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "too_large"


async def test_a_long_message_is_kept_and_politely_refused(server: WebServer) -> None:
    opened = await server.open()
    reply = await server.ask(opened, "word " * 2000)  # 10,000 characters; the limit is 8,000
    assert "too long" in reply["message"]["text"]
    assert server.fake.request_count == 0
    assert any(m.role == "user" for m in await server.runtime.store.list_messages(opened["id"]))


async def test_an_image_reaches_the_model_as_image_input(server: WebServer) -> None:
    server.fake.script(Reply(text="I see an error dialog."))
    opened = await server.open()
    reply = await server.ask(opened, "what is this error?", images=[{"url": PNG}])
    assert reply["message"]["text"] == "I see an error dialog."
    content = server.fake.requests[0].body["messages"][-1]["content"]
    assert [part["image_url"]["url"] for part in content if part["type"] == "image_url"] == [PNG]
    async with server.http.get(f"{server.url}/api/v1/conversations/{opened['id']}/messages", headers=auth(opened)) as r:
        history = await r.json()
    assert [m["images"] for m in history["messages"] if m["role"] == "customer"] == [1]


@pytest.mark.parametrize(
    "settings", [{"web": {"rate_limits": {"messages_per_minute_per_conversation": 2}}}], indirect=True
)
async def test_too_many_messages_get_429_with_retry_after(server: WebServer) -> None:
    server.fake.script(Reply(text="one"), Reply(text="two"))
    opened = await server.open()
    await server.ask(opened, "one")
    await server.ask(opened, "two")
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages", json={"text": "three"}, headers=auth(opened)
    ) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert (await response.json())["error"]["code"] == "rate_limited"


@pytest.mark.parametrize("settings", [{"web": {"rate_limits": {"conversations_per_hour_per_ip": 2}}}], indirect=True)
async def test_too_many_new_conversations_from_one_address_get_429(server: WebServer) -> None:
    await server.open()
    await server.open()
    async with server.http.post(f"{server.url}/api/v1/conversations", json={}) as response:
        assert response.status == 429
        assert "Retry-After" in response.headers


async def test_a_model_failure_streams_the_fallback_and_opens_a_ticket(server: WebServer) -> None:
    server.fake.script(Fail(500))
    opened = await server.open()
    reply = await server.ask(opened, "hello?")
    assert reply["status"] == "failed"
    assert "technical problem" in reply["message"]["text"]
    tickets = await server.runtime.store.list_tickets(conversation_id=opened["id"])
    assert [t.kind for t in tickets] == ["escalation"]


async def test_a_handoff_is_reported_and_the_bot_then_stays_silent(server: WebServer) -> None:
    server.fake.script(Reply(tool_calls=[("handoff_to_human", {"reason": "asked for a person"})]), Reply(text="ok"))
    opened = await server.open()
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages", json={"text": "a human please"},
        headers=auth(opened),
    ) as response:  # fmt: skip
        events = await sse_events(response)
    statuses = [data for _, name, data in events if name == "status"]
    assert statuses and statuses[0]["status"] == "human"
    requests = server.fake.request_count
    reply = await server.ask(opened, "hello?")
    assert reply["status"] == "waiting_for_human"
    assert server.fake.request_count == requests


async def test_a_client_that_goes_away_does_not_cut_the_turn_short(server: WebServer) -> None:
    server.fake.token_delay = 0.02
    server.fake.script(Reply(text="one two three four five six seven eight nine ten"))
    opened = await server.open()
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages", json={"text": "hi"}, headers=auth(opened)
    ) as response:
        await response.content.readline()  # the ack: then the client leaves
    for _ in range(200):
        messages = await server.runtime.store.list_messages(opened["id"])
        if messages[-1].role == "assistant" and messages[-1].content:
            break
        await asyncio.sleep(0.02)
    assert messages[-1].content == "one two three four five six seven eight nine ten"


async def test_the_openapi_document_describes_the_api(server: WebServer) -> None:
    async with server.http.get(f"{server.url}/api/v1/openapi.json") as response:
        spec = await response.json()
    assert spec["openapi"].startswith("3.1")
    assert {"/api/v1/conversations", "/api/v1/conversations/{id}/messages"} <= set(spec["paths"])
    assert "/api/v1/admin/tickets/{id}/reply" in spec["paths"]  # the admin API is described too
    # every $ref resolves
    refs = json.dumps(spec).split('"$ref": "#/')[1:]
    for ref in refs:
        node: Any = spec
        for part in ref.split('"')[0].split("/"):
            node = node[part]


async def test_an_empty_model_answer_reaches_the_customer_as_the_fallback_not_as_nothing(server: WebServer) -> None:
    server.fake.script(Reply(text="", finish_reason="content_filter"), Reply(text="", finish_reason="content_filter"))
    opened = await server.open()
    reply = await server.ask(opened, "hello?")
    assert reply["status"] == "failed"
    assert "technical problem" in reply["message"]["text"]
    async with server.http.get(f"{server.url}/api/v1/conversations/{opened['id']}/messages", headers=auth(opened)) as r:
        history = await r.json()
    bot = [m for m in history["messages"] if m["role"] == "bot"]
    assert [m["kind"] for m in bot] == ["greeting", "fallback"] and all(m["text"].strip() for m in bot)
    tickets = await server.runtime.store.list_tickets(conversation_id=opened["id"])
    assert [t.kind for t in tickets] == ["escalation"] and "content_filter" in tickets[0].subject
