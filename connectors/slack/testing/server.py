"""A fake Slack on 127.0.0.1 that speaks Slack's wire format: the Web API, Socket Mode and file downloads.

The Slack connector's tests and benchmark point slack_sdk at it (``AsyncWebClient(base_url=fake.api_url)``,
``SocketModeClient(fake.app_token, web_client=...)``); the module-level helpers build, encode, sign and send
events exactly as Slack sends them to an Events API endpoint.

Example::

    async with FakeSlack() as slack:
        slack.add_user("U0CUSTOMER", email="ada@example.com")
        slack.add_channel("D0CUSTOMER", is_im=True, user="U0CUSTOMER")
        event = slack.user_message("D0CUSTOMER", "Where is my order?", user="U0CUSTOMER")
        reply = await send_event(http, f"{app_url}/slack/events", event, SIGNING_SECRET)
        await slack.wait_until(lambda: len(slack.messages("D0CUSTOMER")) == 2)

What it holds to, from Slack's method reference and slack_sdk's source:
- Every Web API answer is HTTP 200 with ``{"ok": true|false, ...}``, except a rate limit: HTTP 429,
  ``Retry-After: <seconds>`` and ``{"ok": false, "error": "ratelimited"}``. Bodies may be JSON (token in the
  ``Authorization: Bearer`` header) or form-encoded (token in the header or a ``token`` field), arguments may
  also come in the query string (slack_sdk sends ``users.info`` and ``conversations.*`` as GET with query
  parameters), and JSON-typed arguments (``blocks``, ``metadata``, ``chunks``...) may arrive as JSON strings.
- The bot token works for every method but ``apps.connections.open``, which needs the app-level token; the
  wrong kind answers ``not_allowed_token_type``.
- Streams (``chat.startStream``/``appendStream``/``stopStream``) need a thread, and a recipient user and team
  outside DMs (DM ids start with ``D``); a stream ends when stopped or after ``stream_ttl`` seconds, after
  which appends and stops answer ``message_not_in_streaming_state``; a streaming message cannot be edited
  (``streaming_state_conflict``).
- ``conversations.history``/``replies`` return a message's ``metadata.event_payload`` only with
  ``include_all_metadata=true`` (without it, just the ``event_type``).
- Socket Mode: ``apps.connections.open`` issues a one-time ``ws://`` URL; the socket greets with ``hello``;
  each envelope goes to one connected socket (as Slack does with several connections); a client acks with
  ``{"envelope_id": ...}``.
- Files are served only with the bot token; without it Slack answers a redirect to an HTML sign-in page.

Encoding: Slack's backend writes JSON as PHP's ``json_encode`` does by default: compact, ``/`` escaped as
``\\/`` and non-ASCII characters as ``\\uXXXX`` escapes. The ``\\/`` is in every captured Slack body; the
``\\u`` escapes are our inference from the same encoder (``slack_json(..., escape_unicode=False)`` gives raw
UTF-8 for a test that wants both forms). Either way a receiver must verify the raw bytes, never re-encode.

It runs in the same process as the code under test (the benchmark counts its CPU time), so it keeps state in
plain dicts and does no work per request beyond what a case needs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hashlib
import hmac
import json
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote_plus, urlencode

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

__all__ = [
    "DEFAULT_APP_ID",
    "DEFAULT_APP_TOKEN",
    "DEFAULT_BOT_ID",
    "DEFAULT_BOT_TOKEN",
    "DEFAULT_BOT_USER_ID",
    "DEFAULT_TEAM_ID",
    "TIER_LIMITS",
    "Ack",
    "Call",
    "EventReply",
    "FakeSlack",
    "app_mention",
    "assistant_thread_context_changed",
    "assistant_thread_started",
    "block_actions_payload",
    "event_callback",
    "form_body",
    "im_message",
    "message_event",
    "send_event",
    "signed_headers",
    "slack_json",
    "slack_ts",
    "url_verification",
]

DEFAULT_BOT_TOKEN = "xoxb-1000000001-2000000002-fakeBotTokenForTests"
DEFAULT_APP_TOKEN = "xapp-1-A0FAKEAPP01-3000000003-fakeAppTokenForTests"
DEFAULT_TEAM_ID = "T0FAKETEAM1"
DEFAULT_APP_ID = "A0FAKEAPP01"
DEFAULT_BOT_USER_ID = "U0FAKEBOT01"
DEFAULT_BOT_ID = "B0FAKEBOT01"
VERIFICATION_TOKEN = "fakeVerificationToken0001"  # the deprecated ``token`` field Slack still sends

TIER_LIMITS: Mapping[str, int] = {
    # Calls per minute per workspace, from each method's reference page (the tiers are "N+ per minute":
    # staying under N is safe). chat.postMessage is "special": about one per second per channel.
    "apps.connections.open": 50,
    "chat.appendStream": 100,
    "chat.delete": 50,
    "chat.postEphemeral": 100,
    "chat.startStream": 20,
    "chat.stopStream": 20,
    "chat.update": 50,
    "conversations.history": 50,
    "conversations.info": 50,
    "conversations.list": 20,
    "conversations.replies": 50,
    "reactions.add": 50,
    "users.info": 100,
}

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
_JSON_ARGS = ("attachments", "blocks", "chunks", "loading_messages", "metadata", "prompts")

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


# -- event builders ------------------------------------------------------------------------------------------

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


def _event_id() -> str:
    return "Ev" + uuid.uuid4().hex[:10].upper()


_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")


def _rich_text(text: str) -> list[dict[str, Any]]:
    """The ``rich_text`` block Slack's clients attach to what a person typed (mentions as user elements)."""
    elements: list[dict[str, Any]] = []
    position = 0
    for match in _MENTION.finditer(text):
        if match.start() > position:
            elements.append({"type": "text", "text": text[position : match.start()]})
        elements.append({"type": "user", "user_id": match.group(1)})
        position = match.end()
    if position < len(text):
        elements.append({"type": "text", "text": text[position:]})
    block_id = base64.b32encode(uuid.uuid4().bytes).decode()[:5]
    return [
        {"type": "rich_text", "block_id": block_id, "elements": [{"type": "rich_text_section", "elements": elements}]}
    ]


def message_event(
    text: str,
    *,
    channel: str,
    user: str,
    ts: str | None = None,
    thread_ts: str | None = None,
    parent_user_id: str | None = None,
    channel_type: Literal["channel", "group", "im", "mpim"] = "channel",
    team: str = DEFAULT_TEAM_ID,
    files: Sequence[Mapping[str, Any]] | None = None,
    subtype: str | None = None,
    bot_id: str | None = None,
) -> dict[str, Any]:
    """A ``message`` event as Slack sends it (the inner ``event`` of an ``event_callback``).

    A message with files has ``subtype: "file_share"``; ``bot_id`` makes it another bot's message;
    ``subtype="message_changed"`` or ``"message_deleted"`` gives those events' own shape (the message under
    ``message``/``previous_message``, no top-level ``user``); another ``subtype`` is set on a plain message.
    """
    ts = ts or slack_ts()
    tail: dict[str, Any] = {"channel": channel, "event_ts": ts, "channel_type": channel_type}
    if thread_ts:
        tail = {"thread_ts": thread_ts, "parent_user_id": parent_user_id or user, **tail}
    if subtype in ("message_changed", "message_deleted"):
        original = {"type": "message", "text": text, "user": user, "ts": ts, "team": team}
        now = slack_ts()
        event: dict[str, Any] = {"type": "message", "subtype": subtype}
        if subtype == "message_changed":
            event["message"] = {**original, "edited": {"user": user, "ts": now}}
        else:
            event["deleted_ts"] = ts
        event |= {"previous_message": original, "channel": channel, "hidden": True, "ts": now}
        return event | {"event_ts": now, "channel_type": channel_type}
    if files:
        event = {"type": "message", "subtype": subtype or "file_share", "text": text}
        event |= {"files": [dict(f) for f in files], "upload": False, "user": user, "display_as_bot": False}
        event |= {"ts": ts, "blocks": _rich_text(text) if text else [], "client_msg_id": str(uuid.uuid4())}
        return event | tail
    if subtype:
        event = {"type": "message", "subtype": subtype}
    elif bot_id:
        event = {"type": "message"}
    else:
        event = {"client_msg_id": str(uuid.uuid4()), "type": "message"}
    event |= {"text": text, "user": user, "ts": ts}
    if bot_id:
        event["bot_id"] = bot_id
    return event | {"blocks": _rich_text(text), "team": team} | tail


def im_message(text: str, *, channel: str, user: str, **kwargs: Any) -> dict[str, Any]:
    """A ``message.im`` event: a direct message to the app (``channel`` is a ``D…`` id)."""
    return message_event(text, channel=channel, user=user, channel_type="im", **kwargs)


def app_mention(
    text: str,
    *,
    channel: str,
    user: str,
    ts: str | None = None,
    thread_ts: str | None = None,
    team: str = DEFAULT_TEAM_ID,
    files: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """An ``app_mention`` event; ``text`` holds the mention as Slack writes it (``"<@U0FAKEBOT01> hi"``)."""
    ts = ts or slack_ts()
    event: dict[str, Any] = {
        "client_msg_id": str(uuid.uuid4()),
        "type": "app_mention",
        "text": text,
        "user": user,
        "ts": ts,
        "blocks": _rich_text(text),
        "team": team,
    }
    if files:
        event["files"] = [dict(f) for f in files]
    if thread_ts:
        event["thread_ts"] = thread_ts
    return {**event, "channel": channel, "event_ts": ts}


def _assistant_event(
    kind: str, *, channel: str, user: str, thread_ts: str, context: Mapping[str, Any] | None
) -> dict[str, Any]:
    return {
        "type": kind,
        "assistant_thread": {
            "user_id": user,
            "context": dict(context or {}),
            "channel_id": channel,
            "thread_ts": thread_ts,
        },
        "event_ts": slack_ts(),
    }


def assistant_thread_started(
    *, channel: str, user: str, thread_ts: str, context: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An ``assistant_thread_started`` event; ``context`` is e.g. ``{"channel_id", "team_id", "enterprise_id"}``."""
    return _assistant_event(
        "assistant_thread_started", channel=channel, user=user, thread_ts=thread_ts, context=context
    )


def assistant_thread_context_changed(
    *, channel: str, user: str, thread_ts: str, context: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An ``assistant_thread_context_changed`` event (the user looked at another channel)."""
    return _assistant_event(
        "assistant_thread_context_changed", channel=channel, user=user, thread_ts=thread_ts, context=context
    )


def event_callback(
    event: Mapping[str, Any],
    *,
    team_id: str = DEFAULT_TEAM_ID,
    api_app_id: str = DEFAULT_APP_ID,
    bot_user_id: str = DEFAULT_BOT_USER_ID,
    event_id: str | None = None,
    event_time: int | None = None,
) -> dict[str, Any]:
    """The ``event_callback`` envelope around an event, with the bot's authorization, in Slack's key order."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "api_app_id": api_app_id,
        "event": dict(event),
        "type": "event_callback",
        "event_id": event_id or _event_id(),
        "event_time": int(time.time()) if event_time is None else event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
    }


def url_verification(challenge: str) -> dict[str, Any]:
    """The ``url_verification`` request Slack sends when the Request URL is set."""
    return {"token": VERIFICATION_TOKEN, "challenge": challenge, "type": "url_verification"}


def block_actions_payload(
    *,
    action_id: str,
    value: str,
    user: str,
    channel: str,
    message_ts: str,
    thread_ts: str | None = None,
    text: str = "Yes",
    block_id: str = "confirm",
    team_id: str = DEFAULT_TEAM_ID,
    api_app_id: str = DEFAULT_APP_ID,
    bot_user_id: str = DEFAULT_BOT_USER_ID,
    message: Mapping[str, Any] | None = None,
    response_url: str | None = None,
) -> dict[str, Any]:
    """A ``block_actions`` payload: ``user`` pressed the button ``action_id`` on the bot's message ``message_ts``.

    Sent form-encoded (``payload=<json>``, see ``form_body``) and signed like an event.
    """
    container: dict[str, Any] = {
        "type": "message",
        "message_ts": message_ts,
        "channel_id": channel,
        "is_ephemeral": False,
    }
    if thread_ts:
        container["thread_ts"] = thread_ts
    shown = dict(message) if message is not None else {"user": bot_user_id, "type": "message", "ts": message_ts}
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "container": container,
        "trigger_id": f"{int(time.time())}.{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex}",
        "team": {"id": team_id, "domain": "fake-workspace"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": "directmessage" if channel.startswith("D") else channel.lower()},
        "message": shown,
        "state": {"values": {}},
        "response_url": response_url or f"https://hooks.slack.com/actions/{team_id}/1/{uuid.uuid4().hex}",
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id,
                "text": {"type": "plain_text", "text": text, "emoji": True},
                "value": value,
                "type": "button",
                "action_ts": slack_ts(),
            }
        ],
    }


# -- the fake server -------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Call:
    """A Web API call the fake answered.

    Attributes:
        method: the method (``chat.postMessage``).
        params: the arguments (query, form or JSON body, JSON-typed ones decoded; the token left out).
        status: the HTTP status answered (429 for a rate limit).
        error: the ``error`` of an ``ok: false`` answer, None when ok.
        at: when it arrived (``time.monotonic()``).
    """

    method: str
    params: dict[str, Any]
    status: int
    error: str | None
    at: float

    @property
    def ok(self) -> bool:
        """Whether Slack answered ``ok: true``."""
        return self.status == 200 and self.error is None


@dataclass(frozen=True, kw_only=True, slots=True)
class Ack:
    """A Socket Mode acknowledgement.

    Attributes:
        envelope_id: the envelope acknowledged.
        payload: the response payload sent with the ack, if any.
        at: when it arrived (``time.monotonic()``).
    """

    envelope_id: str
    payload: Any
    at: float


@dataclass(kw_only=True, slots=True)
class _Failure:
    remaining: int
    status: int
    error: str
    retry_after: int | None


@dataclass(kw_only=True, slots=True)
class _Stream:
    started: float
    mode: str | None  # "markdown_text" or "chunks", set by the first call that carries text
    state: Literal["streaming", "stopped", "expired", "stopped_by_user"] = "streaming"


class _SlackError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


def _missing(name: str) -> _SlackError:
    return _SlackError("invalid_arguments", response_metadata={"messages": [f"[ERROR] missing required field: {name}"]})


def _truthy(value: object) -> bool:
    return value is True or value == 1 or str(value).lower() in ("1", "true")


def _cursor(kind: str, value: str) -> str:
    return base64.b64encode(f"{kind}:{value}".encode()).decode()


def _uncursor(kind: str, cursor: object) -> str | None:
    if not cursor:
        return None
    try:
        found_kind, _, value = base64.b64decode(str(cursor), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _SlackError("invalid_cursor") from None
    if found_kind != kind:
        raise _SlackError("invalid_cursor")
    return value


def _limit(params: Mapping[str, Any], default: int, maximum: int) -> int:
    try:
        return max(1, min(int(params.get("limit") or default), maximum))
    except (TypeError, ValueError):
        raise _SlackError("invalid_limit") from None


_LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Slack</body></html>"


class FakeSlack:
    """Slack's Web API and Socket Mode for tests and benchmarks, on a free port of 127.0.0.1.

    Args:
        bot_token: the ``xoxb-`` token the Web API accepts.
        app_token: the ``xapp-`` token ``apps.connections.open`` accepts.
        team_id: the workspace id.
        app_id: the app id (``api_app_id`` of events).
        bot_user_id: the bot's user id (``authorizations[0].user_id``).
        bot_id: the bot id (``bot_id`` on the bot's messages).
        stream_ttl: seconds a stream may stay open (Slack ends them after about five minutes).
        tier_limits: enforce ``TIER_LIMITS`` and chat.postMessage's one per second per channel.

    Attributes:
        calls: every Web API call answered, in order.
        acks: Socket Mode acknowledgements, in order.
        envelopes: Socket Mode envelopes pushed, in order.
        ephemerals: ephemeral messages posted (``channel``, ``user``, ``text``, ``blocks``, ``thread_ts``).
        assistant_status: ``(channel, thread_ts) -> status`` (cleared, as Slack does, when the bot replies).
        suggested_prompts: ``(channel, thread_ts or "") -> {"title", "prompts"}``.
        titles: ``(channel, thread_ts) -> title`` of assistant threads.
        downloads: ``(file_id, authorized)`` for each file download attempt.
        connects: Socket Mode connections accepted so far.
    """

    def __init__(
        self,
        *,
        bot_token: str = DEFAULT_BOT_TOKEN,
        app_token: str = DEFAULT_APP_TOKEN,
        team_id: str = DEFAULT_TEAM_ID,
        app_id: str = DEFAULT_APP_ID,
        bot_user_id: str = DEFAULT_BOT_USER_ID,
        bot_id: str = DEFAULT_BOT_ID,
        stream_ttl: float = 300.0,
        tier_limits: bool = False,
    ) -> None:
        if not bot_token.startswith("xoxb-") or not app_token.startswith("xapp-"):
            raise ValueError("FakeSlack: bot_token must start with 'xoxb-' and app_token with 'xapp-', as Slack's do")
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.app_id = app_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.stream_ttl = stream_ttl
        self.calls: list[Call] = []
        self.acks: list[Ack] = []
        self.envelopes: list[dict[str, Any]] = []
        self.ephemerals: list[dict[str, Any]] = []
        self.assistant_status: dict[tuple[str, str], str] = {}
        self.suggested_prompts: dict[tuple[str, str], dict[str, Any]] = {}
        self.titles: dict[tuple[str, str], str] = {}
        self.downloads: list[tuple[str, bool]] = []
        self.connects = 0
        self._users: dict[str, dict[str, Any]] = {}
        self._channels: dict[str, dict[str, Any]] = {}
        self._messages: dict[str, dict[str, dict[str, Any]]] = {}  # channel -> ts -> message
        self._replies: dict[tuple[str, str], list[str]] = {}  # (channel, thread_ts) -> reply ts, in order
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self._failures: dict[str, deque[_Failure]] = {}
        self._delays: dict[str, float] = {}
        self._limits: dict[str, tuple[int, float, bool]] = {}
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._next_socket = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "users.info": self._users_info,
            "conversations.info": self._conversations_info,
            "conversations.list": self._conversations_list,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.delete": self._delete,
            "chat.postEphemeral": self._post_ephemeral,
            "chat.startStream": self._start_stream,
            "chat.appendStream": self._append_stream,
            "chat.stopStream": self._stop_stream,
            "assistant.threads.setStatus": self._set_status,
            "assistant.threads.setSuggestedPrompts": self._set_suggested_prompts,
            "assistant.threads.setTitle": self._set_title,
            "reactions.add": self._reactions_add,
            "files.info": self._files_info,
            "apps.connections.open": self._connections_open,
        }
        self.add_user(bot_user_id, name="supportbot", real_name="Supportbot", is_bot=True)
        if tier_limits:
            for method, per_minute in TIER_LIMITS.items():
                self.limit(method, per_minute)
            self.limit("chat.postMessage", 1, per=1.0, per_channel=True)

    # -- lifecycle ---------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if not self._port:
            raise RuntimeError("FakeSlack's URL is unknown before start(); use 'async with FakeSlack() as slack'")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        """The Web API base URL for slack_sdk (``AsyncWebClient(base_url=...)``): ``http://127.0.0.1:PORT/api/``."""
        return f"{self.base_url}/api/"

    async def start(self) -> None:
        """Starts listening on a free port of 127.0.0.1."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._handle)
        app.router.add_get("/link/", self._socket)
        app.router.add_get("/files-pri/{key}/{name}", self._download)
        app.router.add_get("/files-pri/{key}/download/{name}", self._download)
        app.router.add_get("/", self._sign_in_page)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        """Closes the Socket Mode connections and stops the server."""
        for ws in list(self._sockets):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the workspace -----------------------------------------------------------------------------------

    def add_user(
        self,
        id: str,
        *,
        email: str | None = None,
        name: str | None = None,
        real_name: str | None = None,
        deleted: bool = False,
        is_bot: bool = False,
        team: str | None = None,
    ) -> dict[str, Any]:
        """Registers a user (a Slack user object, as ``users.info`` answers it).

        Returns:
            The user object.
        """
        name = name or id.lower()
        profile: dict[str, Any] = {
            "real_name": real_name or name,
            "display_name": name,
            "real_name_normalized": real_name or name,
            "display_name_normalized": name,
            "team": team or self.team_id,
        }
        if email is not None:
            profile["email"] = email
        if is_bot and id == self.bot_user_id:
            profile["bot_id"] = self.bot_id
        user = {
            "id": id,
            "team_id": team or self.team_id,
            "name": name,
            "deleted": deleted,
            "real_name": real_name or name,
            "tz": "Europe/Berlin",
            "tz_offset": 3600,
            "profile": profile,
            "is_admin": False,
            "is_owner": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": is_bot,
            "is_app_user": False,
            "updated": int(time.time()),
            "is_email_confirmed": email is not None,
        }
        self._users[id] = user
        return copy.deepcopy(user)

    def add_channel(
        self,
        id: str,
        name: str | None = None,
        *,
        is_im: bool = False,
        is_private: bool = False,
        user: str | None = None,
        is_member: bool = True,
    ) -> dict[str, Any]:
        """Registers a conversation: a channel, or a DM (``is_im``, id ``D…``) with ``user``.

        Returns:
            The conversation object, as ``conversations.info`` answers it.
        """
        if is_im and not (id.startswith("D") and user):
            raise ValueError(f"FakeSlack.add_channel({id!r}): a DM's id starts with 'D' and it needs user=")
        if not is_im and not name:
            raise ValueError(f"FakeSlack.add_channel({id!r}): a channel needs a name")
        channel: dict[str, Any]
        if is_im:
            channel = {"id": id, "created": int(time.time()), "is_archived": False, "is_im": True}
            channel |= {"is_org_shared": False, "user": user, "is_user_deleted": False, "priority": 0}
        else:
            channel = {"id": id, "name": name, "is_channel": not is_private, "is_group": is_private, "is_im": False}
            channel |= {"is_mpim": False, "is_private": is_private, "created": int(time.time()), "is_archived": False}
            channel |= {"is_general": False, "name_normalized": name, "is_shared": False, "is_member": is_member}
            channel |= {"topic": {"value": "", "creator": "", "last_set": 0}}
            channel |= {"purpose": {"value": "", "creator": "", "last_set": 0}}
        self._channels[id] = channel
        self._messages.setdefault(id, {})
        return copy.deepcopy(channel)

    def add_message(
        self,
        channel: str,
        text: str,
        *,
        user: str,
        ts: str | None = None,
        thread_ts: str | None = None,
        files: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Records a message a person posted (it shows in history and threads).

        Returns:
            The message, as ``conversations.history`` answers it.
        """
        if channel not in self._channels:
            raise ValueError(f"FakeSlack.add_message: unknown channel {channel!r}; add_channel() it first")
        ts = ts or slack_ts()
        message: dict[str, Any] = {"client_msg_id": str(uuid.uuid4()), "type": "message", "text": text}
        message |= {"user": user, "ts": ts, "blocks": _rich_text(text), "team": self.team_id}
        if files:
            message |= {"subtype": "file_share", "files": [dict(f) for f in files], "upload": False}
        if thread_ts:
            message |= {"thread_ts": thread_ts, "parent_user_id": self._thread_owner(channel, thread_ts) or user}
        self._store(channel, message)
        return self._public(channel, message, metadata=True)

    def user_message(
        self,
        channel: str,
        text: str,
        *,
        user: str,
        thread_ts: str | None = None,
        files: Sequence[Mapping[str, Any]] | None = None,
        mention: bool = False,
    ) -> dict[str, Any]:
        """A person writes: records the message and returns the ``event_callback`` Slack would send.

        A DM (``D…``) gives a ``message`` event with ``channel_type: "im"``; ``mention`` gives an ``app_mention``
        (put the ``<@bot>`` in ``text``); else a channel ``message`` event.
        """
        message = self.add_message(channel, text, user=user, thread_ts=thread_ts, files=files)
        ts, team = message["ts"], self.team_id
        if mention:
            event = app_mention(text, channel=channel, user=user, ts=ts, thread_ts=thread_ts, team=team, files=files)
        else:
            kind: Literal["channel", "im"] = "im" if channel.startswith("D") else "channel"
            parent = message.get("parent_user_id")
            event = message_event(
                text,
                channel=channel,
                user=user,
                ts=ts,
                thread_ts=thread_ts,
                parent_user_id=parent,
                channel_type=kind,
                team=team,
                files=files,
            )
        return self.event_callback(event)

    def event_callback(self, event: Mapping[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
        """``event_callback`` with this workspace's team, app and bot user."""
        return event_callback(
            event, team_id=self.team_id, api_app_id=self.app_id, bot_user_id=self.bot_user_id, event_id=event_id
        )

    def add_file(self, content: bytes, name: str, mimetype: str, *, user: str | None = None) -> dict[str, Any]:
        """Stores a file; its ``url_private``/``url_private_download`` serve it to the bot token only.

        Returns:
            The Slack file object, to put in a message event's ``files``.
        """
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        key = f"{self.team_id}-{file_id}"
        filetype = name.rsplit(".", 1)[-1].lower() if "." in name else "binary"
        now = int(time.time())
        file = {"id": file_id, "created": now, "timestamp": now, "name": name, "title": name, "mimetype": mimetype}
        file |= {"filetype": filetype, "pretty_type": filetype.upper(), "user": user or self.bot_user_id}
        file |= {"user_team": self.team_id, "editable": False, "size": len(content), "mode": "hosted"}
        file |= {"is_external": False, "external_type": "", "is_public": False, "public_url_shared": False}
        file |= {"display_as_bot": False, "username": ""}
        file |= {"url_private": f"{self.base_url}/files-pri/{key}/{name}"}
        file |= {"url_private_download": f"{self.base_url}/files-pri/{key}/download/{name}"}
        file |= {"permalink": f"{self.base_url}/files/{file_id}/{name}", "file_access": "visible"}
        self._files[file_id] = (file, content)
        return copy.deepcopy(file)

    # -- what a test reads ----------------------------------------------------------------------------------

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """The channel's messages as a customer sees them now, oldest first, threads included.

        Each is a message as Slack's API answers it (final ``text`` after updates and streams, ``blocks``,
        ``thread_ts``, full ``metadata``), plus ``"streaming": True`` while a stream is open.
        """
        found = []
        for message in sorted(self._messages.get(channel, {}).values(), key=lambda m: _ts_key(m["ts"])):
            public = self._public(channel, message, metadata=True)
            if self._stream_state(channel, message["ts"]) == "streaming":
                public["streaming"] = True
            found.append(public)
        return found

    def calls_to(self, method: str) -> list[Call]:
        """The calls of one method, in order."""
        return [c for c in self.calls if c.method == method]

    @property
    def connections(self) -> int:
        """Socket Mode connections open now."""
        return len(self._sockets)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109 - how long a test waits
        """Waits until ``predicate()`` holds; it is checked after every call, ack and connection.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                raise TimeoutError(f"FakeSlack: the awaited condition did not hold within {timeout}s") from None

    async def wait_calls(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:  # noqa: ASYNC109 - how long a test waits
        """Waits until ``method`` was called ``count`` times (answered, whatever the answer); returns its calls."""
        try:
            await self.wait_until(lambda: len(self.calls_to(method)) >= count, timeout)
        except TimeoutError:
            got = len(self.calls_to(method))
            raise TimeoutError(f"FakeSlack: {method} was called {got} times, not {count}, within {timeout}s") from None
        return self.calls_to(method)

    async def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> Ack:  # noqa: ASYNC109 - how long a test waits
        """Waits for the Socket Mode ack of an envelope."""
        try:
            await self.wait_until(lambda: any(a.envelope_id == envelope_id for a in self.acks), timeout)
        except TimeoutError:
            raise TimeoutError(f"FakeSlack: envelope {envelope_id} was not acknowledged within {timeout}s") from None
        return next(a for a in self.acks if a.envelope_id == envelope_id)

    async def wait_connected(self, count: int = 1, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - how long a test waits
        """Waits until ``count`` Socket Mode connections are open."""
        try:
            await self.wait_until(lambda: len(self._sockets) >= count, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"FakeSlack: {len(self._sockets)} Socket Mode connections, not {count}, within {timeout}s; "
                "is the client started with this fake's api_url and app_token?"
            ) from None

    # -- failure injection -----------------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        times: int = 1,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        error: str | None = None,
    ) -> None:
        """Makes the next ``times`` calls of ``method`` fail (queued after earlier ``fail`` calls).

        ``fail(m, status=429, retry_after=2)`` answers HTTP 429 with ``Retry-After: 2`` and ``ratelimited``;
        ``fail(m, error="channel_not_found")`` answers HTTP 200 ``ok: false``; ``fail(m, status=503)`` answers
        HTTP 503. Failed calls change nothing.
        """
        if times < 1:
            raise ValueError(f"FakeSlack.fail({method!r}): times must be at least 1, got {times}")
        if status is None:
            status = 429 if error is None or retry_after is not None else 200
        if status == 429:
            failure = _Failure(remaining=times, status=429, error=error or "ratelimited", retry_after=retry_after or 1)
        else:
            failure = _Failure(remaining=times, status=status, error=error or "fatal_error", retry_after=retry_after)
        self._failures.setdefault(method, deque()).append(failure)

    def delay(self, method: str, seconds: float) -> None:
        """Holds every call of ``method`` for ``seconds`` before answering it (0 stops)."""
        if seconds > 0:
            self._delays[method] = seconds
        else:
            self._delays.pop(method, None)

    def limit(self, method: str, calls: int, *, per: float = 60.0, per_channel: bool = False) -> None:
        """Answers 429 (with the ``Retry-After`` that frees a slot) to calls beyond ``calls`` per ``per`` seconds.

        ``per_channel`` counts each channel apart (chat.postMessage's limit).
        """
        self._limits[method] = (calls, per, per_channel)

    def stop_stream_by_user(self, channel: str, ts: str) -> None:
        """The person pressed "stop" on a streaming answer: later appends answer ``stopped_by_user``."""
        stream = self._streams.get((channel, ts))
        if stream is None:
            raise ValueError(f"FakeSlack.stop_stream_by_user: no stream at {channel}/{ts}")
        stream.state = "stopped_by_user"

    # -- Socket Mode ---------------------------------------------------------------------------------------

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

    # -- files -----------------------------------------------------------------------------------------------

    async def _download(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["key"].rpartition("-")[2]
        stored = self._files.get(file_id)
        authorized = request.headers.get("Authorization") == f"Bearer {self.bot_token}"
        self.downloads.append((file_id, authorized))
        await self._notify()
        if stored is None:
            return web.Response(status=404, text="file not found")
        if not authorized:
            # Slack answers a request without the token with a redirect to its sign-in page (an HTML 200).
            raise web.HTTPFound(f"/?redir={quote_plus(request.path)}")
        file, content = stored
        return web.Response(body=content, content_type=file["mimetype"])

    async def _sign_in_page(self, request: web.Request) -> web.Response:
        return web.Response(body=_LOGIN_PAGE, content_type="text/html")

    # -- the Web API ---------------------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    @staticmethod
    def _json(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        all_headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        return web.Response(body=slack_json(body), status=status, headers=all_headers)

    async def _params(self, request: web.Request) -> tuple[dict[str, Any], str | None]:
        params: dict[str, Any] = dict(request.query)
        body_token = None
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                try:
                    body = json.loads(await request.read() or b"{}")
                except ValueError:
                    raise _SlackError("invalid_json") from None
                if not isinstance(body, dict):
                    raise _SlackError("invalid_json")
                body.pop("token", None)  # Slack takes a JSON body's token only from the Authorization header
                params.update(body)
            else:
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
                body_token = params.pop("token", None)
        params.pop("token", None)  # a token in the query string is not accepted
        for name in _JSON_ARGS:
            if isinstance(params.get(name), str):
                try:
                    params[name] = json.loads(params[name]) if params[name] else None
                except ValueError:
                    raise _SlackError("invalid_blocks_format" if name == "blocks" else "invalid_arguments") from None
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.startswith("Bearer ") else body_token
        return params, token

    def _check_token(self, method: str, token: str | None) -> None:
        if not token:
            raise _SlackError("not_authed")
        if token not in (self.bot_token, self.app_token):
            raise _SlackError("invalid_auth")
        if (method == "apps.connections.open") != (token == self.app_token):
            raise _SlackError("not_allowed_token_type")

    def _rate_limited(self, method: str, params: Mapping[str, Any]) -> int | None:
        limit = self._limits.get(method)
        if limit is None:
            return None
        calls, per, per_channel = limit
        key = (method, str(params.get("channel") or params.get("channel_id") or "") if per_channel else "")
        window = self._windows.setdefault(key, deque())
        now = time.monotonic()
        while window and window[0] <= now - per:
            window.popleft()
        if len(window) >= calls:
            return max(1, math.ceil(window[0] + per - now))
        window.append(now)
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        arrived = time.monotonic()
        params: dict[str, Any] = {}
        status, error, response = 200, None, None
        try:
            params, token = await self._params(request)
            if method in self._delays:
                await asyncio.sleep(self._delays[method])
            failures = self._failures.get(method)
            if failures:
                failure = failures[0]
                failure.remaining -= 1
                if failure.remaining <= 0:
                    failures.popleft()
                status, error = failure.status, failure.error
                headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
                response = self._json({"ok": False, "error": failure.error}, status, headers)
            else:
                handler = self._handlers.get(method)
                if handler is None:
                    raise _SlackError("unknown_method", req_method=method)
                self._check_token(method, token)
                retry_after = self._rate_limited(method, params)
                if retry_after is not None:
                    status, error = 429, "ratelimited"
                    response = self._json({"ok": False, "error": "ratelimited"}, 429, {"Retry-After": str(retry_after)})
                else:
                    response = self._json({"ok": True, **handler(params)})
        except _SlackError as failed:
            error = failed.error
            response = self._json({"ok": False, "error": failed.error, **failed.extra})
        call = Call(method=method, params=params, status=status, error=error, at=arrived)
        self.calls.append(call)
        await self._notify()
        return response

    # -- helpers of the methods -----------------------------------------------------------------------------

    def _channel(self, params: Mapping[str, Any], name: str = "channel", *, by_name: bool = False) -> str:
        value = str(params.get(name) or "")
        if value in self._channels:
            return value
        wanted = value.removeprefix("#")
        if by_name and wanted:  # chat.postMessage also takes a channel name, or a user id for the user's DM
            for channel in self._channels.values():
                if wanted in (channel.get("name"), channel.get("user")):
                    return str(channel["id"])
        raise _SlackError("channel_not_found")

    def _message(self, channel: str, ts: object) -> dict[str, Any]:
        message = self._messages[channel].get(str(ts or ""))
        if message is None:
            raise _SlackError("message_not_found")
        return message

    def _thread_owner(self, channel: str, thread_ts: str) -> str | None:
        parent = self._messages.get(channel, {}).get(thread_ts)
        return None if parent is None else str(parent.get("user"))

    def _stream_state(self, channel: str, ts: str) -> str | None:
        stream = self._streams.get((channel, ts))
        if stream is None:
            return None
        if stream.state == "streaming" and time.monotonic() - stream.started >= self.stream_ttl:
            stream.state = "expired"
        return stream.state

    def _public(self, channel: str, message: Mapping[str, Any], *, metadata: bool) -> dict[str, Any]:
        public = copy.deepcopy(dict(message))
        if "metadata" in public and not metadata:
            public["metadata"] = {"event_type": public["metadata"].get("event_type")}
        if "thread_ts" not in message:
            thread = self._messages[channel]
            replies = [thread[ts] for ts in self._replies.get((channel, message["ts"]), ()) if ts in thread]
            if replies:
                users = list(dict.fromkeys(str(m.get("user")) for m in replies))
                latest = max((m["ts"] for m in replies), key=_ts_key)
                public |= {"thread_ts": message["ts"], "reply_count": len(replies), "reply_users_count": len(users)}
                public |= {"latest_reply": latest, "reply_users": users, "is_locked": False, "subscribed": False}
        return public

    def _bot_message(self, channel: str, params: Mapping[str, Any], text: str) -> dict[str, Any]:
        ts = slack_ts()
        message: dict[str, Any] = {"user": self.bot_user_id, "type": "message", "ts": ts, "bot_id": self.bot_id}
        message |= {"app_id": self.app_id, "text": text, "team": self.team_id}
        message["bot_profile"] = {
            "id": self.bot_id,
            "app_id": self.app_id,
            "name": "supportbot",
            "team_id": self.team_id,
        }
        if params.get("blocks"):
            message["blocks"] = self._blocks(params["blocks"])
        thread_ts = params.get("thread_ts")
        if thread_ts:
            message |= {"thread_ts": str(thread_ts), "parent_user_id": self._thread_owner(channel, str(thread_ts))}
            self.assistant_status.pop((channel, str(thread_ts)), None)  # a reply clears the thread's status
        if params.get("metadata"):
            message["metadata"] = self._metadata(params["metadata"])
        self._store(channel, message)
        return message

    def _store(self, channel: str, message: dict[str, Any]) -> None:
        self._messages[channel][message["ts"]] = message
        if message.get("thread_ts") and message["thread_ts"] != message["ts"]:
            self._replies.setdefault((channel, message["thread_ts"]), []).append(message["ts"])

    @staticmethod
    def _blocks(value: object) -> list[Any]:
        if not isinstance(value, list) or not all(isinstance(b, dict) and b.get("type") for b in value):
            raise _SlackError("invalid_blocks")
        return list(value)

    @staticmethod
    def _metadata(value: object) -> dict[str, Any]:
        if not isinstance(value, dict) or not isinstance(value.get("event_type"), str):
            raise _SlackError("invalid_metadata_format")
        if not isinstance(value.get("event_payload", {}), dict):
            raise _SlackError("invalid_metadata_schema")
        return {"event_type": value["event_type"], "event_payload": dict(value.get("event_payload") or {})}

    @staticmethod
    def _stream_text(params: Mapping[str, Any]) -> tuple[str | None, str, list[dict[str, Any]]]:
        """(mode, text, other chunks) of a stream call; mode None when it carries no text."""
        markdown = params.get("markdown_text")
        chunks = params.get("chunks") or []
        if markdown and chunks:
            raise _SlackError("cannot_provide_both_markdown_text_and_chunks")
        if markdown:
            return "markdown_text", str(markdown), []
        if not isinstance(chunks, list) or not all(isinstance(c, dict) and c.get("type") for c in chunks):
            raise _SlackError("invalid_chunks")
        known = ("markdown_text", "task_update", "plan_update", "blocks")
        if any(c["type"] not in known for c in chunks):
            raise _SlackError("invalid_chunks")
        text = "".join(str(c.get("text") or "") for c in chunks if c["type"] == "markdown_text")
        return ("chunks" if chunks else None), text, [dict(c) for c in chunks if c["type"] != "markdown_text"]

    def _open_stream(self, params: Mapping[str, Any]) -> tuple[str, dict[str, Any], _Stream]:
        channel = self._channel(params)
        message = self._message(channel, params.get("ts"))
        state = self._stream_state(channel, message["ts"])
        if state is None or state in ("stopped", "expired"):
            raise _SlackError("message_not_in_streaming_state")
        if state == "stopped_by_user":
            raise _SlackError("stopped_by_user")
        return channel, message, self._streams[(channel, message["ts"])]

    @staticmethod
    def _add_stream_text(
        message: dict[str, Any], stream: _Stream, mode: str | None, text: str, rest: list[Any]
    ) -> None:
        if mode is not None:
            if stream.mode is not None and stream.mode != mode:
                raise _SlackError("streaming_mode_mismatch")
            stream.mode = mode
        message["text"] = str(message.get("text") or "") + text
        if rest:
            message.setdefault("stream_chunks", []).extend(rest)

    # -- the methods -----------------------------------------------------------------------------------------

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake-workspace.slack.com/",
            "team": "Fake Workspace",
            "user": "supportbot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self._users.get(str(params.get("user") or ""))
        if user is None:
            raise _SlackError("user_not_found")
        return {"user": copy.deepcopy(user)}

    def _conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"channel": copy.deepcopy(self._channels[self._channel(params)])}

    def _conversations_list(self, params: dict[str, Any]) -> dict[str, Any]:
        types = {t.strip() for t in str(params.get("types") or "public_channel").split(",")}

        def kind(channel: Mapping[str, Any]) -> str:
            if channel.get("is_im"):
                return "im"
            return "private_channel" if channel.get("is_private") else "public_channel"

        matching = [c for c in self._channels.values() if kind(c) in types]
        after = _uncursor("channel", params.get("cursor"))
        start = 0
        if after is not None:
            ids = [c["id"] for c in matching]
            if after not in ids:
                raise _SlackError("invalid_cursor")
            start = ids.index(after)
        limit = _limit(params, 100, 1000)
        page = matching[start : start + limit]
        more = start + limit < len(matching)
        next_cursor = _cursor("channel", matching[start + limit]["id"]) if more else ""
        return {"channels": copy.deepcopy(page), "response_metadata": {"next_cursor": next_cursor}}

    def _page(self, messages: list[dict[str, Any]], params: Mapping[str, Any], default: int) -> dict[str, Any]:
        """A page of ``messages`` (in answer order) from the cursor on, and the cursor to the rest."""
        after = _uncursor("next_ts", params.get("cursor"))
        start = 0
        if after is not None:
            tss = [m["ts"] for m in messages]
            if after not in tss:
                raise _SlackError("invalid_cursor")
            start = tss.index(after)
        limit = _limit(params, default, 999)
        page = messages[start : start + limit]
        more = start + limit < len(messages)
        next_cursor = _cursor("next_ts", messages[start + limit]["ts"]) if more else ""
        return {"messages": page, "has_more": more, "response_metadata": {"next_cursor": next_cursor}}

    def _in_window(self, message: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
        ts = float(message["ts"])
        inclusive = _truthy(params.get("inclusive"))
        try:
            oldest, latest = float(params.get("oldest") or 0), float(params.get("latest") or math.inf)
        except ValueError:
            raise _SlackError("invalid_ts_oldest") from None
        return (oldest <= ts <= latest) if inclusive else (oldest < ts < latest)

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        with_metadata = _truthy(params.get("include_all_metadata"))
        top = [m for m in self._messages[channel].values() if m.get("thread_ts") in (None, m["ts"])]
        top = [m for m in top if self._in_window(m, params)]
        top.sort(key=lambda m: _ts_key(m["ts"]), reverse=True)
        answer = self._page([self._public(channel, m, metadata=with_metadata) for m in top], params, 100)
        return {**answer, "pin_count": 0, "channel_actions_ts": None, "channel_actions_count": 0}

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        if not params.get("ts"):
            raise _missing("ts")
        root = self._messages[channel].get(str(params["ts"]))
        if root is None:
            raise _SlackError("thread_not_found")
        with_metadata = _truthy(params.get("include_all_metadata"))
        thread_ts = root.get("thread_ts") or root["ts"]
        if thread_ts != root["ts"]:
            thread = [root]  # the ts of a reply: Slack answers that message alone
        else:
            replies = [self._messages[channel][ts] for ts in self._replies.get((channel, thread_ts), ())]
            thread = [root, *sorted((m for m in replies if self._in_window(m, params)), key=lambda m: _ts_key(m["ts"]))]
        return self._page([self._public(channel, m, metadata=with_metadata) for m in thread], params, 1000)

    def _post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params, by_name=True)
        text, markdown = params.get("text"), params.get("markdown_text")
        if markdown and (text or params.get("blocks")):
            raise _SlackError("markdown_text_conflict")
        if not (text or markdown or params.get("blocks") or params.get("attachments")):
            raise _SlackError("no_text")
        message = self._bot_message(channel, params, str(text or markdown or ""))
        return {"channel": channel, "ts": message["ts"], "message": self._public(channel, message, metadata=True)}

    def _update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        message = self._message(channel, params.get("ts"))
        if message.get("bot_id") != self.bot_id:
            raise _SlackError("cant_update_message")
        if self._stream_state(channel, message["ts"]) in ("streaming", "stopped_by_user"):
            raise _SlackError("streaming_state_conflict")
        text, blocks, markdown = params.get("text"), params.get("blocks"), params.get("markdown_text")
        if markdown and (text or blocks):
            raise _SlackError("markdown_text_conflict")
        if not (text or blocks or markdown or params.get("attachments")):
            raise _SlackError("no_text")
        if text or markdown:
            message["text"] = str(text or markdown)
            message["edited"] = {"user": self.bot_user_id, "ts": slack_ts()}
            if not blocks:
                message.pop("blocks", None)  # text without blocks removes the old blocks
        if blocks:
            message["blocks"] = self._blocks(blocks)
        if "metadata" in params and params["metadata"] is not None:
            if params["metadata"] == {}:
                message.pop("metadata", None)
            else:
                message["metadata"] = self._metadata(params["metadata"])
        public = self._public(channel, message, metadata=True)
        return {"channel": channel, "ts": message["ts"], "text": message["text"], "message": public}

    def _delete(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        message = self._message(channel, params.get("ts"))
        if message.get("bot_id") != self.bot_id:
            raise _SlackError("cant_delete_message")
        del self._messages[channel][message["ts"]]
        if message.get("thread_ts"):
            self._replies.get((channel, message["thread_ts"]), []).remove(message["ts"])
        return {"channel": channel, "ts": message["ts"]}

    def _post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        user = str(params.get("user") or "")
        if not user:
            raise _missing("user")
        if user not in self._users:
            raise _SlackError("user_not_in_channel")
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            raise _SlackError("no_text")
        ts = slack_ts()
        ephemeral = {"channel": channel, "user": user, "text": params.get("text") or "", "ts": ts}
        ephemeral |= {"blocks": params.get("blocks"), "thread_ts": params.get("thread_ts")}
        self.ephemerals.append(ephemeral)
        return {"message_ts": ts}

    def _start_stream(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        if not params.get("thread_ts"):
            raise _missing("thread_ts")
        if not self._channels[channel].get("is_im"):
            if not params.get("recipient_user_id"):
                raise _SlackError("missing_recipient_user_id")
            if not params.get("recipient_team_id"):
                raise _SlackError("missing_recipient_team_id")
        if params.get("recipient_user_id") and params["recipient_user_id"] not in self._users:
            raise _SlackError("user_not_found")
        if params.get("recipient_team_id") and params["recipient_team_id"] != self.team_id:
            raise _SlackError("team_not_found")
        mode, text, rest = self._stream_text(params)
        message = self._bot_message(channel, {"thread_ts": params["thread_ts"]}, "")
        stream = _Stream(started=time.monotonic(), mode=None)
        self._add_stream_text(message, stream, mode, text, rest)
        self._streams[(channel, message["ts"])] = stream
        return {"channel": channel, "ts": message["ts"]}

    def _append_stream(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, message, stream = self._open_stream(params)
        mode, text, rest = self._stream_text(params)
        if mode is None and not rest:
            raise _SlackError("markdown_text_or_chunks_required")
        self._add_stream_text(message, stream, mode, text, rest)
        return {"channel": channel, "ts": message["ts"]}

    def _stop_stream(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, message, stream = self._open_stream(params)
        mode, text, rest = self._stream_text(params)
        self._add_stream_text(message, stream, mode, text, rest)
        if params.get("blocks"):
            message["blocks"] = [*message.get("blocks", []), *self._blocks(params["blocks"])]
        if params.get("metadata"):
            message["metadata"] = self._metadata(params["metadata"])
        stream.state = "stopped"
        public = self._public(channel, message, metadata=True)
        return {"channel": channel, "ts": message["ts"], "message": public}

    def _assistant_thread(self, params: Mapping[str, Any], *, need_thread: bool = True) -> tuple[str, str]:
        channel = self._channel(params, "channel_id")
        thread_ts = str(params.get("thread_ts") or "")
        if need_thread and not thread_ts:
            raise _SlackError("invalid_thread_ts")
        return channel, thread_ts

    def _set_status(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self._assistant_thread(params)
        if "status" not in params:
            raise _missing("status")
        loading = params.get("loading_messages")
        if loading is not None and (not isinstance(loading, list) or len(loading) > 10):
            raise _SlackError("invalid_arguments")
        self.assistant_status[key] = str(params["status"])
        return {}

    def _set_suggested_prompts(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self._assistant_thread(params, need_thread=False)
        prompts = params.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise _missing("prompts")
        if not all(isinstance(p, dict) and p.get("title") and p.get("message") for p in prompts):
            raise _SlackError("invalid_arguments")
        self.suggested_prompts[key] = {"title": params.get("title"), "prompts": [dict(p) for p in prompts]}
        return {}

    def _set_title(self, params: dict[str, Any]) -> dict[str, Any]:
        key = self._assistant_thread(params)
        if not params.get("title"):
            raise _missing("title")
        self.titles[key] = str(params["title"])
        return {}

    def _reactions_add(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("channel") or not params.get("timestamp"):
            raise _SlackError("no_item_specified")
        channel = self._channel(params)
        message = self._message(channel, params["timestamp"])
        name = str(params.get("name") or "")
        if not name or ":" in name:
            raise _SlackError("invalid_name")
        reactions: list[dict[str, Any]] = message.setdefault("reactions", [])
        reaction = next((r for r in reactions if r["name"] == name), None)
        if reaction is None:
            reaction = {"name": name, "users": [], "count": 0}
            reactions.append(reaction)
        if self.bot_user_id in reaction["users"]:
            raise _SlackError("already_reacted")
        reaction["users"].append(self.bot_user_id)
        reaction["count"] += 1
        return {}

    def _files_info(self, params: dict[str, Any]) -> dict[str, Any]:
        stored = self._files.get(str(params.get("file") or ""))
        if stored is None:
            raise _SlackError("file_not_found")
        return {"file": copy.deepcopy(stored[0]), "comments": [], "response_metadata": {"next_cursor": ""}}

    def _connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self._port}/link/?ticket={ticket}&app_id={self.app_id}"}
