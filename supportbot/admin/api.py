"""The admin JSON API under ``/api/v1/admin/``: tickets and conversations for scripts and other tools.

Every request needs ``Authorization: Bearer <admin.token>``. Actions are recorded under the name in
the ``X-Operator`` header (``api`` without one). Errors are ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

from aiohttp import web

from supportbot.admin.auth import Auth
from supportbot.admin.params import PRIORITIES, STATUSES, ParamError, conversation_query, ticket_query
from supportbot.admin.transcript import totals
from supportbot.operators import NotFound, OperatorError, Operators, OperatorStore
from supportbot.records import conversation_json, event_json, jsonable, message_json, ticket_json
from supportbot.store.base import TicketPriority, TicketStatus
from supportbot.webapp import error_response

__all__ = ["AdminAPI"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/api/v1/admin"
_ID = r"{id:\d+}"
_CID = r"{id:[A-Za-z0-9_-]+}"


def _actor(request: web.Request) -> str:
    name = request.headers.get("X-Operator", "").strip()
    return f"api:{name[:80]}" if name else "api"


class _BadJSON(Exception):
    """The request body is not a JSON object; the message says so."""


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _BadJSON("the body is not JSON; send an object") from None
    if not isinstance(data, dict):
        raise _BadJSON("the body must be a JSON object")
    return data


def _text_field(data: dict[str, Any], name: str = "text") -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise OperatorError(f"{name}: give the text as a string")
    return value


class AdminAPI:
    def __init__(self, auth: Auth, operators: Operators) -> None:
        self.auth = auth
        self.operators = operators
        self.store: OperatorStore = operators.store

    def add_routes(self, router: web.UrlDispatcher) -> None:
        add = router.add_route
        add("GET", f"{PREFIX}/tickets", self.guard(self.list_tickets))
        add("GET", f"{PREFIX}/tickets/{_ID}", self.guard(self.get_ticket))
        add("PATCH", f"{PREFIX}/tickets/{_ID}", self.guard(self.patch_ticket))
        add("POST", f"{PREFIX}/tickets/{_ID}/reply", self.guard(self.reply_ticket))
        add("POST", f"{PREFIX}/tickets/{_ID}/notes", self.guard(self.note_ticket))
        add("POST", f"{PREFIX}/tickets/{_ID}/handback", self.guard(self.handback_ticket))
        add("GET", f"{PREFIX}/conversations", self.guard(self.list_conversations))
        add("GET", f"{PREFIX}/conversations/{_CID}", self.guard(self.get_conversation))
        add("POST", f"{PREFIX}/conversations/{_CID}/reply", self.guard(self.reply_conversation))
        add("POST", f"{PREFIX}/conversations/{_CID}/handback", self.guard(self.handback_conversation))
        add("GET", f"{PREFIX}/overview", self.guard(self.overview))

    def guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self.auth.api_enabled:
                return error_response(
                    404, "admin_api_off", "the admin API is off; set admin.token in the configuration"
                )
            if not self.auth.api_request_ok(request):
                return error_response(
                    401, "unauthorized", "send the admin token as 'Authorization: Bearer <admin.token>'"
                )
            try:
                return await handler(request)
            except ParamError as exc:
                return error_response(400, "bad_parameter", str(exc))
            except _BadJSON as exc:
                return error_response(400, "bad_json", str(exc))
            except NotFound as exc:
                return error_response(404, "not_found", str(exc))
            except OperatorError as exc:
                return error_response(400, "bad_request", str(exc))

        return guarded

    async def list_tickets(self, request: web.Request) -> web.Response:
        query = ticket_query(request.query)
        page = await self.store.search_tickets(query)
        return web.json_response(
            {
                "tickets": [ticket_json(t) for t in page.tickets],
                "total": page.total,
                "offset": query.offset,
                "limit": query.limit,
            }
        )

    async def _ticket_document(self, ticket_id: int) -> dict[str, Any]:
        ticket = await self.operators.ticket(ticket_id)
        conversation = await self.store.get_conversation(ticket.conversation_id) if ticket.conversation_id else None
        messages = await self.store.list_messages(ticket.conversation_id) if ticket.conversation_id else []
        return {
            "ticket": ticket_json(ticket),
            "events": [event_json(e) for e in await self.store.ticket_events(ticket.id)],
            "conversation": conversation_json(conversation) if conversation else None,
            "messages": [message_json(m) for m in messages],
            "totals": jsonable(_asdict(totals(messages))),
        }

    async def get_ticket(self, request: web.Request) -> web.Response:
        return web.json_response(await self._ticket_document(int(request.match_info["id"])))

    async def patch_ticket(self, request: web.Request) -> web.Response:
        ticket_id = int(request.match_info["id"])
        data = await _body(request)
        unknown = sorted(set(data) - {"status", "priority", "assignee"})
        if unknown:
            return error_response(
                400, "bad_request", f"unknown field(s) {', '.join(unknown)}; send status, priority, assignee"
            )
        status, priority, assignee = data.get("status"), data.get("priority"), data.get("assignee")
        if status is not None and status not in STATUSES:
            return error_response(400, "bad_request", f"status: use one of {', '.join(STATUSES)}")
        if priority is not None and priority not in PRIORITIES:
            return error_response(400, "bad_request", f"priority: use one of {', '.join(PRIORITIES)}")
        if assignee is not None and not isinstance(assignee, str):
            return error_response(400, "bad_request", 'assignee: a name, or "" for nobody')
        ticket = await self.operators.update(
            ticket_id, actor=_actor(request), status=cast(TicketStatus | None, status),
            priority=cast(TicketPriority | None, priority), assignee=assignee,
        )  # fmt: skip
        return web.json_response({"ticket": ticket_json(ticket)})

    async def reply_ticket(self, request: web.Request) -> web.Response:
        data = await _body(request)
        message = await self.operators.reply(
            actor=_actor(request), text=_text_field(data), ticket_id=int(request.match_info["id"])
        )
        return web.json_response({"message": message_json(message)}, status=201)

    async def note_ticket(self, request: web.Request) -> web.Response:
        data = await _body(request)
        ticket = await self.operators.note(int(request.match_info["id"]), actor=_actor(request), text=_text_field(data))
        return web.json_response({"ticket": ticket_json(ticket)}, status=201)

    async def handback_ticket(self, request: web.Request) -> web.Response:
        conversation = await self.operators.hand_back(actor=_actor(request), ticket_id=int(request.match_info["id"]))
        return web.json_response({"conversation": conversation_json(conversation)})

    async def list_conversations(self, request: web.Request) -> web.Response:
        query = conversation_query(request.query)
        page = await self.store.search_conversations(query)
        return web.json_response(
            {
                "conversations": [conversation_json(c) for c in page.conversations],
                "total": page.total,
                "offset": query.offset,
                "limit": query.limit,
            }
        )

    async def get_conversation(self, request: web.Request) -> web.Response:
        conversation = await self.operators.conversation(request.match_info["id"])
        messages = await self.store.list_messages(conversation.id)
        return web.json_response(
            {
                "conversation": conversation_json(conversation),
                "tickets": [ticket_json(t) for t in await self.store.list_tickets(conversation_id=conversation.id)],
                "messages": [message_json(m) for m in messages],
                "totals": jsonable(_asdict(totals(messages))),
            }
        )

    async def reply_conversation(self, request: web.Request) -> web.Response:
        data = await _body(request)
        message = await self.operators.reply(
            actor=_actor(request), text=_text_field(data), conversation_id=request.match_info["id"]
        )
        return web.json_response({"message": message_json(message)}, status=201)

    async def handback_conversation(self, request: web.Request) -> web.Response:
        conversation = await self.operators.hand_back(actor=_actor(request), conversation_id=request.match_info["id"])
        return web.json_response({"conversation": conversation_json(conversation)})

    async def overview(self, request: web.Request) -> web.Response:
        raw = request.query.get("days", "14")
        if not raw.isdigit() or not 1 <= int(raw) <= 366:
            return error_response(400, "bad_parameter", "days: a whole number from 1 to 366")
        overview = await self.store.overview(days=int(raw), now=datetime.now(UTC))
        return web.json_response(jsonable(_asdict(overview)))


def _asdict(value: Any) -> dict[str, Any]:
    from dataclasses import asdict

    data: dict[str, Any] = asdict(value)
    return data
