"""The Slack connector against FakeSlack on 127.0.0.1, with a fake core (``FakeIntake``) behind its routes.

The full-server cases (the real core, database and fake model) are in ``test_slack_server.py``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from connectors.slack.channel import SlackChannel
from connectors.slack.receive import Receiver
from connectors.slack.routes import add_routes
from connectors.slack.settings import SlackSettings
from connectors.slack.testing import FakeSlack
from supportbot.channels import Accepted, InboundMessage, OperatorReply, Reply
from supportbot.server import error_response

SIGNING_SECRET = "8f742231b10e8888abcd99001185a5fe"
CUSTOMER = "U0ANA"
DM = "D0ANA"
SHOP = "C0SHOP"
TICKETS = "C0TICKETS"


@dataclass
class FakeIntake:
    """The core's side of the contract, in memory: unique external ids, like the inbox."""

    messages: dict[str, InboundMessage] = field(default_factory=dict)
    operator_replies: dict[str, OperatorReply] = field(default_factory=dict)
    announcements: dict[str, Reply] = field(default_factory=dict)
    conversations: set[str] = field(default_factory=set)
    state: dict[str, str] = field(default_factory=dict)  # the channel state a restart keeps
    fail_with: BaseException | None = None
    submits: int = 0  # calls of submit, failed ones too
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _turns: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def submit(self, message: InboundMessage) -> Accepted:
        self.submits += 1
        self.changed.set()
        if self.fail_with is not None:
            raise self.fail_with
        if message.external_id in self.messages:
            return Accepted(turn=0, duplicate=True)
        self.messages[message.external_id] = message
        if message.key:
            self.conversations.add(message.key)
        self.changed.set()
        return Accepted(turn=next(self._turns))

    async def operator_reply(self, reply: OperatorReply) -> bool:
        if self.fail_with is not None:
            raise self.fail_with
        if reply.external_id in self.operator_replies:
            return False
        self.operator_replies[reply.external_id] = reply
        self.changed.set()
        return True

    async def delivered(self, channel: str, external_id: str) -> Reply | None:
        return self.announcements.get(external_id)

    async def has_conversation(self, key: str) -> bool:
        return key in self.conversations

    async def keep(self, conversation_id: str, value: str) -> None:
        self.state[conversation_id] = value

    async def kept(self, conversation_id: str) -> str | None:
        return self.state.get(conversation_id)

    async def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        async def until() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), timeout)


@dataclass
class Endpoint:
    """The connector's routes served on 127.0.0.1 with a ``FakeIntake`` as the core."""

    url: str
    channel: SlackChannel
    intake: FakeIntake
    http: aiohttp.ClientSession

    @property
    def events(self) -> str:
        return f"{self.url}/slack/events"

    @property
    def interactions(self) -> str:
        return f"{self.url}/slack/interactions"


def make_settings(slack: FakeSlack, **overrides: Any) -> SlackSettings:
    values: dict[str, Any] = {
        "enabled": True, "bot_token": slack.bot_token, "signing_secret": SIGNING_SECRET, "api_url": slack.api_url,
        "tickets_channel": TICKETS,
    }  # fmt: skip
    values.update(overrides)
    return SlackSettings.model_validate(values)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        fake.add_user(CUSTOMER, email="ana@example.com", real_name="Ana Example")
        fake.add_user("U0OP", real_name="Olga Operator")
        fake.add_channel(DM, is_im=True, user=CUSTOMER)
        fake.add_channel(SHOP, "shop")
        fake.add_channel(TICKETS, "support-tickets")
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def intake() -> FakeIntake:
    return FakeIntake()


ChannelFactory = Callable[..., Awaitable[SlackChannel]]


@pytest.fixture
async def make_channel(
    slack: FakeSlack, http: aiohttp.ClientSession, intake: FakeIntake
) -> AsyncIterator[ChannelFactory]:
    """``await make_channel(**settings)``: a channel on the fake, started (unless ``start=False``), stopped after
    the test."""
    made: list[SlackChannel] = []

    async def make(*, start: bool = True, **overrides: Any) -> SlackChannel:
        interval = overrides.pop("update_interval_s", None)
        settings = make_settings(slack, **overrides)
        if interval is not None:  # below the 1 s a config may set: tests need not wait for Slack's pace
            settings = settings.model_copy(update={"update_interval_s": interval})
        channel = SlackChannel(
            settings, session=http, max_images=2, max_image_bytes=1000, has_conversation=intake.has_conversation,
            suggested_prompts=lambda: [("Track an order", "Where is my order?"), ("Return", "I want to return")],
            keep=intake.keep, kept=intake.kept,
        )  # fmt: skip
        made.append(channel)
        if start:
            await channel.start(intake)
        return channel

    yield make
    for channel in made:
        await channel.stop()


@pytest.fixture
async def channel(make_channel: ChannelFactory) -> SlackChannel:
    return await make_channel()


@pytest.fixture
async def endpoint(channel: SlackChannel, intake: FakeIntake, http: aiohttp.ClientSession) -> AsyncIterator[Endpoint]:
    app = web.Application()
    add_routes(app, Receiver(channel), lambda request: intake, error_response=error_response)  # type: ignore[arg-type,return-value]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Endpoint(url=f"http://127.0.0.1:{runner.addresses[0][1]}", channel=channel, intake=intake, http=http)
    finally:
        await runner.cleanup()
