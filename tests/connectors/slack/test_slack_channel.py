"""``SlackChannel.deliver`` (once per outbox row, errors the outbox can act on) and ``prepare`` (who, which images)."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError

from connectors.slack.channel import METADATA_TYPE, SlackChannel
from connectors.slack.inbound import CONFIRM_NO, CONFIRM_YES, HAND_BACK
from connectors.slack.testing import DEFAULT_TEAM_ID as TEAM
from connectors.slack.testing import FakeSlack
from supportbot.channels import DeliveryError, Identity, InboundMessage, Reply
from tests.connectors.slack.conftest import CUSTOMER, DM, SHOP, TICKETS, ChannelFactory

DM_ADDRESS = {"channel": DM, "team": TEAM, "user": CUSTOMER, "thread_ts": None, "kind": "im"}


def reply(outbox_id: int = 1, text: str = "Your order **A1001** has shipped.", **fields: Any) -> Reply:
    values: dict[str, Any] = {"channel": "slack", "kind": "answer", "address": DM_ADDRESS,
                              "key": f"{TEAM}/{DM}/{CUSTOMER}"}  # fmt: skip
    values.update(fields)
    return Reply(outbox_id=outbox_id, text=text, **values)


# -- deliver ---------------------------------------------------------------------------------------------


async def test_an_answer_is_posted_as_mrkdwn_with_its_outbox_row(channel: SlackChannel, slack: FakeSlack) -> None:
    sent = await channel.deliver(reply(text="Your order **A1001** has shipped. <!channel>"))
    [message] = slack.messages(DM)
    assert sent == f"{DM}:{message['ts']}"
    assert message["text"] == "Your order *A1001* has shipped. &lt;!channel&gt;"
    assert message["metadata"] == {"event_type": METADATA_TYPE, "event_payload": {"outbox_id": 1}}
    [call] = slack.calls_to("chat.postMessage")
    assert call.params["unfurl_links"] is False and call.params["unfurl_media"] is False


async def test_a_reply_goes_to_the_conversations_thread(channel: SlackChannel, slack: FakeSlack) -> None:
    root = slack.add_message(SHOP, "help", user=CUSTOMER)
    address = {"channel": SHOP, "team": TEAM, "user": CUSTOMER, "thread_ts": root["ts"], "kind": "channel"}
    await channel.deliver(reply(address=address))
    assert slack.messages(SHOP)[-1]["thread_ts"] == root["ts"]


async def test_a_post_whose_answer_is_lost_is_not_sent_again_within_the_attempt(
    channel: SlackChannel, slack: FakeSlack
) -> None:
    slack.drop("chat.postMessage")  # Slack takes the post; the connection breaks before its answer
    with pytest.raises(DeliveryError) as failed:
        await channel.deliver(reply(outbox_id=7))
    assert failed.value.retryable
    assert len(slack.calls_to("chat.postMessage")) == 1  # not posted again by the HTTP client
    # The outbox's next attempt finds the message instead of posting a second one.
    sent = await channel.deliver(reply(outbox_id=7, attempt=2))
    [message] = slack.messages(DM)
    assert sent == f"{DM}:{message['ts']}" and len(slack.calls_to("chat.postMessage")) == 1


@pytest.mark.parametrize("threaded", [False, True])
async def test_a_second_attempt_finds_the_first_instead_of_posting_again(
    channel: SlackChannel, slack: FakeSlack, threaded: bool
) -> None:
    address = dict(DM_ADDRESS)
    if threaded:
        address["thread_ts"] = slack.add_message(DM, "question", user=CUSTOMER)["ts"]
    for n in range(3):  # other replies around it
        await channel.deliver(reply(outbox_id=10 + n, text=f"other {n}", address=address))
    first = await channel.deliver(reply(outbox_id=42, address=address))
    await channel.deliver(reply(outbox_id=43, text="later", address=address))
    # The worker died after Slack took it, before it could mark the row sent: the retry must not post again.
    again = await channel.deliver(reply(outbox_id=42, attempt=2, address=address))
    assert again == first
    assert len(slack.calls_to("chat.postMessage")) == 5
    lookups = slack.calls_to("conversations.replies" if threaded else "conversations.history")
    assert lookups and all(call.params["include_all_metadata"] in (True, "true", "1") for call in lookups)


async def test_a_second_attempt_posts_when_the_first_never_landed(channel: SlackChannel, slack: FakeSlack) -> None:
    slack.fail("chat.postMessage", status=503)
    with pytest.raises(DeliveryError) as failed:
        await channel.deliver(reply(outbox_id=5))
    assert failed.value.retryable
    sent = await channel.deliver(reply(outbox_id=5, attempt=2))
    assert [m["ts"] for m in slack.messages(DM)] == [sent.split(":")[1]]


async def test_rate_limited_is_retryable_after_slacks_wait(channel: SlackChannel, slack: FakeSlack) -> None:
    slack.fail("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(DeliveryError) as failed:
        await channel.deliver(reply())
    assert failed.value.retryable and failed.value.retry_after == 7.0
    assert not slack.messages(DM)


@pytest.mark.parametrize(
    ("error", "says"),
    [
        ("channel_not_found", "invite the bot to the channel"),
        ("is_archived", "archived"),
        ("invalid_auth", "bot_token is wrong"),
        ("missing_scope", "add the missing scope"),
    ],
)
async def test_slacks_refusals_are_final_and_say_what_to_do(
    channel: SlackChannel, slack: FakeSlack, error: str, says: str
) -> None:
    slack.fail("chat.postMessage", error=error)
    with pytest.raises(DeliveryError) as failed:
        await channel.deliver(reply())
    assert not failed.value.retryable and error in str(failed.value) and says in str(failed.value)


async def test_slack_unreachable_is_retryable(slack: FakeSlack, make_channel: ChannelFactory) -> None:
    channel = await make_channel()
    channel.api.base_url = "http://127.0.0.1:9/api/"  # nothing listens there
    with pytest.raises(DeliveryError) as failed:
        await channel.deliver(reply())
    assert failed.value.retryable and "could not reach Slack" in str(failed.value)


async def test_no_address_is_final(channel: SlackChannel) -> None:
    with pytest.raises(DeliveryError) as failed:
        await channel.deliver(reply(address={}))
    assert not failed.value.retryable


async def test_a_confirmation_offers_yes_and_no(channel: SlackChannel, slack: FakeSlack) -> None:
    await channel.deliver(reply(kind="confirmation", text='Cancel order A1001? Reply "yes" to go ahead.'))
    [message] = slack.messages(DM)
    section, actions = message["blocks"]
    assert section["text"]["text"] == 'Cancel order A1001? Reply "yes" to go ahead.'
    assert [e["action_id"] for e in actions["elements"]] == [CONFIRM_YES, CONFIRM_NO]
    value = json.loads(actions["elements"][0]["value"])
    assert value["k"] == f"{TEAM}/{DM}/{CUSTOMER}" and value["a"]["user"] == CUSTOMER


async def test_an_operators_reply_names_the_operator(channel: SlackChannel, slack: FakeSlack) -> None:
    await channel.deliver(reply(kind="operator", author="Olga <admin>", text="We *will* call you."))
    assert slack.messages(DM)[0]["text"] == "*Olga &lt;admin&gt;* (support team)\nWe _will_ call you."


async def test_a_ticket_is_announced_in_the_tickets_channel(slack: FakeSlack, make_channel: ChannelFactory) -> None:
    channel = await make_channel(tickets_channel="#support-tickets")
    assert channel.announces_tickets and channel.tickets_channel_id == TICKETS
    data = {"ticket_id": 12, "subject": "Parcel <!here> lost", "customer": "Ana <Example>", "priority": "high",
            "customer_email": "ana@example.com", "customer_verified": False, "channel": "web",
            "url": "https://support.example/admin/tickets/12"}  # fmt: skip
    sent = await channel.deliver(Reply(outbox_id=9, channel="slack", kind="ticket", text="", data=data))
    [message] = slack.messages(TICKETS)
    assert sent == f"{TICKETS}:{message['ts']}"
    text = message["text"]
    assert "*Ticket #12* (high): Parcel &lt;!here&gt; lost" in text
    assert "Customer: Ana &lt;Example&gt; (ana@example.com, unverified) · Channel: web" in text
    assert "<https://support.example/admin/tickets/12|Open ticket #12>" in text
    button = message["blocks"][-1]["elements"][0]
    assert button["action_id"] == HAND_BACK and button["value"] == "12"
    assert message["metadata"]["event_payload"] == {"outbox_id": 9, "ticket_id": 12}
    assert slack.calls_to("conversations.list")  # "support-tickets" was found by its name


async def test_without_a_public_url_the_admin_path_is_shown(channel: SlackChannel, slack: FakeSlack) -> None:
    data = {"ticket_id": 3, "subject": "Refund", "customer": "Ana", "channel": "slack", "url": "/admin/tickets/3"}
    await channel.deliver(Reply(outbox_id=1, channel="slack", kind="ticket", text="", data=data))
    assert "Admin page: `/admin/tickets/3` (set server.public_url" in slack.messages(TICKETS)[0]["text"]


async def test_an_unknown_tickets_channel_is_a_final_error(slack: FakeSlack, make_channel: ChannelFactory) -> None:
    channel = await make_channel(tickets_channel="#nowhere")
    with pytest.raises(DeliveryError) as failed:
        await channel.deliver(Reply(outbox_id=1, channel="slack", kind="ticket", text="", data={"ticket_id": 1}))
    assert not failed.value.retryable and "#nowhere" in str(failed.value) and "invite the bot" in str(failed.value)


async def test_no_tickets_channel_announces_no_tickets(make_channel: ChannelFactory) -> None:
    channel = await make_channel(tickets_channel=None)
    assert not channel.announces_tickets
    with pytest.raises(DeliveryError) as failed:
        await channel.deliver(Reply(outbox_id=1, channel="slack", kind="ticket", text="", data={"ticket_id": 1}))
    assert not failed.value.retryable


# -- prepare ---------------------------------------------------------------------------------------------


def inbound(user: str = CUSTOMER, text: str = "hello", **data: Any) -> InboundMessage:
    return InboundMessage(
        channel="slack", external_id=f"{DM}:1.1", key=f"{TEAM}/{DM}/{user}", text=text,
        identity=Identity(external_id=f"{TEAM}/{user}"), address={**DM_ADDRESS, "user": user},
        data=data,
    )  # fmt: skip


async def test_the_customers_email_comes_from_slack_and_is_cached(channel: SlackChannel, slack: FakeSlack) -> None:
    prepared = await channel.prepare(inbound())
    assert prepared is not None
    assert prepared.identity == Identity(
        external_id=f"{TEAM}/{CUSTOMER}", email="ana@example.com", name="Ana Example", verified=True
    )
    await channel.prepare(inbound())
    assert len(slack.calls_to("users.info")) == 1


@pytest.mark.parametrize("kind", ["deleted", "bot"])
async def test_deleted_users_and_bots_are_left_unanswered(channel: SlackChannel, slack: FakeSlack, kind: str) -> None:
    slack.add_user("U0GONE", email="gone@example.com", deleted=kind == "deleted", is_bot=kind == "bot")
    assert await channel.prepare(inbound(user="U0GONE")) is None


@pytest.mark.parametrize(
    ("user", "verified"),
    [
        ({"team": "T0OTHERORG"}, False),  # another organisation's user in a shared channel
        ({"email_confirmed": False}, False),
        ({"email": None}, False),  # no email (or no users:read.email scope)
        ({"team": "T0SISTER", "enterprise": "E0ORG"}, True),  # another workspace of the installing org
        ({"team": "T0SISTER", "enterprise": "E0OTHER"}, False),
    ],
)
async def test_only_an_email_slack_vouches_for_makes_a_verified_customer(
    make_channel: ChannelFactory, slack: FakeSlack, user: dict[str, Any], verified: bool
) -> None:
    slack.enterprise_id = "E0ORG"
    channel = await make_channel()
    slack.add_user("U0EVE", **{"email": "eve@example.com", "real_name": "Eve", **user})
    prepared = await channel.prepare(inbound(user="U0EVE"))
    assert prepared is not None
    email = "eve@example.com" if verified else None
    assert prepared.identity == Identity(external_id=f"{TEAM}/U0EVE", email=email, name="Eve", verified=verified)


async def test_a_user_slack_does_not_know_is_answered_unverified(channel: SlackChannel, slack: FakeSlack) -> None:
    slack.fail("users.info", error="user_not_found")
    prepared = await channel.prepare(inbound())
    assert prepared is not None and prepared.identity == Identity(external_id=f"{TEAM}/{CUSTOMER}")


@pytest.mark.parametrize("failure", [{"status": 503}, {"status": 429}, {"error": "internal_error"}])
async def test_slack_not_answering_now_is_retried_by_the_core(
    channel: SlackChannel, slack: FakeSlack, failure: dict[str, Any]
) -> None:
    slack.fail("users.info", **failure)
    with pytest.raises(SlackApiError):
        await channel.prepare(inbound())
    prepared = await channel.prepare(inbound())  # the core's next try
    assert prepared is not None and prepared.identity.verified and prepared.identity.email == "ana@example.com"


def png(size: int) -> bytes:
    """A valid PNG of about ``size`` bytes."""
    raw = b"\x00" + b"\xff" * 3
    chunk = zlib.compress(raw * 1)
    body = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    body += b"\x00" * 4 + struct.pack(">I", len(chunk)) + b"IDAT" + chunk + b"\x00" * 4
    return body + b"\x00" * max(0, size - len(body))


def file_ref(slack: FakeSlack, content: bytes, name: str, mimetype: str) -> dict[str, Any]:
    stored = slack.add_file(content, name, mimetype, user=CUSTOMER)
    return {"id": stored["id"], "name": name, "mimetype": mimetype, "size": stored["size"],
            "url": stored["url_private_download"]}  # fmt: skip


async def test_images_are_downloaded_with_the_bot_token_and_capped(channel: SlackChannel, slack: FakeSlack) -> None:
    # The fixture's limits: 2 images of at most 998 bytes (limits.max_image_bytes 1000, less base64's rounding).
    small = png(300)
    files = [
        file_ref(slack, small, "parcel.png", "image/png"),
        file_ref(slack, png(2000), "huge.png", "image/png"),
        file_ref(slack, b"%PDF-1.7", "invoice.pdf", "application/pdf"),
        file_ref(slack, b"not really a png", "fake.png", "image/png"),
        file_ref(slack, small, "second.png", "image/png"),
        file_ref(slack, small, "third.png", "image/png"),
    ]
    prepared = await channel.prepare(inbound(text="see attached", files=files))
    assert prepared is not None
    assert [image.url for image in prepared.images] == [f"data:image/png;base64,{base64.b64encode(small).decode()}"] * 2
    assert prepared.text.splitlines() == [
        "see attached",
        "[huge.png was not included: it is larger than 998 bytes]",
        "[invoice.pdf was not included: only images are read]",
        "[fake.png was not included: it is not a PNG, JPEG, GIF or WebP image]",
        "[third.png was not included: at most 2 images are read per message]",
    ]
    assert slack.downloads and all(authorized for _, authorized in slack.downloads)
    assert len(slack.downloads) == 3  # parcel, fake, second: the too-big, the PDF and the third were never fetched


async def test_a_file_slack_will_not_serve_is_left_out(channel: SlackChannel, slack: FakeSlack) -> None:
    ref = file_ref(slack, png(100), "parcel.png", "image/png")
    channel.api.token = "xoxb-revoked"  # Slack answers its sign-in page (HTML) to a bad token
    prepared = await channel.prepare(inbound(files=[ref]))
    assert prepared is not None and prepared.images == () and "[parcel.png could not be read]" in prepared.text


async def test_a_file_url_off_slack_is_never_fetched_with_the_token(channel: SlackChannel, slack: FakeSlack) -> None:
    ref = {"name": "x.png", "mimetype": "image/png", "size": 10, "url": "https://evil.example/x.png"}
    prepared = await channel.prepare(inbound(files=[ref]))
    assert prepared is not None and prepared.images == () and "[x.png could not be read]" in prepared.text
