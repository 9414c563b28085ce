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
from tests.connectors.web.conftest import OTHER_ORIGIN, WebServer, hashed, signed

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
    user = {**hashed("42"), "id": "43"}  # the hash of another user
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


async def stored_rows(server: WebServer) -> tuple[int, int]:
    """How many rows the inbox and the messages tables hold, as a database dump would count them."""
    store: Any = server.runtime.store
    async with store._engine.connect() as connection:
        from sqlalchemy import text

        inbox = (await connection.execute(text("SELECT count(*) FROM inbox"))).scalar_one()
        messages = (await connection.execute(text("SELECT count(*) FROM messages"))).scalar_one()
    return inbox, messages


async def post(server: WebServer, conversation: dict[str, Any], body: Any) -> tuple[int, dict[str, Any]]:
    """Send a message (in a stream: a body of megabytes would block the loop) and wait for the reply as JSON."""
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{conversation['id']}/messages?stream=false",
        data=io.BytesIO(json.dumps(body).encode()), headers={**auth(conversation), "Content-Type": "application/json"},
    ) as response:  # fmt: skip
        return response.status, await response.json()


async def test_a_text_over_max_message_chars_is_refused_with_413_and_nothing_is_stored(server: WebServer) -> None:
    opened = await server.open()
    before = await stored_rows(server)
    status, body = await post(server, opened, {"text": "x" * 8001})  # the default limit is 8,000
    assert status == 413
    assert body["error"]["code"] == "too_large"
    assert "limits.max_message_chars" in body["error"]["message"] and "8,000" in body["error"]["message"]
    assert await stored_rows(server) == before
    assert server.fake.request_count == 0


async def test_a_text_lengthened_by_nfc_over_the_limit_is_refused(server: WebServer) -> None:
    opened = await server.open()
    before = await stored_rows(server)
    status, body = await post(server, opened, {"text": "\u0958" * 4001})  # 4,001 characters, 8,002 in NFC
    assert status == 413
    assert "8,002 characters" in body["error"]["message"]
    assert await stored_rows(server) == before


async def test_a_text_of_exactly_max_message_chars_is_accepted(server: WebServer) -> None:
    server.fake.script(Reply(text="That is a long one."))
    opened = await server.open()
    text = "é" * 7999 + "😀"  # 8,000 characters (the emoji is one), most of them two bytes in UTF-8
    reply = await server.ask(opened, text)
    assert reply["message"]["text"] == "That is a long one."
    sent = server.fake.requests[0].body["messages"][-1]["content"]
    assert sent == text or sent[-1]["text"] == text


@pytest.mark.parametrize(
    ("images", "limit"),
    [
        ([{"url": PNG}] * 5, "limits.max_images_per_message"),  # the default limit is 4
        ([{"url": "data:image/png;base64," + "A" * 6_666_672}], "limits.max_image_bytes"),  # 5,000,004 bytes
    ],
    ids=["too-many", "too-big"],
)
async def test_images_over_the_limits_are_refused_with_413_and_nothing_is_stored(
    server: WebServer, images: list[dict[str, str]], limit: str
) -> None:
    opened = await server.open()
    before = await stored_rows(server)
    status, body = await post(server, opened, {"text": "look", "images": images})
    assert status == 413
    assert body["error"]["code"] == "too_large" and limit in body["error"]["message"]
    assert await stored_rows(server) == before


@pytest.mark.parametrize(
    "settings", [{"limits": {"max_image_bytes": 1000, "max_images_per_message": 1, "max_message_chars": 100}}],
    indirect=True,
)  # fmt: skip
async def test_a_multi_megabyte_body_is_refused_with_413_before_it_is_parsed(server: WebServer) -> None:
    opened = await server.open()
    before = await stored_rows(server)
    limit = server.app._client_max_size
    assert limit < 10_000  # 100 characters and one 1,000-byte image: a few kilobytes, not ~27 MB
    huge = io.BytesIO(b"not even JSON " * 200_000)  # 2.8 MB; parsed, it would be a 400
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages", data=huge,
        headers={**auth(opened), "Content-Type": "application/json"},
    ) as response:  # fmt: skip
        assert response.status == 413
        error = (await response.json())["error"]
    assert error["code"] == "too_large"
    assert f"{limit:,} bytes" in error["message"] and "limits.max_message_chars" in error["message"]
    assert await stored_rows(server) == before


@pytest.mark.parametrize(
    "settings", [{"limits": {"max_image_bytes": 1000, "max_images_per_message": 1, "max_message_chars": 100}}],
    indirect=True,
)  # fmt: skip
async def test_the_largest_valid_message_fits_the_body_limit_even_fully_escaped(server: WebServer) -> None:
    server.fake.script(Reply(text="Got it."))
    opened = await server.open()
    image = "data:image/jpeg;base64," + base64.b64encode(b"\xff" * 999).decode()
    body = {"text": "😀" * 100, "images": [{"url": image}], "client_message_id": "c" * 100}
    escaped = json.dumps(body, indent=2).encode()  # ensure_ascii: each emoji is "\\ud83d\\ude00", 12 bytes
    assert len(escaped) <= server.app._client_max_size
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages?stream=false", data=escaped,
        headers={**auth(opened), "Content-Type": "application/json"},
    ) as response:  # fmt: skip
        assert response.status == 200, await response.text()
        assert (await response.json())["message"]["text"] == "Got it."


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
        asked = any(m.role == "user" for m in messages)  # stored when its turn starts, the greeting before it
        if asked and messages[-1].role == "assistant" and messages[-1].content:
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


async def test_a_confirmation_offers_yes_and_no_live_and_in_history_until_it_is_answered(server: WebServer) -> None:
    call = {"subject": "Broken tent pole", "description": "It snapped."}
    server.fake.script(Reply(tool_calls=[("create_ticket", call)]), Reply(text="Alright, no ticket."))
    opened = await server.open()
    reply = await server.ask(opened, "my pole broke")
    assert reply["message"]["kind"] == "confirmation" and reply["message"]["quick_replies"] == ["Yes", "No"]
    assert reply["message"]["text"].startswith("Shall I open a ticket “Broken tent pole” for the team?")
    url = f"{server.url}/api/v1/conversations/{opened['id']}/messages"
    async with server.http.get(url, headers=auth(opened)) as response:
        history = (await response.json())["messages"]
    assert history[-1]["kind"] == "confirmation" and history[-1]["quick_replies"] == ["Yes", "No"]
    assert all("quick_replies" not in m for m in history[:-1])
    await server.ask(opened, "No")
    async with server.http.get(url, headers=auth(opened)) as response:
        history = (await response.json())["messages"]
    assert [m["kind"] for m in history[-3:]] == ["confirmation", "normal", "normal"]
    assert all("quick_replies" not in m for m in history)  # answered: nothing to offer any more
    assert await server.runtime.store.list_tickets() == []


async def test_the_favicon_is_served(server: WebServer) -> None:
    async with server.http.get(f"{server.url}/favicon.ico") as response:
        assert response.status == 200
        assert response.content_type == "image/x-icon"
        body = await response.read()
    assert body[:4] == b"\x00\x00\x01\x00" and b"PNG" in body[:40]  # an icon file holding one PNG


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


async def test_a_message_sent_while_the_database_is_unreachable_is_refused_503_and_nothing_is_stored(
    server: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from supportbot.errors import StorageError

    opened = await server.open()

    async def away(*args: Any, **kwargs: Any) -> None:
        raise StorageError("database at postgresql://db/support: storing an inbound message failed: connection refused")

    monkeypatch.setattr(server.runtime.store, "inbox_add", away)
    async with server.http.post(
        f"{server.url}/api/v1/conversations/{opened['id']}/messages", json={"text": "hi"}, headers=auth(opened)
    ) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert (await response.json())["error"]["code"] == "storage_unavailable"
    monkeypatch.undo()
    assert [m.role for m in await server.runtime.store.list_messages(opened["id"])] == ["assistant"]  # the greeting
