"""Slack's wire format: encoding, signing and sending events as Slack does, and message timestamps.

Encoding: Slack's backend writes JSON as PHP's ``json_encode`` does by default: compact, ``/`` escaped as
``\\/`` and non-ASCII characters as ``\\uXXXX`` escapes. The ``\\/`` is in every captured Slack body; the
``\\u`` escapes are our inference from the same encoder (``slack_json(..., escape_unicode=False)`` gives raw
UTF-8 for a test that wants both forms). Either way a receiver must verify the raw bytes, never re-encode.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
from multidict import CIMultiDict

_INTERACTIVE_TYPES = frozenset(
    (
        "block_actions",
        "block_suggestion",
        "interactive_message",
        "message_action",
        "shortcut",
        "view_closed",
        "view_submission",
    )
)

# -- encoding and signing -----------------------------------------------------------------------------------


def _u_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def slack_json(payload: object, *, escape_unicode: bool = True) -> bytes:
    """Encodes a payload as Slack sends it: compact JSON, ``/`` as ``\\/``, non-ASCII as ``\\uXXXX``.

    Args:
        payload: a JSON-ready object.
        escape_unicode: False keeps non-ASCII characters as raw UTF-8 (the ``\\/`` escapes stay).

    Returns:
        The body bytes, to sign and send as they are.
    """
    # With ensure_ascii=False, "/" and non-ASCII characters can only occur inside strings, so replacing them
    # in the output is safe; json.dumps never escapes them itself, and leaves DEL (0x7f) raw, as PHP does.
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/")
    if escape_unicode and not text.isascii():
        text = "".join(c if c < "\x80" else _u_escape(c) for c in text)
    return text.encode()


def form_body(payload: Mapping[str, Any]) -> bytes:
    """Encodes an interactivity payload as Slack posts it: ``payload=<url-encoded JSON>``.

    A slash command's fields (a mapping with a ``command`` and no ``type``) are form-encoded field by field.
    """
    if "command" in payload and "type" not in payload:
        fields = urlencode({k: "" if v is None else str(v) for k, v in payload.items()})
        return fields.replace("~", "%7E").encode()
    # Slack's bodies read like PHP's urlencode, which escapes "~" too; Python's quote_plus keeps it.
    return b"payload=" + quote_plus(slack_json(payload).decode(), safe="").replace("~", "%7E").encode()


def signed_headers(body: bytes, signing_secret: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack signs a request with: ``v0=hmac_sha256(secret, "v0:{ts}:{body}")``.

    Args:
        body: the exact body bytes that will be sent.
        signing_secret: the app's signing secret.
        timestamp: Unix seconds; now when None (pass an old one to test the 5-minute window).

    Returns:
        ``X-Slack-Request-Timestamp`` and ``X-Slack-Signature``.
    """
    stamp = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(signing_secret.encode(), b"v0:%d:%s" % (stamp, body), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(stamp), "X-Slack-Signature": f"v0={digest}"}


@dataclass(frozen=True, kw_only=True, slots=True)
class EventReply:
    """What an Events API endpoint answered.

    Attributes:
        status: the HTTP status.
        body: the response body.
        headers: the response headers.
        sent: the exact body that was signed and sent.
    """

    status: int
    body: bytes
    headers: Mapping[str, str]
    sent: bytes

    @property
    def text(self) -> str:
        """The response body as text."""
        return self.body.decode(errors="replace")


async def send_event(
    session: aiohttp.ClientSession,
    url: str,
    payload: Mapping[str, Any],
    secret: str,
    *,
    retry_num: int | None = None,
    retry_reason: str | None = None,
    timestamp: int | None = None,
    escape_unicode: bool = True,
) -> EventReply:
    """Posts a payload to an Events API or interactivity endpoint as Slack does, signed.

    Event callbacks and ``url_verification`` go as JSON; interactivity payloads (``block_actions``,
    ``view_submission``...) and slash commands as form bodies (see ``form_body``).

    Args:
        session: the client session to post with.
        url: the endpoint (``http://127.0.0.1:PORT/slack/events``).
        payload: what ``event_callback``, ``block_actions_payload`` or ``url_verification`` built.
        secret: the signing secret.
        retry_num: sent as ``X-Slack-Retry-Num`` (Slack's retries are 1, 2, 3).
        retry_reason: sent as ``X-Slack-Retry-Reason`` (``http_timeout``...).
        timestamp: the signature's timestamp; now when None.
        escape_unicode: see ``slack_json``.

    Returns:
        The endpoint's answer.
    """
    interactive = payload.get("type") in _INTERACTIVE_TYPES or ("command" in payload and "type" not in payload)
    if interactive:
        body, content_type = form_body(payload), "application/x-www-form-urlencoded"
    else:
        body, content_type = slack_json(payload, escape_unicode=escape_unicode), "application/json"
    headers = {
        "Content-Type": content_type,
        "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        "Accept": "*/*",
        **signed_headers(body, secret, timestamp),
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason or "http_timeout"
    async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
        body_read = await response.read()
        return EventReply(status=response.status, body=body_read, headers=CIMultiDict(response.headers), sent=body)


# -- message timestamps -------------------------------------------------------------------------------------

_last_ts = 0


def slack_ts() -> str:
    """A new message timestamp (``"1700000000.000100"`` form): the current time, unique and increasing."""
    global _last_ts
    _last_ts = max(_last_ts + 1, time.time_ns() // 1000)
    return f"{_last_ts // 1_000_000}.{_last_ts % 1_000_000:06d}"


def _ts_key(ts: str) -> tuple[int, int]:
    """A message timestamp's order (a float loses the microseconds of some)."""
    seconds, _, micros = ts.partition(".")
    return int(seconds), int(micros or 0)
