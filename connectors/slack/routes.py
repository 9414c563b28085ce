"""``POST /slack/events`` and ``POST /slack/interactions``: Slack's signed HTTP requests.

The signature (``X-Slack-Signature``, HMAC-SHA256 of ``v0:<timestamp>:<raw body>`` with the app's
signing secret, ``X-Slack-Request-Timestamp`` within 5 minutes) is checked on the raw bytes, with
slack_sdk's verifier, before anything is parsed: a bad, missing or stale one is a 401.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from connectors.slack.receive import Outcome, Receiver
from supportbot.channels import Intake

__all__ = ["OPENAPI", "add_routes", "verified"]

log = logging.getLogger("supportbot.slack")

_UNSIGNED = (
    "the request is not signed by Slack with this app's signing secret: X-Slack-Signature must be "
    "v0=HMAC-SHA256(signing secret, 'v0:<X-Slack-Request-Timestamp>:<body>') and the timestamp within 5 minutes; "
    "check connectors.slack.signing_secret (Basic Information > Signing Secret) and this server's clock"
)


def verified(verifier: SignatureVerifier, body: bytes, headers: Mapping[str, str]) -> bool:
    """Slack signed ``body`` (exactly these bytes) with our secret within the last 5 minutes."""
    try:
        return verifier.is_valid_request(body, dict(headers))
    except (ValueError, UnicodeDecodeError):  # a timestamp that is no number, a body that is no UTF-8
        return False


def add_routes(
    app: web.Application,
    receiver: Receiver,
    intake: Callable[[web.Request], Intake],
    *,
    error_response: Callable[[int, str, str], web.Response],
) -> None:
    """Add the two routes; ``intake`` finds the core's ``Intake`` for a request."""
    verifier = receiver.channel.verifier
    if verifier is None:  # Socket Mode only: Slack sends nothing over HTTP
        return

    def refused(status: int, code: str, message: str) -> web.Response:
        return error_response(status, code, message)

    def answer(outcome: Outcome) -> web.Response:
        if outcome.ok:
            return web.Response(status=outcome.status)
        return refused(outcome.status, outcome.code, outcome.message)

    async def events(request: web.Request) -> web.Response:
        body = await request.read()
        if not verified(verifier, body, request.headers):
            return refused(401, "invalid_signature", _UNSIGNED)
        try:
            envelope = json.loads(body)
        except ValueError:
            return refused(400, "bad_request", "the body is not JSON; Slack sends events as application/json")
        if not isinstance(envelope, dict):
            return refused(400, "bad_request", "the body is not a JSON object")
        if envelope.get("type") == "url_verification":
            return web.json_response({"challenge": envelope.get("challenge")})
        retry = request.headers.get("X-Slack-Retry-Num")
        if retry:
            log.info("Slack retry %s of event %s (%s)", retry, envelope.get("event_id"),
                     request.headers.get("X-Slack-Retry-Reason"))  # fmt: skip
        return answer(await receiver.event(envelope, intake(request)))

    async def interactions(request: web.Request) -> web.Response:
        body = await request.read()
        if not verified(verifier, body, request.headers):
            return refused(401, "invalid_signature", _UNSIGNED)
        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=False)
            payload: Any = json.loads(form["payload"][0])
        except (UnicodeDecodeError, KeyError, IndexError, ValueError):
            return refused(400, "bad_request", "the body is not payload=<JSON> (application/x-www-form-urlencoded)")
        if not isinstance(payload, dict):
            return refused(400, "bad_request", "the payload is not a JSON object")
        return answer(await receiver.action(payload, intake(request)))

    app.router.add_post("/slack/events", events)
    app.router.add_post("/slack/interactions", interactions)


_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
OPENAPI: dict[str, Any] = {
    "info": {"description": "Slack: the Events API and interactivity request URLs of the Slack app (docs/slack.md)."},
    "paths": {
        "/slack/events": {
            "post": {
                "tags": ["slack"],
                "summary": "Slack Events API request URL (signed by Slack)",
                "description": "url_verification is answered with its challenge; each event is stored before the "
                "2xx, so a retry (X-Slack-Retry-Num) is never answered twice.",
                "responses": {
                    "200": {"description": "stored (or not for the bot), or the url_verification challenge"},
                    "400": {"description": "not a JSON object", **_ERROR},
                    "401": {"description": "bad, missing or stale signature", **_ERROR},
                    "500": {"description": "could not be stored; Slack retries", **_ERROR},
                    "503": {"description": "shutting down; Slack retries", **_ERROR},
                },
            }
        },
        "/slack/interactions": {
            "post": {
                "tags": ["slack"],
                "summary": "Slack interactivity request URL: Yes/No and Hand back to bot buttons (signed by Slack)",
                "responses": {
                    "200": {"description": "stored"},
                    "400": {"description": "not payload=<JSON>", **_ERROR},
                    "401": {"description": "bad, missing or stale signature", **_ERROR},
                    "500": {"description": "could not be stored; Slack retries", **_ERROR},
                    "503": {"description": "shutting down", **_ERROR},
                },
            }
        },
    },
}
