"""The fake Slack itself, driven by slack_sdk's own clients: it must speak Slack's wire format."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from connectors.slack.testing import (
    FakeSlack,
    app_mention,
    assistant_thread_started,
    block_actions_payload,
    event_callback,
    form_body,
    im_message,
    message_event,
    send_event,
    signed_headers,
    slack_json,
    url_verification,
)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CUSTOMER = "U0CUSTOMER1"
DM = "D0CUSTOMER1"
CHANNEL = "C0SUPPORT01"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        fake.add_user(CUSTOMER, email="ada@example.com", name="ada", real_name="Ada Lovelace")
        fake.add_channel(DM, is_im=True, user=CUSTOMER)
        fake.add_channel(CHANNEL, "support")
        yield fake


@pytest.fixture
def client(slack: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def slack_error(call: Any) -> str:
    """The ``error`` of a Web API call that must fail with ``ok: false``."""
    with pytest.raises(SlackApiError) as raised:
        await call
    return str(raised.value.response["error"])


# -- tokens and bodies ---------------------------------------------------------------------------------------


async def test_tokens_json_and_form_bodies(
    slack: FakeSlack, client: AsyncWebClient, http: aiohttp.ClientSession
) -> None:
    me = await client.auth_test()
    assert (me["user_id"], me["bot_id"], me["team_id"]) == (slack.bot_user_id, slack.bot_id, slack.team_id)

    async def raw(method: str, **kw: Any) -> tuple[int, Any]:
        async with http.post(slack.api_url + method, **kw) as response:
            return response.status, await response.json()

    assert await raw("auth.test") == (200, {"ok": False, "error": "not_authed"})
    assert await raw("auth.test", headers={"Authorization": "Bearer xoxb-wrong"}) == (
        200,
        {"ok": False, "error": "invalid_auth"},
    )
    # A JSON body's token does not count: Slack wants it in the Authorization header.
    assert (await raw("auth.test", json={"token": slack.bot_token}))[1]["error"] == "not_authed"
    app = AsyncWebClient(token=slack.app_token, base_url=slack.api_url)
    assert await slack_error(app.chat_postMessage(channel=CHANNEL, text="hi")) == "not_allowed_token_type"
    assert await slack_error(client.apps_connections_open(app_token=slack.bot_token)) == "not_allowed_token_type"

    # A form body, token in a field and blocks as a JSON string, as older clients send it.
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    form = {"token": slack.bot_token, "channel": CHANNEL, "text": "hi", "blocks": json.dumps(blocks)}
    status, body = await raw("chat.postMessage", data=form)
    assert status == 200 and body["ok"] and body["message"]["blocks"] == blocks
    call = slack.calls_to("chat.postMessage")[-1]
    assert call.ok and call.params["blocks"] == blocks and "token" not in call.params
    # slack_sdk sends users.info as a GET with query parameters.
    assert (await client.users_info(user=CUSTOMER))["user"]["id"] == CUSTOMER
    assert slack.calls_to("users.info")[0].params == {"user": CUSTOMER}


# -- users and conversations -----------------------------------------------------------------------------------


async def test_users_and_conversations(slack: FakeSlack, client: AsyncWebClient) -> None:
    user = (await client.users_info(user=CUSTOMER))["user"]
    assert user["profile"]["email"] == "ada@example.com" and user["real_name"] == "Ada Lovelace"
    assert user["deleted"] is False and user["is_bot"] is False
    slack.add_user("U0GONE00001", email="gone@example.com", deleted=True)
    assert (await client.users_info(user="U0GONE00001"))["user"]["deleted"] is True
    assert (await client.users_info(user=slack.bot_user_id))["user"]["is_bot"] is True
    assert await slack_error(client.users_info(user="U0NOBODY001")) == "user_not_found"

    dm = (await client.conversations_info(channel=DM))["channel"]
    assert dm["is_im"] is True and dm["user"] == CUSTOMER
    assert await slack_error(client.conversations_info(channel="C0NOWHERE01")) == "channel_not_found"
    assert await slack_error(client.conversations_info(channel="support")) == "channel_not_found"  # ids only

    for n in range(4):
        slack.add_channel(f"C0EXTRA000{n}", f"extra-{n}")
    slack.add_channel("G0PRIVATE01", "tickets", is_private=True)
    seen: list[str] = []
    cursor = None
    while True:
        page = await client.conversations_list(limit=2, cursor=cursor)
        assert len(page["channels"]) <= 2
        seen += [c["id"] for c in page["channels"]]
        cursor = page["response_metadata"]["next_cursor"]
        if not cursor:
            break
    assert seen == [CHANNEL, "C0EXTRA0000", "C0EXTRA0001", "C0EXTRA0002", "C0EXTRA0003"]  # public only by default
    every = await client.conversations_list(types="public_channel,private_channel,im", limit=100)
    assert {c["id"] for c in every["channels"]} == {*seen, "G0PRIVATE01", DM}
    assert await slack_error(client.conversations_list(cursor="not-a-cursor")) == "invalid_cursor"


# -- messages --------------------------------------------------------------------------------------------------


async def test_post_message_threads_metadata_and_history(slack: FakeSlack, client: AsyncWebClient) -> None:
    root = slack.add_message(CHANNEL, "My order A1001 is late", user=CUSTOMER)
    assert await slack_error(client.chat_postMessage(channel="C0NOWHERE01", text="x")) == "channel_not_found"
    assert await slack_error(client.api_call("chat.postMessage", json={"channel": CHANNEL})) == "no_text"
    metadata = {"event_type": "supportbot_reply", "event_payload": {"outbox_id": 7}}
    reply = await client.chat_postMessage(channel=CHANNEL, text="Looking.", thread_ts=root["ts"], metadata=metadata)
    assert reply["channel"] == CHANNEL and reply["message"]["thread_ts"] == root["ts"]
    by_name = await client.chat_postMessage(channel="#support", text="A new ticket")  # names work here
    by_user = await client.chat_postMessage(channel=CUSTOMER, text="Hello Ada")  # a user id: their DM
    assert (by_name["channel"], by_user["channel"]) == (CHANNEL, DM)
    stamps = [root["ts"], reply["ts"], by_name["ts"]]
    assert stamps == sorted(stamps, key=float) and len(set(stamps)) == 3
    assert all(len(ts.split(".")[1]) == 6 for ts in stamps)

    history = (await client.conversations_history(channel=CHANNEL))["messages"]
    assert [m["ts"] for m in history] == [by_name["ts"], root["ts"]]  # newest first, replies not listed
    assert history[1]["reply_count"] == 1 and history[1]["latest_reply"] == reply["ts"]
    thread = (await client.conversations_replies(channel=CHANNEL, ts=root["ts"]))["messages"]
    assert [m["ts"] for m in thread] == [root["ts"], reply["ts"]]
    # Without include_all_metadata Slack leaves out the payload.
    assert thread[1]["metadata"] == {"event_type": "supportbot_reply"}
    full = await client.conversations_replies(channel=CHANNEL, ts=root["ts"], include_all_metadata=True)
    assert full["messages"][1]["metadata"] == metadata
    assert await slack_error(client.conversations_replies(channel=CHANNEL, ts="1.000001")) == "thread_not_found"
    page = await client.conversations_history(channel=CHANNEL, limit=1)
    assert page["has_more"] is True and page["messages"][0]["ts"] == by_name["ts"]
    rest = await client.conversations_history(channel=CHANNEL, cursor=page["response_metadata"]["next_cursor"])
    assert [m["ts"] for m in rest["messages"]] == [root["ts"]]

    seen = slack.messages(CHANNEL)
    assert [(m["text"], m.get("thread_ts")) for m in seen] == [
        ("My order A1001 is late", root["ts"]),
        ("Looking.", root["ts"]),
        ("A new ticket", None),
    ]
    assert seen[1]["metadata"] == metadata and seen[1]["bot_id"] == slack.bot_id


async def test_update_delete_ephemeral_and_reactions(slack: FakeSlack, client: AsyncWebClient) -> None:
    customer = slack.add_message(DM, "hi", user=CUSTOMER)
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "Thinking..."}}]
    posted = await client.chat_postMessage(channel=DM, text="Thinking...", blocks=blocks)
    updated = await client.chat_update(channel=DM, ts=posted["ts"], text="It shipped.")
    assert updated["text"] == "It shipped." and "blocks" not in updated["message"]  # text without blocks drops them
    message = slack.messages(DM)[-1]
    assert message["text"] == "It shipped." and message["edited"]["user"] == slack.bot_user_id
    await client.chat_update(channel=DM, ts=posted["ts"], text="It shipped.", metadata={"event_type": "done"})
    assert slack.messages(DM)[-1]["metadata"] == {"event_type": "done", "event_payload": {}}
    assert await slack_error(client.chat_update(channel=DM, ts=customer["ts"], text="x")) == "cant_update_message"
    assert await slack_error(client.chat_update(channel=DM, ts="1.000001", text="x")) == "message_not_found"
    assert await slack_error(client.api_call("chat.update", json={"channel": DM, "ts": posted["ts"]})) == "no_text"

    await client.reactions_add(channel=DM, timestamp=customer["ts"], name="eyes")
    assert slack.messages(DM)[0]["reactions"] == [{"name": "eyes", "users": [slack.bot_user_id], "count": 1}]
    assert await slack_error(client.reactions_add(channel=DM, timestamp=customer["ts"], name="eyes")) == (
        "already_reacted"
    )
    assert await slack_error(client.reactions_add(channel=DM, timestamp=customer["ts"], name=":x:")) == "invalid_name"

    ephemeral = await client.chat_postEphemeral(channel=CHANNEL, user=CUSTOMER, text="Only you see this")
    assert slack.ephemerals[-1]["text"] == "Only you see this" and slack.ephemerals[-1]["ts"] == ephemeral["message_ts"]
    assert slack.messages(CHANNEL) == []
    await client.chat_delete(channel=DM, ts=posted["ts"])
    assert [m["ts"] for m in slack.messages(DM)] == [customer["ts"]]
    assert await slack_error(client.chat_delete(channel=DM, ts=customer["ts"])) == "cant_delete_message"


# -- native streaming ------------------------------------------------------------------------------------------


async def test_native_stream_lifecycle(slack: FakeSlack, client: AsyncWebClient) -> None:
    root = slack.add_message(CHANNEL, "<@U0FAKEBOT01> where is A1001?", user=CUSTOMER)
    start: dict[str, Any] = {"channel": CHANNEL, "thread_ts": root["ts"]}
    assert await slack_error(client.chat_startStream(**start)) == "missing_recipient_user_id"
    assert await slack_error(client.chat_startStream(**start, recipient_user_id=CUSTOMER)) == (
        "missing_recipient_team_id"
    )
    assert await slack_error(
        client.chat_startStream(**start, recipient_user_id="U0NOBODY001", recipient_team_id=slack.team_id)
    ) == ("user_not_found")
    assert await slack_error(client.api_call("chat.startStream", json={"channel": CHANNEL})) == "invalid_arguments"
    started = await client.chat_startStream(
        **start, recipient_user_id=CUSTOMER, recipient_team_id=slack.team_id, markdown_text="Your order "
    )
    ts = started["ts"]
    assert slack.messages(CHANNEL)[-1]["streaming"] is True
    await client.chat_appendStream(channel=CHANNEL, ts=ts, markdown_text="A1001 has ")
    assert await slack_error(client.chat_update(channel=CHANNEL, ts=ts, text="x")) == "streaming_state_conflict"
    assert await slack_error(client.chat_appendStream(channel=CHANNEL, ts=ts)) == "markdown_text_or_chunks_required"
    chunk = [{"type": "markdown_text", "text": "x"}]
    assert await slack_error(client.chat_appendStream(channel=CHANNEL, ts=ts, chunks=chunk)) == (
        "streaming_mode_mismatch"
    )
    feedback = [{"type": "context", "elements": [{"type": "mrkdwn", "text": "Was this helpful?"}]}]
    stopped = await client.chat_stopStream(channel=CHANNEL, ts=ts, markdown_text="shipped.", blocks=feedback)
    assert stopped["message"]["text"] == "Your order A1001 has shipped."
    final = slack.messages(CHANNEL)[-1]
    assert final["text"] == "Your order A1001 has shipped." and final["blocks"] == feedback
    assert final["thread_ts"] == root["ts"] and "streaming" not in final
    assert await slack_error(client.chat_appendStream(channel=CHANNEL, ts=ts, markdown_text="more")) == (
        "message_not_in_streaming_state"
    )
    assert await slack_error(client.chat_stopStream(channel=CHANNEL, ts=ts)) == "message_not_in_streaming_state"
    # In a DM no recipient is needed; a person's "stop" ends the stream for good.
    dm_root = slack.add_message(DM, "hi", user=CUSTOMER)
    dm_ts = (await client.chat_startStream(channel=DM, thread_ts=dm_root["ts"], markdown_text="Hel"))["ts"]
    slack.stop_stream_by_user(DM, dm_ts)
    assert await slack_error(client.chat_appendStream(channel=DM, ts=dm_ts, markdown_text="lo")) == "stopped_by_user"
    assert slack.messages(DM)[-1]["text"] == "Hel"


async def test_slack_sdk_chat_stream_helper(slack: FakeSlack, client: AsyncWebClient) -> None:
    root = slack.add_message(DM, "explain returns", user=CUSTOMER)
    streamer = await client.chat_stream(channel=DM, thread_ts=root["ts"], buffer_size=8)
    for piece in ["Returns ", "are free ", "within ", "30 days."]:
        await streamer.append(markdown_text=piece)
    await streamer.stop()
    assert slack.messages(DM)[-1]["text"] == "Returns are free within 30 days."
    methods = [c.method for c in slack.calls]
    assert methods == ["chat.startStream", "chat.appendStream", "chat.appendStream", "chat.stopStream"]
    assert slack.calls[0].params["chunks"] == [{"type": "markdown_text", "text": "Returns "}]  # 8 characters buffered


async def test_a_stream_expires_after_its_lifetime(client: AsyncWebClient) -> None:
    async with FakeSlack(stream_ttl=0) as slack:
        slack.add_channel(DM, is_im=True, user=CUSTOMER)
        root = slack.add_message(DM, "hi", user=CUSTOMER)
        expired = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
        ts = (await expired.chat_startStream(channel=DM, thread_ts=root["ts"], markdown_text="Part"))["ts"]
        assert await slack_error(expired.chat_appendStream(channel=DM, ts=ts, markdown_text="more")) == (
            "message_not_in_streaming_state"
        )
        assert slack.messages(DM)[-1]["text"] == "Part"  # what was streamed stays


# -- assistant threads ---------------------------------------------------------------------------------------


async def test_assistant_threads(slack: FakeSlack, client: AsyncWebClient) -> None:
    thread = slack.add_message(DM, "hi", user=CUSTOMER)["ts"]
    await client.assistant_threads_setStatus(
        channel_id=DM, thread_ts=thread, status="is thinking...", loading_messages=["Checking your order"]
    )
    assert slack.assistant_status[(DM, thread)] == "is thinking..."
    prompts = [{"title": "Track an order", "message": "Where is my order?"}]
    await client.assistant_threads_setSuggestedPrompts(channel_id=DM, thread_ts=thread, prompts=prompts, title="Try")
    await client.assistant_threads_setTitle(channel_id=DM, thread_ts=thread, title="Order A1001")
    assert slack.suggested_prompts[(DM, thread)] == {"title": "Try", "prompts": prompts}
    assert slack.titles[(DM, thread)] == "Order A1001"
    await client.chat_postMessage(channel=DM, thread_ts=thread, text="It shipped.")
    assert (DM, thread) not in slack.assistant_status  # a reply clears the status, as in Slack
    assert await slack_error(
        client.assistant_threads_setStatus(channel_id="D0NOWHERE01", thread_ts=thread, status="x")
    ) == ("channel_not_found")
    too_many = [f"step {n}" for n in range(11)]
    assert await slack_error(
        client.assistant_threads_setStatus(channel_id=DM, thread_ts=thread, status="x", loading_messages=too_many)
    ) == ("invalid_arguments")


# -- files -----------------------------------------------------------------------------------------------------


async def test_files_are_served_to_the_bot_token_only(
    slack: FakeSlack, client: AsyncWebClient, http: aiohttp.ClientSession
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    file = slack.add_file(png, "screenshot.png", "image/png", user=CUSTOMER)
    assert (await client.files_info(file=file["id"]))["file"]["url_private"] == file["url_private"]
    auth = {"Authorization": f"Bearer {slack.bot_token}"}
    for url in (file["url_private"], file["url_private_download"]):
        async with http.get(url, headers=auth) as response:
            assert response.status == 200 and response.content_type == "image/png" and await response.read() == png
    async with http.get(file["url_private_download"], allow_redirects=False) as response:
        assert response.status == 302
    async with http.get(file["url_private_download"]) as response:  # followed: Slack's sign-in page, a 200
        assert response.status == 200 and response.content_type == "text/html"
    assert slack.downloads == [(file["id"], True), (file["id"], True), (file["id"], False), (file["id"], False)]


# -- failures and rate limits --------------------------------------------------------------------------------


async def test_a_429_is_retried_after_retry_after_by_slack_sdk(slack: FakeSlack) -> None:
    slack.fail("chat.postMessage", status=429, retry_after=1)
    retrying = AsyncWebClient(
        token=slack.bot_token,
        base_url=slack.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
    )
    await retrying.chat_postMessage(channel=DM, text="Delivered once")
    first, second = slack.calls_to("chat.postMessage")
    assert (first.status, first.error, second.status, second.ok) == (429, "ratelimited", 200, True)
    assert second.at - first.at >= 1.0
    assert [m["text"] for m in slack.messages(DM)] == ["Delivered once"]


async def test_failure_injection(slack: FakeSlack, client: AsyncWebClient, http: aiohttp.ClientSession) -> None:
    slack.fail("chat.postMessage", status=429, retry_after=7)
    auth = {"Authorization": f"Bearer {slack.bot_token}"}
    async with http.post(slack.api_url + "chat.postMessage", json={"channel": DM, "text": "x"}, headers=auth) as r:
        assert (r.status, r.headers["Retry-After"], await r.json()) == (429, "7", {"ok": False, "error": "ratelimited"})
    slack.fail("chat.postMessage", times=2, error="channel_not_found")
    for _ in range(2):
        assert await slack_error(client.chat_postMessage(channel=DM, text="x")) == "channel_not_found"
    await client.chat_postMessage(channel=DM, text="now it works")
    slack.fail("users.info", status=503)
    async with http.get(slack.api_url + "users.info", params={"user": CUSTOMER}, headers=auth) as r:
        assert r.status == 503
    assert [m["text"] for m in slack.messages(DM)] == ["now it works"]  # failed calls change nothing
    slack.delay("auth.test", 0.2)
    began = time.monotonic()
    await client.auth_test()
    assert time.monotonic() - began >= 0.2


async def test_tier_limits_answer_429(slack: FakeSlack, client: AsyncWebClient, http: aiohttp.ClientSession) -> None:
    posted = await client.chat_postMessage(channel=DM, text="v0")
    slack.limit("chat.update", 2)
    for n in (1, 2):
        await client.chat_update(channel=DM, ts=posted["ts"], text=f"v{n}")
    auth = {"Authorization": f"Bearer {slack.bot_token}"}
    body = {"channel": DM, "ts": posted["ts"], "text": "v3"}
    async with http.post(slack.api_url + "chat.update", json=body, headers=auth) as r:
        assert r.status == 429 and 55 <= int(r.headers["Retry-After"]) <= 60
    assert slack.messages(DM)[-1]["text"] == "v2"

    async with FakeSlack(tier_limits=True) as limited:
        limited.add_channel(DM, is_im=True, user=CUSTOMER)
        limited.add_channel(CHANNEL, "support")
        tiered = AsyncWebClient(token=limited.bot_token, base_url=limited.api_url)
        await tiered.chat_postMessage(channel=DM, text="one")
        await tiered.chat_postMessage(channel=CHANNEL, text="another channel is counted apart")
        with pytest.raises(SlackApiError) as raised:
            await tiered.chat_postMessage(channel=DM, text="two in the same second")
        assert raised.value.response.status_code == 429


# -- signing and encoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["plain", "https://example.com/a/b?c=d", "caf\u00e9 \u2014 \u20ac", "emoji \U0001f600", 'quote " back \\ slash'],
)
def test_slack_json_is_compact_with_escaped_slashes_and_unicode(value: str) -> None:
    payload = {"text": value, "n": [1, True, None]}
    # Python's ensure_ascii escapes non-ASCII as Slack's encoder does (lowercase hex, surrogate pairs).
    expected = json.dumps(payload, separators=(",", ":")).replace("/", "\\/").encode()
    assert slack_json(payload) == expected
    assert json.loads(slack_json(payload)) == payload
    assert json.loads(slack_json(payload, escape_unicode=False)) == payload


def test_slack_json_escapes() -> None:
    assert slack_json({"url": "https://a.b/c"}) == b'{"url":"https:\\/\\/a.b\\/c"}'
    assert slack_json("\U0001f600") == b'"\\ud83d\\ude00"'
    assert slack_json("\x7f\n") == b'"\x7f\\n"'  # DEL stays raw, as with PHP's json_encode
    assert slack_json("caf\u00e9/", escape_unicode=False) == '"caf\u00e9\\/"'.encode()


async def test_signed_events_pass_slack_sdks_verifier() -> None:
    verifier = SignatureVerifier(SECRET)
    event = im_message("Is https://shop.example/orders/A1001 shipped? \u2014 \U0001f914", channel=DM, user=CUSTOMER)
    body = slack_json(event_callback(event))
    assert b"https:\\/\\/shop.example\\/orders\\/A1001" in body and b"\\ud83e\\udd14" in body and body.isascii()
    headers = signed_headers(body, SECRET)
    assert verifier.is_valid_request(body, headers)
    assert not verifier.is_valid_request(body.replace(b"A1001", b"A1002"), headers)  # altered body
    assert not verifier.is_valid_request(body, signed_headers(body, "another-secret"))
    old = signed_headers(body, SECRET, timestamp=int(time.time()) - 301)
    assert not verifier.is_valid_request(body, old)  # outside the 5-minute window
    # The \/ escapes survive the round trip: a receiver that re-encoded the parsed JSON would fail.
    parsed = json.loads(body)
    assert parsed["event"]["text"].startswith("Is https://shop.example/orders/A1001")
    assert not verifier.is_valid_request(json.dumps(parsed, separators=(",", ":")).encode(), headers)


def test_event_shapes() -> None:
    payload = event_callback(app_mention("<@U0FAKEBOT01> hi", channel=CHANNEL, user=CUSTOMER))
    assert list(payload)[:7] == ["token", "team_id", "api_app_id", "event", "type", "event_id", "event_time"]
    assert payload["type"] == "event_callback" and payload["event_id"].startswith("Ev")
    assert payload["authorizations"][0]["user_id"] == "U0FAKEBOT01" and payload["authorizations"][0]["is_bot"]
    elements = payload["event"]["blocks"][0]["elements"][0]["elements"]
    assert elements == [{"type": "user", "user_id": "U0FAKEBOT01"}, {"type": "text", "text": " hi"}]
    dm = im_message("hello", channel=DM, user=CUSTOMER, thread_ts="1.000001")
    assert (dm["channel_type"], dm["thread_ts"], dm["event_ts"]) == ("im", "1.000001", dm["ts"])
    with_file = message_event("see", channel=DM, user=CUSTOMER, files=[{"id": "F1"}])
    assert with_file["subtype"] == "file_share" and with_file["files"] == [{"id": "F1"}]
    changed = message_event("edited", channel=DM, user=CUSTOMER, subtype="message_changed")
    assert "user" not in changed and changed["message"]["text"] == "edited" and changed["hidden"] is True
    bot = message_event("beep", channel=CHANNEL, user="U0OTHERBOT1", bot_id="B0OTHERBOT1")
    assert bot["bot_id"] == "B0OTHERBOT1" and "client_msg_id" not in bot
    started = assistant_thread_started(channel=DM, user=CUSTOMER, thread_ts="1.000001", context={"channel_id": CHANNEL})
    assert started["assistant_thread"] == {
        "user_id": CUSTOMER,
        "context": {"channel_id": CHANNEL},
        "channel_id": DM,
        "thread_ts": "1.000001",
    }


async def test_user_message_records_and_builds_the_event(slack: FakeSlack) -> None:
    payload = slack.user_message(DM, "Where is my order?", user=CUSTOMER)
    event = payload["event"]
    assert (event["type"], event["channel_type"], event["channel"]) == ("message", "im", DM)
    assert slack.messages(DM)[0]["ts"] == event["ts"]
    mention = slack.user_message(CHANNEL, "<@U0FAKEBOT01> help", user=CUSTOMER, mention=True)["event"]
    assert mention["type"] == "app_mention" and slack.messages(CHANNEL)[0]["ts"] == mention["ts"]
    reply = slack.user_message(CHANNEL, "more", user=CUSTOMER, thread_ts=mention["ts"])["event"]
    assert reply["thread_ts"] == mention["ts"] and reply["parent_user_id"] == CUSTOMER


def test_interactivity_is_a_signed_form_body() -> None:
    action = block_actions_payload(
        action_id="confirm_yes", value="yes", user=CUSTOMER, channel=DM, message_ts="1.000001", text="Yes ~ sure"
    )
    body = form_body(action)
    assert body.startswith(b"payload=%7B%22type%22%3A%22block_actions%22") and b"~" not in body
    assert SignatureVerifier(SECRET).is_valid_request(body, signed_headers(body, SECRET))
    assert json.loads(parse_qs(body.decode())["payload"][0]) == action


async def test_send_event_signs_json_and_form_bodies(http: aiohttp.ClientSession) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    verifier = SignatureVerifier(SECRET)

    async def events(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((dict(request.headers), body))
        if not verifier.is_valid_request(body, dict(request.headers)):
            return web.Response(status=401)
        if request.content_type == "application/json" and json.loads(body).get("type") == "url_verification":
            return web.Response(text=json.loads(body)["challenge"])
        return web.Response(text="")

    app = web.Application()
    app.router.add_post("/slack/events", events)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events"
    try:
        challenge = await send_event(
            http, url, url_verification("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"), SECRET
        )
        assert (challenge.status, challenge.text) == (200, "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
        event = event_callback(im_message("hi", channel=DM, user=CUSTOMER))
        retried = await send_event(http, url, event, SECRET, retry_num=2, retry_reason="http_timeout")
        assert retried.status == 200 and retried.sent == slack_json(event)
        headers = received[-1][0]
        assert (headers["X-Slack-Retry-Num"], headers["X-Slack-Retry-Reason"]) == ("2", "http_timeout")
        assert headers["Content-Type"] == "application/json"
        action = block_actions_payload(action_id="yes", value="yes", user=CUSTOMER, channel=DM, message_ts="1.000001")
        assert (await send_event(http, url, action, SECRET)).status == 200
        assert received[-1][0]["Content-Type"] == "application/x-www-form-urlencoded"
        assert "X-Slack-Retry-Num" not in received[-1][0]
        stale = await send_event(http, url, event, SECRET, timestamp=int(time.time()) - 600)
        assert stale.status == 401
    finally:
        await runner.cleanup()


# -- Socket Mode -----------------------------------------------------------------------------------------------


async def test_socket_mode_with_slack_sdks_client(slack: FakeSlack, http: aiohttp.ClientSession) -> None:
    received: list[SocketModeRequest] = []

    async def listener(client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        received.append(request)
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))

    socket_client = SocketModeClient(
        app_token=slack.app_token, web_client=AsyncWebClient(base_url=slack.api_url), auto_reconnect_enabled=True
    )
    socket_client.socket_mode_request_listeners.append(listener)
    try:
        await socket_client.connect()
        await slack.wait_connected()
        assert slack.calls_to("apps.connections.open")[0].ok
        payload = event_callback(im_message("over the socket https://x.example/y", channel=DM, user=CUSTOMER))
        envelope_id = await slack.push(payload)
        ack = await slack.wait_ack(envelope_id)
        assert ack.payload is None
        assert (received[0].type, received[0].envelope_id, received[0].payload) == ("events_api", envelope_id, payload)
        assert received[0].retry_attempt == 0 and received[0].accepts_response_payload is False

        # Slack asks for a refresh: the client fetches a new URL and reconnects.
        await slack.disconnect("refresh_requested")
        await slack.wait_until(lambda: slack.connects == 2 and slack.connections == 1)
        second = await slack.push(payload, retry_attempt=1, retry_reason="timeout")
        await slack.wait_ack(second)
        assert received[-1].retry_attempt == 1 and received[-1].retry_reason == "timeout"
        assert len(slack.calls_to("apps.connections.open")) == 2
    finally:
        await socket_client.close()
    await slack.wait_until(lambda: slack.connections == 0)

    # A ticket works once: a reused URL is refused.
    url = (
        await AsyncWebClient(token=slack.app_token, base_url=slack.api_url).apps_connections_open(
            app_token=slack.app_token
        )
    )["url"]
    async with http.ws_connect(url) as ws:
        hello = await ws.receive_json()
        assert hello["type"] == "hello" and hello["connection_info"]["app_id"] == slack.app_id
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(url)
    with pytest.raises(RuntimeError, match="no Socket Mode client is connected"):
        await slack.push(payload)
