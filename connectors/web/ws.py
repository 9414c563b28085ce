"""The widget's WebSocket, ``/widget/ws`` (docs/web-protocol.md).

The token comes in the ``Sec-WebSocket-Protocol`` header (``token.<token>``), never in the URL.
On connect the client gets its ``history``; from then on every event of its conversation, and
its own messages are acknowledged once stored. A closed socket never stops a turn: the turn runs
in the dispatcher, and a reconnecting client is shown the reply so far and the rest as it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from connectors.web import wire
from connectors.web.channel import NewMessage, Refused, WebChannel, parse
from connectors.web.security import SUBPROTOCOL
from supportbot.dispatch import Subscription, Unavailable
from supportbot.errors import Busy, StorageError

__all__ = ["CLOSE_TOO_MANY", "CLOSE_UNAUTHORIZED", "websocket"]

log = logging.getLogger("supportbot.web")

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_MANY = 4429
HEARTBEAT_S = 25.0
_NOT_STORED = "the message could not be stored right now; it will be sent again when the chat reconnects"
SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("web_sockets")


async def websocket(request: web.Request, channel: WebChannel) -> web.StreamResponse:
    channel.check_origin(request)  # refused before the upgrade: 403
    channel.check_ip(request)
    ws = web.WebSocketResponse(
        protocols=(SUBPROTOCOL,), heartbeat=HEARTBEAT_S, max_msg_size=channel.max_message_bytes, compress=False
    )
    await ws.prepare(request)
    try:
        conversation_id = await channel.authorize(request)
    except Refused as refused:
        await ws.close(code=CLOSE_UNAUTHORIZED, message=refused.message.encode()[:120])
        return ws
    dispatcher = channel.dispatcher
    if dispatcher.subscribers(conversation_id) >= channel.settings.rate_limits.connections_per_conversation:
        await ws.close(code=CLOSE_TOO_MANY, message=b"too many open windows on this conversation")
        return ws
    sockets = request.app[SOCKETS]
    sockets.add(ws)
    metrics = dispatcher.metrics
    if metrics:
        metrics.websockets.inc()
    subscription = dispatcher.subscribe(conversation_id)  # before the history: nothing falls in between
    writer = asyncio.create_task(_forward(ws, subscription))
    try:
        await _send(ws, {"type": "history", **await channel.history(conversation_id)})
        if not channel.runtime.has_model:
            await _send(ws, _error("no_model", wire.unavailable_text(channel.runtime.config.company)))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await _handle(ws, channel, conversation_id, msg.data)
            elif msg.type == WSMsgType.BINARY:
                await _send(ws, _error("bad_request", "send JSON text frames, not binary ones"))
            elif msg.type == WSMsgType.ERROR:
                log.debug("widget socket error: %s", ws.exception())
    finally:
        subscription.close()
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        sockets.discard(ws)
        if metrics:
            metrics.websockets.dec()
    return ws


async def _forward(ws: web.WebSocketResponse, subscription: Subscription) -> None:
    """Send what is published to the conversation, in order, until the socket closes."""
    async for item in subscription:
        frame = wire.frame(item)
        if frame is not None and not ws.closed:
            try:
                await ws.send_json(frame)
            except ConnectionError:
                return


async def _handle(ws: web.WebSocketResponse, channel: WebChannel, conversation_id: str, data: str) -> None:
    try:
        payload = json.loads(data)
    except ValueError:
        await _send(ws, _error("bad_request", "a frame must be a JSON object"))
        return
    if not isinstance(payload, dict) or payload.get("type") != "message":
        await _send(ws, _error("bad_request", 'the only frame a client sends is {"type": "message", ...}'))
        return
    payload.pop("type")
    client_id = payload.get("client_message_id")
    try:
        if not channel.runtime.has_model:
            raise Refused(503, "no_model", wire.unavailable_text(channel.runtime.config.company))
        accepted = await channel.accept(conversation_id, parse(NewMessage, payload))
    except Refused as refused:
        await _send(ws, _error(refused.code, refused.message, retry_after=refused.retry_after,
                               client_message_id=client_id))  # fmt: skip
        return
    except Busy as exc:
        channel.count_error("busy")
        await _send(ws, _error("busy", str(exc), retry_after=exc.retry_after, client_message_id=client_id))
        return
    except Unavailable as exc:
        await _send(ws, _error("unavailable", str(exc), retryable=True, client_message_id=client_id))
        return
    except StorageError as exc:
        # The storage error names the database: it goes to the log, not to the customer.
        log.error("a widget message could not be stored (the widget sends it again): %s", exc)
        await _send(ws, _error("unavailable", _NOT_STORED, retryable=True, client_message_id=client_id))
        return
    await _send(ws, {"type": "ack", "client_message_id": client_id, "turn": accepted.turn,
                     "duplicate": accepted.duplicate})  # fmt: skip


def _error(
    code: str,
    message: str,
    *,
    retryable: bool = False,
    retry_after: float | None = None,
    client_message_id: Any = None,
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message,
                             "retryable": retryable or retry_after is not None}  # fmt: skip
    if retry_after is not None:
        frame["retry_after"] = round(retry_after, 1)
    if client_message_id is not None:
        frame["client_message_id"] = client_message_id
    return frame


async def _send(ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
    if not ws.closed:
        with contextlib.suppress(ConnectionError):
            await ws.send_json(frame)


async def close_all(app: web.Application) -> None:
    """On shutdown: tell every widget to reconnect later (1001 going away)."""
    sockets: set[web.WebSocketResponse] = app[SOCKETS]
    for socket in list(sockets):
        await socket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
