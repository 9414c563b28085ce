"""``POST /slack/events`` and ``/slack/interactions``: signed exactly as Slack signs, stored before the 2xx."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from connectors.slack.inbound import CONFIRM_YES, HAND_BACK, ConfirmValue
from connectors.slack.testing import (
    DEFAULT_BOT_USER_ID,
    FakeSlack,
    assistant_thread_started,
    block_actions_payload,
    form_body,
    send_event,
    signed_headers,
    slack_json,
    url_verification,
)
from connectors.slack.testing import DEFAULT_TEAM_ID as TEAM
from supportbot.channels import MessageTooLarge, OperatorError, Reply, StorageError, Unavailable
from tests.connectors.slack.conftest import CUSTOMER, DM, SHOP, SIGNING_SECRET, TICKETS, Endpoint


async def post(endpoint: Endpoint, body: bytes, headers: dict[str, str], url: str | None = None) -> tuple[int, Any]:
    async with endpoint.http.post(url or endpoint.events, data=body, headers=headers) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text.startswith("{") else text)


# -- signatures -------------------------------------------------------------------------------------


async def test_url_verification_is_answered_with_its_challenge(endpoint: Endpoint) -> None:
    reply = await send_event(
        endpoint.http,
        endpoint.events,
        url_verification("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"),
        SIGNING_SECRET,
    )
    assert reply.status == 200
    assert json.loads(reply.body) == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


def _signed_event(
    slack: FakeSlack, text: str = "Où est ma commande? 📦 https://shop.example/o/1"
) -> tuple[bytes, dict[str, str]]:
    body = slack_json(slack.user_message(DM, text, user=CUSTOMER))  # compact, \/ and \uXXXX escapes, as Slack sends
    return body, {"Content-Type": "application/json", **signed_headers(body, SIGNING_SECRET)}


async def test_a_signed_event_is_stored_before_the_2xx(endpoint: Endpoint, slack: FakeSlack) -> None:
    body, headers = _signed_event(slack)
    assert b"\\/" in body and b"\\u" in body
    status, _ = await post(endpoint, body, headers)
    assert status == 200
    [message] = endpoint.intake.messages.values()
    assert message.text == "Où est ma commande? 📦 https://shop.example/o/1"


async def test_raw_utf8_bodies_verify_too(endpoint: Endpoint, slack: FakeSlack) -> None:
    reply = await send_event(endpoint.http, endpoint.events, slack.user_message(DM, "Grüße 👋", user=CUSTOMER),
                             SIGNING_SECRET, escape_unicode=False)  # fmt: skip
    assert reply.status == 200 and len(endpoint.intake.messages) == 1


def _forged(body: bytes, headers: dict[str, str]) -> dict[str, tuple[bytes, dict[str, str]]]:
    now = int(time.time())
    old = now - 301
    return {
        "wrong secret": (body, {**headers, **signed_headers(body, "0" * 32)}),
        "altered body": (body.replace(b"commande", b"COMMANDE"), headers),
        "re-encoded body": (json.dumps(json.loads(body)).encode(), headers),
        "older than 5 minutes": (body, signed_headers(body, SIGNING_SECRET, timestamp=old)),
        "from the future": (body, signed_headers(body, SIGNING_SECRET, timestamp=now + 301)),
        "no signature": (body, {"X-Slack-Request-Timestamp": headers["X-Slack-Request-Timestamp"]}),
        "no timestamp": (body, {"X-Slack-Signature": headers["X-Slack-Signature"]}),
        "no headers": (body, {}),
        "timestamp not a number": (body, {**headers, "X-Slack-Request-Timestamp": "soon"}),
        "v1 signature": (body, {**headers, "X-Slack-Signature": headers["X-Slack-Signature"].replace("v0=", "v1=")}),
        "not utf-8": (b"\xff" + body, signed_headers(b"\xff" + body, SIGNING_SECRET)),
    }


@pytest.mark.parametrize("case", list(_forged(b"{}", {"X-Slack-Request-Timestamp": "1", "X-Slack-Signature": "v0=1"})))
@pytest.mark.parametrize("path", ["events", "interactions"])
async def test_bad_missing_or_stale_signatures_are_401(
    endpoint: Endpoint, slack: FakeSlack, case: str, path: str
) -> None:
    body, headers = _signed_event(slack)
    forged_body, forged_headers = _forged(body, headers)[case]
    status, answer = await post(endpoint, forged_body, forged_headers, url=getattr(endpoint, path))
    assert status == 401
    assert answer["error"]["code"] == "invalid_signature"
    assert "connectors.slack.signing_secret" in answer["error"]["message"]
    assert not endpoint.intake.messages


async def test_a_signed_body_that_is_no_json_object_is_400(endpoint: Endpoint) -> None:
    for body in (b"not json", b"[1, 2]"):
        status, answer = await post(endpoint, body, signed_headers(body, SIGNING_SECRET))
        assert status == 400 and answer["error"]["code"] == "bad_request"


# -- retries and duplicates -----------------------------------------------------------------------------


async def test_retries_and_duplicates_are_acknowledged_and_stored_once(endpoint: Endpoint, slack: FakeSlack) -> None:
    event = slack.user_message(DM, "Where is my order?", user=CUSTOMER)
    first = await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)
    again = await asyncio.gather(
        *(send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET, retry_num=n, retry_reason="http_timeout")
          for n in (1, 2, 3))
    )  # fmt: skip
    assert [r.status for r in (first, *again)] == [200, 200, 200, 200]
    assert len(endpoint.intake.messages) == 1


async def test_a_mention_and_its_message_twin_are_one_message(endpoint: Endpoint, slack: FakeSlack) -> None:
    mention = slack.user_message(SHOP, f"<@{DEFAULT_BOT_USER_ID}> is A1001 late?", user=CUSTOMER, mention=True)
    twin = slack.event_callback({**mention["event"], "type": "message", "channel_type": "channel"})
    for event in (mention, twin):
        assert (await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)).status == 200
    [message] = endpoint.intake.messages.values()
    assert message.text == "is A1001 late?" and message.address["thread_ts"] == mention["event"]["ts"]


async def test_a_reply_in_a_thread_the_bot_was_asked_into_is_answered(endpoint: Endpoint, slack: FakeSlack) -> None:
    mention = slack.user_message(SHOP, f"<@{DEFAULT_BOT_USER_ID}> help", user=CUSTOMER, mention=True)
    thread = mention["event"]["ts"]
    other = slack.user_message(SHOP, "unrelated thread", user=CUSTOMER)
    for event in (
        mention,
        slack.user_message(SHOP, "and one more thing", user=CUSTOMER, thread_ts=thread),
        slack.user_message(SHOP, "not for the bot", user=CUSTOMER, thread_ts=other["event"]["ts"]),
        slack.user_message(SHOP, "chatter", user=CUSTOMER),
    ):
        assert (await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)).status == 200
    assert [m.text for m in endpoint.intake.messages.values()] == ["help", "and one more thing"]


async def test_someone_else_in_the_thread_is_answered_only_once_they_ask_the_bot(
    endpoint: Endpoint, slack: FakeSlack
) -> None:
    slack.add_user("U0BOB", email="bob@example.com", real_name="Bob")
    mention = slack.user_message(SHOP, f"<@{DEFAULT_BOT_USER_ID}> help", user=CUSTOMER, mention=True)
    thread = mention["event"]["ts"]
    for event in (
        mention,
        slack.user_message(SHOP, "me too", user="U0BOB", thread_ts=thread),  # not Ana's conversation
        slack.user_message(
            SHOP, f"<@{DEFAULT_BOT_USER_ID}> mine is late too", user="U0BOB", thread_ts=thread, mention=True
        ),
        slack.user_message(SHOP, "A1002", user="U0BOB", thread_ts=thread),
    ):
        assert (await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)).status == 200
    got = [(m.text, m.key, m.identity.external_id, m.address["thread_ts"]) for m in endpoint.intake.messages.values()]
    assert got == [
        ("help", f"{TEAM}/{SHOP}/{thread}/{CUSTOMER}", f"{TEAM}/{CUSTOMER}", thread),
        ("mine is late too", f"{TEAM}/{SHOP}/{thread}/U0BOB", f"{TEAM}/U0BOB", thread),
        ("A1002", f"{TEAM}/{SHOP}/{thread}/U0BOB", f"{TEAM}/U0BOB", thread),
    ]


# -- what the core said ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "status"),
    [(StorageError("database is locked"), 500), (Unavailable("shutting down"), 503)],
)
async def test_not_stored_is_not_acknowledged(
    endpoint: Endpoint, slack: FakeSlack, failure: Exception, status: int
) -> None:
    endpoint.intake.fail_with = failure
    reply = await send_event(
        endpoint.http, endpoint.events, slack.user_message(DM, "hi", user=CUSTOMER), SIGNING_SECRET
    )
    assert reply.status == status and json.loads(reply.body)["error"]["code"] in ("not_stored", "unavailable")


async def test_a_message_over_the_limits_is_acknowledged_and_answered_politely(
    endpoint: Endpoint, slack: FakeSlack
) -> None:
    endpoint.intake.fail_with = MessageTooLarge("too long", limit="limits.max_message_chars", allowed=8000, actual=9000)
    event = slack.user_message(DM, "x" * 9000, user=CUSTOMER)
    assert (await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)).status == 200
    await slack.wait_until(lambda: len(slack.messages(DM)) == 2)
    note = slack.messages(DM)[-1]
    assert "9,000 characters" in note["text"] and "at most 8,000" in note["text"]


async def test_the_ack_does_not_wait_for_slack(endpoint: Endpoint, slack: FakeSlack) -> None:
    slack.delay("users.info", 5)  # a slow Slack: nothing on the ack path asks it
    started = time.monotonic()
    reply = await send_event(
        endpoint.http, endpoint.events, slack.user_message(DM, "hi", user=CUSTOMER), SIGNING_SECRET
    )
    assert reply.status == 200 and time.monotonic() - started < 1.0


# -- assistant threads ----------------------------------------------------------------------------------


async def test_an_assistant_thread_gets_suggested_prompts_and_a_title(endpoint: Endpoint, slack: FakeSlack) -> None:
    started = slack.event_callback(assistant_thread_started(channel=DM, user=CUSTOMER, thread_ts="900.000001"))
    assert (await send_event(endpoint.http, endpoint.events, started, SIGNING_SECRET)).status == 200
    await slack.wait_until(lambda: (DM, "900.000001") in slack.suggested_prompts)
    assert slack.suggested_prompts[(DM, "900.000001")]["prompts"] == [
        {"title": "Track an order", "message": "Where is my order?"},
        {"title": "Return", "message": "I want to return"},
    ]
    first = slack.user_message(DM, "Where is my order A1001? It is late and I need it for a trip", user=CUSTOMER,
                               thread_ts="900.000001")  # fmt: skip
    second = slack.user_message(DM, "Hello?", user=CUSTOMER, thread_ts="900.000001")
    for event in (first, second):
        assert (await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)).status == 200
    await slack.wait_until(lambda: (DM, "900.000001") in slack.titles)
    assert slack.titles[(DM, "900.000001")] == "Where is my order A1001? It is late and I need it for a trip"
    [message, _] = endpoint.intake.messages.values()
    assert message.key.endswith(f"/{DM}/900.000001") and message.address["kind"] == "assistant"  # type: ignore[union-attr]
    assert len(slack.calls_to("assistant.threads.setTitle")) == 1


# -- operators in the tickets channel -------------------------------------------------------------------


def _announce(endpoint: Endpoint, slack: FakeSlack, ticket_id: int = 7) -> str:
    announcement = slack.add_message(TICKETS, f"Ticket #{ticket_id}", user=DEFAULT_BOT_USER_ID)
    endpoint.intake.announcements[f"{TICKETS}:{announcement['ts']}"] = Reply(
        outbox_id=1, channel="slack", kind="ticket", text="", data={"ticket_id": ticket_id}
    )
    return str(announcement["ts"])


async def test_an_operators_thread_reply_goes_to_the_ticket(endpoint: Endpoint, slack: FakeSlack) -> None:
    thread = _announce(endpoint, slack)
    event = slack.user_message(TICKETS, "We sent a new parcel &amp; a voucher.", user="U0OP", thread_ts=thread)
    for _ in range(2):  # and a retry of it
        assert (await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)).status == 200
    [reply] = endpoint.intake.operator_replies.values()
    assert reply.ticket_id == 7 and reply.actor == "U0OP (Slack)" and not reply.hand_back  # the name is not known yet
    assert reply.text == "We sent a new parcel & a voucher."
    assert reply.external_id == f"{TICKETS}:{event['event']['ts']}"
    assert not endpoint.intake.messages
    # Looked up after the acknowledgement: the operator's next reply carries their name.
    await slack.wait_until(lambda: endpoint.channel.users.cached_name("U0OP") is not None)
    later = slack.user_message(TICKETS, "Anything else?", user="U0OP", thread_ts=thread)
    assert (await send_event(endpoint.http, endpoint.events, later, SIGNING_SECRET)).status == 200
    assert endpoint.intake.operator_replies[f"{TICKETS}:{later['event']['ts']}"].actor == "Olga Operator (Slack)"


async def test_an_operators_reply_is_acknowledged_without_asking_slack(endpoint: Endpoint, slack: FakeSlack) -> None:
    thread = _announce(endpoint, slack)
    slack.delay("users.info", 5)
    started = time.monotonic()
    event = slack.user_message(TICKETS, "On its way.", user="U0OP", thread_ts=thread)
    assert (await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)).status == 200
    assert time.monotonic() - started < 1.0
    [reply] = endpoint.intake.operator_replies.values()
    assert reply.actor == "U0OP (Slack)"


async def test_hand_back_by_command_and_by_button(endpoint: Endpoint, slack: FakeSlack) -> None:
    thread = _announce(endpoint, slack)
    event = slack.user_message(TICKETS, "hand back", user="U0OP", thread_ts=thread)
    assert (await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)).status == 200
    press = block_actions_payload(action_id=HAND_BACK, value="7", user="U0OP", channel=TICKETS, message_ts=thread)
    assert (await send_event(endpoint.http, endpoint.interactions, press, SIGNING_SECRET)).status == 200
    replies = list(endpoint.intake.operator_replies.values())
    assert [(r.hand_back, r.ticket_id, r.text) for r in replies] == [(True, 7, ""), (True, 7, "")]
    await slack.wait_until(
        lambda: sum("handed the conversation back" in m["text"] for m in slack.messages(TICKETS)) == 2
    )


async def test_a_thread_that_is_no_tickets_is_left_alone(endpoint: Endpoint, slack: FakeSlack) -> None:
    chat = slack.add_message(TICKETS, "lunch?", user="U0OP")
    event = slack.user_message(TICKETS, "yes!", user=CUSTOMER, thread_ts=chat["ts"])
    assert (await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)).status == 200
    assert not endpoint.intake.operator_replies and not endpoint.intake.messages


async def test_a_refused_operator_reply_is_explained_in_the_thread(endpoint: Endpoint, slack: FakeSlack) -> None:
    thread = _announce(endpoint, slack)
    endpoint.intake.fail_with = OperatorError("ticket 7 is closed; reopen it first")
    event = slack.user_message(TICKETS, "hello", user="U0OP", thread_ts=thread)
    assert (await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)).status == 200
    await slack.wait_until(lambda: any("ticket 7 is closed" in m["text"] for m in slack.messages(TICKETS)))


# -- confirmations -------------------------------------------------------------------------------------


async def test_a_yes_button_is_stored_once_and_its_buttons_replaced(endpoint: Endpoint, slack: FakeSlack) -> None:
    posted = await endpoint.channel.api.chat_postMessage(channel=DM, text="Cancel order A1001?")
    question = posted["message"]
    value = ConfirmValue(key="T/D/U", address={"channel": DM, "user": CUSTOMER, "thread_ts": None}).dump()
    press = block_actions_payload(action_id=CONFIRM_YES, value=value, user=CUSTOMER, channel=DM,
                                  message_ts=question["ts"], message=question)  # fmt: skip
    body = form_body(press)
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(body, SIGNING_SECRET)}
    for _ in range(2):
        status, _ = await post(endpoint, body, headers, url=endpoint.interactions)
        assert status == 200
    [message] = endpoint.intake.messages.values()
    assert message.text == "yes" and message.key == "T/D/U" and message.external_id == f"{DM}:{question['ts']}:answer"
    await slack.wait_calls("chat.update")
    assert slack.messages(DM)[-1]["text"] == "Cancel order A1001?\n\n_You answered: Yes_"
    assert len(slack.calls_to("chat.update")) == 1  # the second press was a duplicate


async def test_an_interaction_that_is_no_form_is_400(endpoint: Endpoint) -> None:
    body = b'{"type": "block_actions"}'
    status, answer = await post(endpoint, body, signed_headers(body, SIGNING_SECRET), url=endpoint.interactions)
    assert status == 400 and "payload=<JSON>" in answer["error"]["message"]
