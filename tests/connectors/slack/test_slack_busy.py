"""A worker too busy to take a Slack message answers non-2xx, so that Slack sends the event again."""

from __future__ import annotations

import json

from connectors.slack.testing import FakeSlack, send_event
from supportbot.channels import Busy
from tests.connectors.slack.conftest import CUSTOMER, DM, SIGNING_SECRET, Endpoint


async def test_a_busy_worker_does_not_acknowledge_the_event(endpoint: Endpoint, slack: FakeSlack) -> None:
    endpoint.intake.fail_with = Busy("this worker is busy", retry_after=5)
    event = slack.user_message(DM, "hi", user=CUSTOMER)
    reply = await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)
    assert reply.status == 503 and json.loads(reply.body)["error"]["code"] == "busy"
    assert endpoint.intake.messages == {}  # nothing was taken: Slack's retry is the message
    endpoint.intake.fail_with = None
    retried = await send_event(endpoint.http, endpoint.events, event, SIGNING_SECRET)
    assert retried.status == 200 and [m.text for m in endpoint.intake.messages.values()] == ["hi"]
