"""The OpenAPI 3.1 description of the conversation REST API, served at ``/api/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from supportbot import __version__

__all__ = ["OPENAPI"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/Forbidden"},
    "413": {"$ref": "#/components/responses/TooLarge"},
    "429": {"$ref": "#/components/responses/RateLimited"},
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "Conversation id"}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "supportbot conversation API",
        "version": __version__,
        "description": (
            "Open a conversation with the support agent, send messages and stream the replies. "
            "A conversation's token (from POST /api/v1/conversations) is sent as a Bearer token; "
            "it opens only its own conversation. Browsers must come from an allowed origin. "
            "The widget's WebSocket protocol is described in docs/web-protocol.md."
        ),
    },
    "components": {
        "securitySchemes": {"conversationToken": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "User": {
                "type": "object",
                "additionalProperties": False,
                "description": (
                    "A user of the host site. Only what the site's backend signs with the identity secret is "
                    "verified: token (a JWT, HS256: sub, email, name, exp) verifies its claims; "
                    "hash = 'v2:' + hex HMAC-SHA256(secret, 'supportbot-identity-v2\\n' + id + '\\n' + email) "
                    "verifies the id and email; hash = hex HMAC-SHA256(secret, id) verifies the id only."
                ),
                "properties": {
                    "token": {"type": "string", "maxLength": 4096, "description": "JWT (HS256) signed by the site"},
                    "id": {"type": "string", "maxLength": 200},
                    "email": {"type": "string", "maxLength": 320},
                    "name": {"type": "string", "maxLength": 200},
                    "hash": {"type": "string", "maxLength": 200},
                },
            },
            "NewConversation": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"user": _ref("User"), "flow": {"type": "string"}},
            },
            "Conversation": {
                "type": "object",
                "required": ["id", "token", "verified", "email_verified", "status"],
                "properties": {
                    "id": {"type": "string"},
                    "token": {"type": "string", "description": "Keep it secret; 256 random bits"},
                    "verified": {"type": "boolean", "description": "the site signed the user's id"},
                    "email_verified": {"type": "boolean", "description": "the site signed the user's email too"},
                    "status": {"enum": ["bot", "human", "closed"]},
                    "greeting": {"type": ["string", "null"]},
                },
            },
            "NewMessage": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "text": {
                        "type": "string",
                        "description": "At most limits.max_message_chars characters (GET /widget/config); longer: 413",
                    },
                    "images": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["url"],
                            "properties": {
                                "url": {"type": "string", "description": "data:image/(png|jpeg|gif|webp);base64,..."}
                            },
                        },
                    },
                    "client_message_id": {
                        "type": "string",
                        "maxLength": 100,
                        "description": "Idempotency key: the same id again is not answered twice",
                    },
                },
            },
            "Message": {
                "type": "object",
                "required": ["id", "role", "text", "kind", "images", "created_at"],
                "properties": {
                    "id": {"type": ["integer", "null"]},
                    "role": {"enum": ["customer", "bot", "human"]},
                    "text": {"type": "string"},
                    "kind": {"enum": ["normal", "greeting", "confirmation", "fallback", "notice", "human"]},
                    "images": {"type": "integer"},
                    "created_at": {"type": ["string", "null"], "format": "date-time"},
                    "quick_replies": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "On a confirmation not answered yet: answers to offer as buttons",
                    },
                },
            },
            "Live": {
                "type": ["object", "null"],
                "properties": {
                    "turn": {"type": "integer"},
                    "seq": {"type": "integer"},
                    "text": {"type": "string"},
                    "tool": {"type": ["string", "null"]},
                    "label": {"type": ["string", "null"]},
                },
            },
            "History": {
                "type": "object",
                "properties": {
                    "conversation": {
                        "type": "object",
                        "properties": {"id": {"type": "string"}, "status": {"enum": ["bot", "human", "closed"]}},
                    },
                    "messages": {"type": "array", "items": _ref("Message")},
                    "live": _ref("Live"),
                },
            },
            "Reply": {
                "type": "object",
                "properties": {
                    "turn": {"type": ["integer", "null"]},
                    "status": {"enum": ["finished", "failed", "waiting_for_human", "duplicate"]},
                    "message": {"oneOf": [_ref("Message"), {"type": "null"}]},
                },
            },
        },
        "responses": {
            "BadRequest": _json(_ref("Error"), "The body or a parameter is invalid; the message says which"),
            "Unauthorized": _json(_ref("Error"), "Missing token, or a token of another conversation"),
            "Forbidden": _json(_ref("Error"), "Origin not allowed, or user.hash does not verify"),
            "TooLarge": _json(_ref("Error"), "The message or an image is too large"),
            "RateLimited": {
                **_json(_ref("Error"), "Too many requests; retry after Retry-After seconds"),
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            },
        },
    },
    "paths": {
        "/api/v1/conversations": {
            "post": {
                "summary": "Open a conversation",
                "requestBody": {"content": {"application/json": {"schema": _ref("NewConversation")}}},
                "responses": {"201": _json(_ref("Conversation"), "The conversation and its token"), **_ERRORS},
            }
        },
        "/api/v1/conversations/{id}/messages": {
            "parameters": [_ID],
            "get": {
                "summary": "The conversation as the customer sees it",
                "security": [{"conversationToken": []}],
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "integer"},
                        "description": "Only newer messages",
                    }
                ],
                "responses": {"200": _json(_ref("History"), "Messages and the reply streaming now"), **_ERRORS},
            },
            "post": {
                "summary": "Send a message; stream the reply (SSE) or wait for it (JSON)",
                "security": [{"conversationToken": []}],
                "parameters": [
                    {"name": "stream", "in": "query", "schema": {"type": "boolean"}, "description": "false: JSON"}
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("NewMessage")}}},
                "responses": {
                    "200": {
                        "description": (
                            "SSE (Accept: text/event-stream, the default): events ack, turn_started, delta "
                            "{turn, seq, text}, tool_started, tool_finished, status, then turn_finished or "
                            "turn_failed {turn, message}; each with id '<turn>:<n>'. JSON (Accept: "
                            "application/json or ?stream=false): the final reply."
                        ),
                        "content": {
                            "text/event-stream": {"schema": {"type": "string"}},
                            "application/json": {"schema": _ref("Reply")},
                        },
                    },
                    **_ERRORS,
                    "503": _json(_ref("Error"), "No model connected, or the server is shutting down"),
                },
            },
        },
    },
}
