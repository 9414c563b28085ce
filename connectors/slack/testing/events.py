"""Builders of what Slack sends an app: events, their ``event_callback`` envelope, interactivity payloads."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from connectors.slack.testing.defaults import DEFAULT_APP_ID, DEFAULT_BOT_USER_ID, DEFAULT_TEAM_ID, VERIFICATION_TOKEN
from connectors.slack.testing.wire import slack_ts


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
