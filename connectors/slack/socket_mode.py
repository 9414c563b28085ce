"""Socket Mode: Slack's events over a WebSocket the server opens (``connectors.slack.app_token``).

slack_sdk's aiohttp ``SocketModeClient`` connects (``apps.connections.open``) and reconnects; each
envelope goes through the same ``Receiver`` as an HTTP event and is acknowledged
(``{"envelope_id": …}``) only once stored. An envelope that could not be stored is not
acknowledged, and Slack sends it again.
"""

from __future__ import annotations

import logging

from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from connectors.slack.receive import Outcome, Receiver
from supportbot.channels import Intake

__all__ = ["SocketMode"]

log = logging.getLogger("supportbot.slack")


class SocketMode:
    """The Socket Mode connection of one app, feeding ``receiver``."""

    def __init__(self, receiver: Receiver, *, app_token: str, api_url: str) -> None:
        self.receiver = receiver
        self.app_token = app_token
        self.api_url = api_url
        self.client: SocketModeClient | None = None
        self.intake: Intake | None = None

    async def start(self, intake: Intake) -> None:
        """Connect; returns once the first connection is open (later drops reconnect on their own)."""
        self.intake = intake
        self.client = SocketModeClient(
            app_token=self.app_token, web_client=AsyncWebClient(base_url=self.api_url), logger=log,
            ping_interval=10,
        )  # fmt: skip
        self.client.socket_mode_request_listeners.append(self._on_request)
        await self.client.connect()  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()  # type: ignore[no-untyped-call]
            self.client = None

    async def _on_request(self, client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        intake = self.intake
        if intake is None:  # pragma: no cover - requests come only after start
            return
        payload = request.payload if isinstance(request.payload, dict) else {}
        if request.type == "events_api":
            outcome = await self.receiver.event(payload, intake)
        elif request.type == "interactive":
            outcome = await self.receiver.action(payload, intake)
        else:
            outcome = Outcome()  # slash commands and the like: nothing for the bot; acknowledged
        if outcome.ok:
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        else:
            log.warning("Socket Mode envelope %s not acknowledged (%s); Slack will send it again",
                        request.envelope_id, outcome.code)  # fmt: skip
