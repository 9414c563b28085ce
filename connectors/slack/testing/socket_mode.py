"""Socket Mode: ``apps.connections.open``'s one-time URLs, the socket endpoint, envelopes pushed and acks.

The socket greets with ``hello``; each envelope goes to one connected socket (round robin, as Slack spreads
them over several connections); a client acks with ``{"envelope_id": ...}``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp
from aiohttp import web

from connectors.slack.testing.records import Ack
from connectors.slack.testing.wire import slack_json
from connectors.slack.testing.workspace import _Workspace


class _SocketMode(_Workspace):
    """Socket Mode's endpoint (``/link/``) and what a test pushes through it."""

    async def push(
        self,
        payload: Mapping[str, Any],
        type: Literal["events_api", "interactive", "slash_commands"] = "events_api",
        envelope_id: str | None = None,
        *,
        retry_attempt: int = 0,
        retry_reason: str = "",
        accepts_response_payload: bool | None = None,
    ) -> str:
        """Sends an envelope to one connected Socket Mode client (round robin, as Slack spreads them).

        Returns:
            The envelope id, to ``wait_ack`` for.

        Raises:
            RuntimeError: no client is connected.
        """
        if not self._sockets:
            raise RuntimeError(
                "FakeSlack.push: no Socket Mode client is connected; start one with this fake's api_url and "
                "app_token, and await fake.wait_connected() first"
            )
        envelope_id = envelope_id or str(uuid.uuid4())
        accepts = (type == "slash_commands") if accepts_response_payload is None else accepts_response_payload
        envelope: dict[str, Any] = {"envelope_id": envelope_id, "payload": dict(payload), "type": type}
        envelope["accepts_response_payload"] = accepts
        if type == "events_api":
            envelope |= {"retry_attempt": retry_attempt, "retry_reason": retry_reason}
        ws = self._sockets[self._next_socket % len(self._sockets)]
        self._next_socket += 1
        self.envelopes.append(envelope)
        await ws.send_str(slack_json(envelope).decode())
        return envelope_id

    async def disconnect(self, reason: str = "refresh_requested", *, close: bool = False) -> None:
        """Sends ``{"type": "disconnect", "reason": ...}`` to every client; ``close`` then drops the sockets."""
        message = slack_json({"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake-1"}})
        for ws in list(self._sockets):
            await ws.send_str(message.decode())
            if close:
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid or used ticket; call apps.connections.open for a new URL")
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True)  # answers slack_sdk's pings with pongs of the same data
        await ws.prepare(request)
        self._sockets.append(ws)
        self.connects += 1
        hello = {"type": "hello", "num_connections": len(self._sockets)}
        hello["debug_info"] = {"host": "applink-fake-1", "build_number": 1, "approximate_connection_time": 18060}
        hello["connection_info"] = {"app_id": self.app_id}
        await ws.send_str(slack_json(hello).decode())
        await self._notify()
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    message = json.loads(frame.data)
                except ValueError:
                    continue
                if isinstance(message, dict) and message.get("envelope_id"):
                    ack = Ack(
                        envelope_id=str(message["envelope_id"]), payload=message.get("payload"), at=time.monotonic()
                    )
                    self.acks.append(ack)
                    await self._notify()
        finally:
            self._sockets.remove(ws)
            await self._notify()
        return ws

    def _connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self._port}/link/?ticket={ticket}&app_id={self.app_id}"}
