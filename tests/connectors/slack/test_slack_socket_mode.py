"""Socket Mode: the same path as HTTP events, each envelope acknowledged only once it is stored."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from connectors.slack.channel import SlackChannel
from connectors.slack.inbound import CONFIRM_YES, ConfirmValue
from connectors.slack.receive import Receiver
from connectors.slack.routes import add_routes
from connectors.slack.socket_mode import SocketMode
from connectors.slack.testing import FakeSlack, block_actions_payload
from supportbot.channels import StorageError
from supportbot.server import error_response
from tests.connectors.slack.conftest import CUSTOMER, DM, ChannelFactory, FakeIntake


@pytest.fixture
async def socket_channel(slack: FakeSlack, make_channel: ChannelFactory) -> AsyncIterator[SlackChannel]:
    channel = await make_channel(signing_secret=None, app_token=slack.app_token, start=False)
    socket = SocketMode(Receiver(channel), app_token=slack.app_token, api_url=slack.api_url)
    channel.on_start.append(socket.start)
    channel.on_stop.append(socket.stop)
    yield channel


async def test_events_arrive_and_are_acknowledged_once_stored(
    socket_channel: SlackChannel, slack: FakeSlack, intake: FakeIntake
) -> None:
    await socket_channel.start(intake)
    await slack.wait_connected()
    event = slack.user_message(DM, "Where is my order?", user=CUSTOMER)
    first = await slack.push(event)
    await slack.wait_ack(first)
    again = await slack.push(event, retry_attempt=1, retry_reason="timeout")
    await slack.wait_ack(again)
    [message] = intake.messages.values()
    assert message.text == "Where is my order?" and message.key.endswith(f"/{DM}/{CUSTOMER}")  # type: ignore[union-attr]


async def test_an_envelope_that_could_not_be_stored_is_not_acknowledged(
    socket_channel: SlackChannel, slack: FakeSlack, intake: FakeIntake
) -> None:
    await socket_channel.start(intake)
    await slack.wait_connected()
    intake.fail_with = StorageError("database is locked")
    lost = await slack.push(slack.user_message(DM, "hello?", user=CUSTOMER))
    await intake.wait(lambda: intake.submits >= 1)
    intake.fail_with = None
    stored = await slack.push(slack.user_message(DM, "hello again", user=CUSTOMER))
    await slack.wait_ack(stored)
    assert all(ack.envelope_id != lost for ack in slack.acks)
    assert [m.text for m in intake.messages.values()] == ["hello again"]


async def test_buttons_arrive_as_interactive_envelopes(
    socket_channel: SlackChannel, slack: FakeSlack, intake: FakeIntake
) -> None:
    await socket_channel.start(intake)
    await slack.wait_connected()
    value = ConfirmValue(key="T/D/U", address={"channel": DM, "user": CUSTOMER}).dump()
    press = block_actions_payload(action_id=CONFIRM_YES, value=value, user=CUSTOMER, channel=DM, message_ts="1.1")
    await slack.wait_ack(await slack.push(press, type="interactive"))
    assert [m.text for m in intake.messages.values()] == ["yes"]


async def test_socket_mode_alone_serves_no_http_routes(socket_channel: SlackChannel) -> None:
    app = web.Application()
    add_routes(app, Receiver(socket_channel), lambda request: FakeIntake(), error_response=error_response)  # type: ignore[arg-type,return-value]
    assert not [route for route in app.router.routes() if route.resource and "slack" in route.resource.canonical]
