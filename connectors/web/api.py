"""The conversation REST API with SSE streaming, ``/api/v1/conversations…`` (docs/web-protocol.md)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from connectors.web import wire
from connectors.web.channel import NewConversation, NewMessage, Refused, WebChannel, parse
from supportbot.dispatch import Accepted, Subscription, TurnEvent, Unavailable
from supportbot.errors import Busy
from supportbot.events import TurnFailed, TurnFinished

__all__ = ["create_conversation", "list_messages", "post_message"]

PING_S = 15.0


async def _json_body(request: web.Request) -> Any:
    if not request.body_exists:
        return {}
    try:
        return await request.json()
    except ValueError:
        raise Refused(400, "bad_request", "the body must be JSON (Content-Type: application/json)") from None


async def create_conversation(request: web.Request, channel: WebChannel) -> web.Response:
    channel.check_ip(request)
    body = parse(NewConversation, await _json_body(request))
    channel.check_ip(request, channel.new_per_ip)
    opened = await channel.open_conversation(body)
    conversation = {"id": opened.id, "token": opened.token, "verified": opened.verified,
                    "email_verified": opened.email_verified, "status": "bot", "greeting": opened.greeting}  # fmt: skip
    return web.json_response(conversation, status=201, headers={"Cache-Control": "no-store"})


async def list_messages(request: web.Request, channel: WebChannel) -> web.Response:
    channel.check_ip(request)
    conversation_id = await channel.authorize(request, request.match_info["id"])
    after = request.query.get("after")
    if after is not None and not after.isdigit():
        raise Refused(400, "bad_request", "after: a message id (a whole number)")
    history = await channel.history(conversation_id, after=int(after) if after else None)
    return web.json_response(history, headers={"Cache-Control": "no-store"})


async def post_message(request: web.Request, channel: WebChannel) -> web.StreamResponse:
    channel.check_ip(request)
    conversation_id = await channel.authorize(request, request.match_info["id"])
    if not channel.runtime.has_model:
        raise Refused(503, "no_model", wire.unavailable_text(channel.runtime.config.company))
    body = parse(NewMessage, await _json_body(request))
    # Subscribed before the message is stored, so none of its turn's events can be missed.
    subscription = channel.dispatcher.subscribe(conversation_id)
    try:
        try:
            accepted = await channel.accept(conversation_id, body)
        except Busy as exc:
            channel.count_error("busy")
            raise Refused(429, "busy", str(exc), retry_after=exc.retry_after) from None
        except Unavailable as exc:
            raise Refused(503, "unavailable", str(exc), retry_after=5) from None
        wants_json = request.query.get("stream") == "false" or (
            "application/json" in request.headers.get("Accept", "")
            and "text/event-stream" not in request.headers.get("Accept", "")
        )
        if wants_json:
            return await _reply_json(channel, conversation_id, accepted, subscription)
        return await _reply_sse(request, accepted, subscription)
    finally:
        subscription.close()


async def _turn_events(accepted: Accepted, subscription: Subscription) -> AsyncIterator[TurnEvent | None]:
    """This message's turn's events up to its end; None after ``PING_S`` seconds without one."""
    while True:
        try:
            item = await subscription.next(PING_S)
        except TimeoutError:
            yield None
            continue
        if item is None:
            return
        if isinstance(item, TurnEvent) and item.turn == accepted.turn:
            yield item
            if isinstance(item.event, TurnFinished | TurnFailed):
                return


async def _reply_json(
    channel: WebChannel, conversation_id: str, accepted: Accepted, subscription: Subscription
) -> web.Response:
    if accepted.duplicate:
        return web.json_response({"turn": None, "status": "duplicate", "message": None})
    final: dict[str, Any] | None = None
    status = "finished"
    async for item in _turn_events(accepted, subscription):
        if item is None:
            continue
        frame = wire.frame(item)
        if isinstance(item.event, TurnFailed):
            status, final = "failed", frame and frame["message"]
        elif isinstance(item.event, TurnFinished):
            final = frame and frame["message"]
            if not item.event.text:
                conversation = await channel.store.get_conversation(conversation_id)
                status = "waiting_for_human" if conversation and conversation.status == "human" else "finished"
    return web.json_response({"turn": accepted.turn, "status": status, "message": final})


async def _reply_sse(request: web.Request, accepted: Accepted, subscription: Subscription) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    n = 0

    async def send(event: str, data: dict[str, Any]) -> None:
        nonlocal n
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        await response.write(f"id: {accepted.turn}:{n}\nevent: {event}\ndata: {payload}\n\n".encode())
        n += 1

    await send("ack", {"type": "ack", "turn": accepted.turn, "duplicate": accepted.duplicate})
    if accepted.duplicate:
        return response
    with contextlib.suppress(ConnectionError):
        async for item in _turn_events(accepted, subscription):
            if item is None:
                await response.write(b": ping\n\n")  # keeps proxies from closing an idle stream
                continue
            frame = wire.frame(item)
            if frame is not None:
                await send(frame["type"], frame)
        await response.write_eof()
    return response
