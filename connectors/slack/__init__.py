"""The Slack channel: customers in DMs, channel mentions and assistant threads; operators in a tickets channel.

``CONNECTOR`` is the ``slack`` entry point of ``supportbot.connectors``; ``supportbot serve`` calls
``setup`` when ``connectors.slack.enabled`` is true (docs/slack.md sets the app up). Events arrive at
``POST /slack/events`` and button presses at ``POST /slack/interactions`` (signed by Slack), or over
Socket Mode when ``app_token`` is set; both go through one ``Receiver`` that stores them before
Slack is acknowledged. Replies leave through ``SlackChannel.deliver`` from the core's outbox.

Modules: ``settings`` (the config section), ``inbound`` (what an event means), ``receive`` (storing
it), ``routes`` and ``socket_mode`` (the two transports), ``channel`` (deliver, prepare, render),
``live`` (a reply shown while it is written), ``mrkdwn`` (safe text both ways), ``people`` (users
and images), ``api`` (rate budgets and Slack's errors).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from aiohttp import web

from connectors.slack.channel import SlackChannel
from connectors.slack.inbound import CHANNEL
from connectors.slack.receive import Receiver
from connectors.slack.routes import OPENAPI, add_routes
from connectors.slack.settings import SlackSettings
from connectors.slack.socket_mode import SocketMode
from supportbot.channels import Connector
from supportbot.store.mailboxes import ChannelState, Mailboxes

__all__ = ["CONNECTOR", "SlackChannel", "SlackSettings", "setup"]


def setup(app: web.Application, settings: SlackSettings) -> SlackChannel:
    """Add the Slack routes to the server and return the channel the core delivers through."""
    from supportbot.server import INTAKE, RUNTIME, add_openapi, error_response  # the server imports connectors

    runtime = app[RUNTIME]
    limits = runtime.config.limits
    store = runtime.store

    def prompts() -> Sequence[tuple[str, str]]:
        flow = runtime.flows.get(runtime.config.flows.default)
        return [(prompt.title, prompt.message) for prompt in flow.suggested_prompts]

    mailboxes = cast(Mailboxes, store)  # SQLStore has them; the server delivers through them

    async def has_conversation(key: str) -> bool:
        return await mailboxes.conversation_for_key(CHANNEL, key) is not None

    async def keep(conversation_id: str, value: str) -> None:
        await mailboxes.set_channel_state(ChannelState(channel=CHANNEL, key=f"live:{conversation_id}", value=value))

    async def kept(conversation_id: str) -> str | None:
        return await mailboxes.channel_state(CHANNEL, f"live:{conversation_id}")

    channel = SlackChannel(
        settings, session=runtime.http, max_images=limits.max_images_per_message,
        max_image_bytes=limits.max_image_bytes, suggested_prompts=prompts, has_conversation=has_conversation,
        keep=keep, kept=kept,
    )  # fmt: skip
    receiver = Receiver(channel)
    add_routes(app, receiver, lambda request: request.app[INTAKE], error_response=error_response)
    if channel.verifier is not None:
        add_openapi(app, OPENAPI)
    if settings.app_token is not None:
        socket = SocketMode(receiver, app_token=settings.app_token.get_secret_value(), api_url=settings.api_url)
        channel.on_start.append(socket.start)
        channel.on_stop.append(socket.stop)
    return channel


CONNECTOR = Connector(name="slack", settings=SlackSettings, setup=setup)
