"""The admin API's part of the OpenAPI document (``/api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

__all__ = ["ADMIN_OPENAPI"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: dict[str, Any], description: str, status: str = "200") -> dict[str, Any]:
    return {
        status: {"description": description, "content": {"application/json": {"schema": schema}}},
        "400": {"$ref": "#/components/responses/AdminBadRequest"},
        "401": {"$ref": "#/components/responses/AdminUnauthorized"},
        "404": {"$ref": "#/components/responses/AdminNotFound"},
    }


def _op(summary: str, responses: dict[str, Any], *, body: dict[str, Any] | None = None,
        parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    operation: dict[str, Any] = {"summary": summary, "tags": ["admin"], "security": [{"adminToken": []}],
                                 "responses": responses}  # fmt: skip
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema or {"type": "string"}, "description": description}


_OPERATOR = {"name": "X-Operator", "in": "header", "schema": {"type": "string", "maxLength": 80},
             "description": "Who does it; recorded on the ticket as api:<name>"}  # fmt: skip
_TICKET_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
_CONVERSATION_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_TEXT = {"type": "object", "required": ["text"], "additionalProperties": False,
         "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 10000}}}  # fmt: skip
_STATUS = {"type": "string", "enum": ["open", "pending", "solved", "closed"]}
_PRIORITY = {"type": "string", "enum": ["low", "normal", "high", "urgent"]}
_PAGE = [
    _query("page", "1-based page", {"type": "integer", "minimum": 1}),
    _query("per_page", "Page size (default 50)", {"type": "integer", "minimum": 1, "maximum": 500}),
]
_TICKET_FILTERS = [
    _query("status", "Statuses, repeated or comma-separated"), _query("priority", "Priorities, likewise"),
    _query("channel", "web, terminal, ..."), _query("flow", "Flow name"), _query("assignee", "Assignee"),
    _query("from", "Created on or after (YYYY-MM-DD)", {"type": "string", "format": "date"}),
    _query("to", "Created on or before (YYYY-MM-DD)", {"type": "string", "format": "date"}),
    _query("q", "Text in the subject, description or conversation"),
    _query("sort", "created, updated, priority, status or id"), _query("order", "desc (default) or asc"),
    _query("after", "Only tickets with a larger id", {"type": "integer"}), *_PAGE,
]  # fmt: skip
_LIST = {"type": "object", "properties": {"total": {"type": "integer"}, "offset": {"type": "integer"},
                                          "limit": {"type": "integer"}}}  # fmt: skip

ADMIN_OPENAPI: dict[str, Any] = {
    "info": {
        "description": (
            "Admin API (/api/v1/admin/...): tickets and conversations for operators' scripts. Send the admin "
            "token (admin.token) as a Bearer token; name yourself in X-Operator to be recorded as the actor."
        )
    },
    "paths": {
        "/api/v1/admin/tickets": {
            "get": _op(
                "List tickets",
                _ok(
                    {
                        "allOf": [
                            _LIST,
                            {"type": "object", "properties": {"tickets": {"type": "array", "items": _ref("Ticket")}}},
                        ]
                    },
                    "A page of tickets",
                ),
                parameters=_TICKET_FILTERS,
            ),
        },
        "/api/v1/admin/tickets/{id}": {
            "get": _op(
                "A ticket with its events, conversation, messages and totals",
                _ok(_ref("TicketDocument"), "The ticket"),
                parameters=[_TICKET_ID],
            ),
            "patch": _op(
                'Change status, priority or assignee ("" unassigns)',
                _ok({"type": "object", "properties": {"ticket": _ref("Ticket")}}, "The ticket now"),
                parameters=[_TICKET_ID, _OPERATOR],
                body={
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"status": _STATUS, "priority": _PRIORITY, "assignee": {"type": "string"}},
                },
            ),
        },
        "/api/v1/admin/tickets/{id}/reply": {
            "post": _op(
                "Reply to the customer as a person (the bot pauses in the conversation)",
                _ok({"type": "object", "properties": {"message": _ref("Message")}}, "The stored reply", "201"),
                parameters=[_TICKET_ID, _OPERATOR],
                body=_TEXT,
            ),
        },
        "/api/v1/admin/tickets/{id}/notes": {
            "post": _op(
                "Add an internal note",
                _ok({"type": "object", "properties": {"ticket": _ref("Ticket")}}, "The ticket", "201"),
                parameters=[_TICKET_ID, _OPERATOR],
                body=_TEXT,
            ),
        },
        "/api/v1/admin/tickets/{id}/handback": {
            "post": _op(
                "Hand the conversation back to the bot",
                _ok({"type": "object", "properties": {"conversation": _ref("Conversation")}}, "Done"),
                parameters=[_TICKET_ID, _OPERATOR],
            ),
        },
        "/api/v1/admin/conversations": {
            "get": _op(
                "List conversations, latest activity first",
                _ok(
                    {
                        "allOf": [
                            _LIST,
                            {
                                "type": "object",
                                "properties": {"conversations": {"type": "array", "items": _ref("Conversation")}},
                            },
                        ]
                    },
                    "A page",
                ),
                parameters=[
                    _query("status", "bot, human or closed"),
                    _query("channel", "Channel"),
                    _query("flow", "Flow"),
                    _query("customer", "Part of the email or name"),
                    _query("q", "Text said in the conversation"),
                    *_PAGE,
                ],
            ),
        },
        "/api/v1/admin/conversations/{id}": {
            "get": _op(
                "A conversation with its tickets, messages and totals",
                _ok(
                    {
                        "type": "object",
                        "properties": {
                            "conversation": _ref("Conversation"),
                            "tickets": {"type": "array", "items": _ref("Ticket")},
                            "messages": {"type": "array", "items": _ref("Message")},
                            "totals": {"type": "object"},
                        },
                    },
                    "The conversation",
                ),
                parameters=[_CONVERSATION_ID],
            ),
        },
        "/api/v1/admin/conversations/{id}/reply": {
            "post": _op(
                "Reply to the customer as a person",
                _ok({"type": "object", "properties": {"message": _ref("Message")}}, "The stored reply", "201"),
                parameters=[_CONVERSATION_ID, _OPERATOR],
                body=_TEXT,
            ),
        },
        "/api/v1/admin/conversations/{id}/handback": {
            "post": _op(
                "Hand the conversation back to the bot",
                _ok({"type": "object", "properties": {"conversation": _ref("Conversation")}}, "Done"),
                parameters=[_CONVERSATION_ID, _OPERATOR],
            ),
        },
        "/api/v1/admin/overview": {
            "get": _op(
                "Tickets and cost per day, open tickets by age, cost per flow",
                _ok({"type": "object"}, "The figures"),
                parameters=[
                    _query("days", "Window in days (default 14)", {"type": "integer", "minimum": 1, "maximum": 366})
                ],
            ),
        },
    },
    "components": {
        "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer", "description": "admin.token"}},
        "responses": {
            "AdminBadRequest": {
                "description": "A parameter or field is wrong; the message says which",
                "content": {"application/json": {"schema": _ref("Error")}},
            },
            "AdminUnauthorized": {
                "description": "No or a wrong admin token",
                "content": {"application/json": {"schema": _ref("Error")}},
            },
            "AdminNotFound": {
                "description": "No such ticket or conversation, or the admin API is off",
                "content": {"application/json": {"schema": _ref("Error")}},
            },
        },
        "schemas": {
            "Ticket": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "subject": {"type": "string"},
                    "description": {"type": "string"},
                    "status": _STATUS,
                    "priority": _PRIORITY,
                    "kind": {"type": "string", "enum": ["request", "handoff", "escalation"]},
                    "conversation_id": {"type": ["string", "null"]},
                    "customer_id": {"type": ["string", "null"]},
                    "channel": {"type": ["string", "null"]},
                    "flow": {"type": ["string", "null"]},
                    "assignee": {"type": ["string", "null"]},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
            },
            "TicketEvent": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "ticket_id": {"type": "integer"},
                    "actor": {"type": "string"},
                    "action": {"type": "string"},
                    "detail": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                },
            },
            "Conversation": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "customer_id": {"type": "string"},
                    "channel": {"type": "string"},
                    "flow": {"type": "string"},
                    "status": {"type": "string", "enum": ["bot", "human", "closed"]},
                    "turns": {"type": "integer"},
                    "input_tokens": {"type": "integer"},
                    "output_tokens": {"type": "integer"},
                    "cost_usd": {"type": "number"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
            },
            "Message": {
                "type": "object",
                "description": "A stored message; tool calls keep their provider extras",
                "properties": {
                    "id": {"type": "integer"},
                    "conversation_id": {"type": "string"},
                    "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
                    "content": {"type": ["string", "null"]},
                    "kind": {"type": "string"},
                    "status": {"type": "string"},
                    "tool_calls": {"type": "array", "items": {"type": "object"}},
                    "tool_call_id": {"type": ["string", "null"]},
                    "tool_name": {"type": ["string", "null"]},
                    "model": {"type": ["string", "null"]},
                    "usage": {"type": ["object", "null"]},
                    "cost_usd": {"type": "number"},
                    "latency_ms": {"type": ["number", "null"]},
                    "author": {"type": ["string", "null"]},
                    "created_at": {"type": "string", "format": "date-time"},
                },
            },
            "TicketDocument": {
                "type": "object",
                "properties": {
                    "ticket": _ref("Ticket"),
                    "events": {"type": "array", "items": _ref("TicketEvent")},
                    "conversation": {"oneOf": [_ref("Conversation"), {"type": "null"}]},
                    "messages": {"type": "array", "items": _ref("Message")},
                    "totals": {"type": "object"},
                },
            },
        },
    },
}
