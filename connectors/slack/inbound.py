"""What a signed Slack event or interaction means for supportbot, decided without I/O.

``classify_event`` turns an Events API envelope into a customer's message (with its conversation key
and reply address), an operator's reply in a ticket's thread, an assistant thread that opened, or
something to ignore (the bot's own messages, other bots, edits, deletions, joins, messages not
meant for the bot). ``classify_action`` does the same for a button press (``block_actions``).

Conversation keys: a DM is one conversation per user, ``<team>/<dm channel>/<user>``; an assistant
thread is one conversation, ``<team>/<dm channel>/<thread ts>``; in a channel's thread each person has
their own, ``<team>/<channel>/<thread ts>/<user>`` (several people may write in one thread; each is
answered as who they are, in the thread). A Yes/No button is keyed by who pressed it, so it only ever
answers the presser's own conversation.
A message's external id is ``<channel>:<ts>``, so the ``app_mention`` and ``message.channels``
twins of one message and Slack's retries of one event are the same message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from connectors.slack.mrkdwn import from_slack
from supportbot.channels import Identity, InboundMessage

__all__ = [
    "CHANNEL",
    "CONFIRM_NO",
    "CONFIRM_YES",
    "HAND_BACK",
    "ButtonPress",
    "Customer",
    "HandBack",
    "Ignored",
    "Operator",
    "ThreadStarted",
    "channel_thread_key",
    "classify_action",
    "classify_event",
    "is_hand_back",
]

CHANNEL = "slack"
CONFIRM_YES = "supportbot_confirm_yes"
CONFIRM_NO = "supportbot_confirm_no"
HAND_BACK = "supportbot_hand_back"

Kind = Literal["im", "assistant", "channel"]
# Subtypes that are still a person's new message; every other subtype (message_changed, message_deleted,
# channel_join, bot_message, ...) is not for the bot.
_PERSON_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
_HAND_BACK = re.compile(r"^\s*(?:!|/)?hand[\s_-]?back(?:\s+to\s+(?:the\s+)?bot)?\s*[.!]*\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Customer:
    """A customer's message. ``if_conversation``: answer it only if its key already has a conversation
    (a reply in a channel thread without a mention: the bot answers in threads it was asked into)."""

    message: InboundMessage
    kind: Kind
    if_conversation: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Operator:
    """A message in a thread of the tickets channel: an operator answering a ticket announcement."""

    channel: str
    ts: str
    thread_ts: str
    user: str
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ThreadStarted:
    """An assistant thread opened (or its context changed): offer the suggested prompts."""

    channel: str
    thread_ts: str
    user: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class ButtonPress:
    """A customer answered a confirmation with a button: handled as if they typed ``text``."""

    message: InboundMessage
    channel: str
    message_ts: str


@dataclass(frozen=True, kw_only=True, slots=True)
class HandBack:
    """An operator pressed "Hand back to bot" under a ticket announcement."""

    channel: str
    message_ts: str
    action_ts: str
    user: str
    ticket_id: int


Classified = Ignored | Customer | Operator | ThreadStarted
Pressed = Ignored | ButtonPress | HandBack


def is_hand_back(text: str) -> bool:
    """An operator's "hand back" command ("hand back", "handback to the bot", "!handback")."""
    return bool(_HAND_BACK.match(text))


def channel_thread_key(team: str, channel: str, thread_ts: str, user: str) -> str:
    """The conversation key of one person in a channel's thread."""
    return f"{team}/{channel}/{thread_ts}/{user}"


def _strip_mention(text: str, bot_user_id: str | None) -> str:
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text)
    return text.strip()


def _files(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    files = []
    for item in event.get("files") or ():
        if not isinstance(item, dict) or item.get("mode") in ("tombstone", "hidden_by_limit"):
            continue
        files.append(
            {
                "id": item.get("id"),
                "name": item.get("name") or item.get("title") or "file",
                "mimetype": item.get("mimetype") or "",
                "size": item.get("size") or 0,
                "url": item.get("url_private_download") or item.get("url_private"),
            }
        )
    return files


def classify_event(
    envelope: Mapping[str, Any],
    *,
    bot_user_id: str | None,
    tickets_channel: str | None,
    dm_replies: Literal["top", "thread"] = "top",
    assistant_threads: Callable[[str, str], bool] = lambda channel, thread_ts: False,
    user_name: Callable[[str], str | None] | None = None,
) -> Classified:
    """What an ``event_callback`` envelope asks of the bot.

    Args:
        bot_user_id: the bot's own user id (its messages and mentions); falls back to the envelope's
            ``authorizations``.
        tickets_channel: the id of the channel where tickets are announced, if any.
        assistant_threads: whether ``(channel, thread_ts)`` is an assistant thread seen opening.
        user_name: a known display name for a user id, to show mentions of people by name.
    """
    event = envelope.get("event")
    if not isinstance(event, dict):
        return Ignored("no event")
    kind = event.get("type")
    if kind in ("assistant_thread_started", "assistant_thread_context_changed"):
        thread = event.get("assistant_thread") or {}
        if not thread.get("channel_id") or not thread.get("thread_ts"):
            return Ignored(f"{kind} without a thread")
        return ThreadStarted(channel=thread["channel_id"], thread_ts=thread["thread_ts"], user=thread.get("user_id"))
    if kind not in ("message", "app_mention"):
        return Ignored(f"event {kind}")
    if event.get("subtype") not in _PERSON_SUBTYPES:
        return Ignored(f"subtype {event.get('subtype')}")
    if event.get("bot_id") or event.get("bot_profile"):
        return Ignored("a bot's message")
    if bot_user_id is None:
        authorizations = envelope.get("authorizations") or ()
        bot_user_id = next((a.get("user_id") for a in authorizations if a.get("is_bot")), None)
    user, channel, ts = event.get("user"), event.get("channel"), event.get("ts")
    if not user or not channel or not ts:
        return Ignored("no user, channel or ts")
    if user == bot_user_id:
        return Ignored("the bot's own message")
    thread_ts: str = event.get("thread_ts") or ""
    in_thread = bool(thread_ts) and thread_ts != ts
    raw_text = event.get("text") or ""
    if tickets_channel is not None and channel == tickets_channel:
        if kind == "message" and in_thread:
            text = from_slack(_strip_mention(raw_text, bot_user_id), user_name=user_name)
            return Operator(channel=channel, ts=ts, thread_ts=thread_ts, user=user, text=text)
        return Ignored("tickets channel, not a reply in a ticket's thread")
    team = envelope.get("team_id") or event.get("team") or ""
    user_team = event.get("user_team") or event.get("team") or team
    text = from_slack(_strip_mention(raw_text, bot_user_id), user_name=user_name)
    files = _files(event)
    if not text and not files:
        return Ignored("empty message")
    direct = event.get("channel_type") == "im" or channel.startswith("D")
    address: dict[str, Any] = {"channel": channel, "team": team, "user": user, "ts": ts}
    if_conversation = False
    where: Kind
    if direct and (event.get("assistant_thread") or (in_thread and assistant_threads(channel, thread_ts))):
        where, key = "assistant", f"{team}/{channel}/{thread_ts or ts}"
        address["thread_ts"] = thread_ts or ts
    elif direct:
        where, key = "im", f"{team}/{channel}/{user}"
        address["thread_ts"] = thread_ts if in_thread else (ts if dm_replies == "thread" else None)
    else:
        where = "channel"
        if kind == "app_mention":
            key = channel_thread_key(team, channel, thread_ts or ts, user)
        elif in_thread:
            key, if_conversation = channel_thread_key(team, channel, thread_ts, user), True
        else:
            return Ignored("channel message without a mention")
        address["thread_ts"] = thread_ts or ts
    address["kind"] = where
    message = InboundMessage(
        channel=CHANNEL,
        external_id=f"{channel}:{ts}",
        key=key,
        text=text,
        # Verified only once ``prepare`` has Slack's record of the user (their team, a confirmed email).
        identity=Identity(external_id=f"{user_team}/{user}"),
        address=address,
        data={"files": files} if files else {},
    )
    return Customer(message=message, kind=where, if_conversation=if_conversation)


@dataclass(frozen=True, kw_only=True, slots=True)
class ConfirmValue:
    """What a Yes/No button carries: the conversation's key and address, and whose question it is."""

    key: str
    address: Mapping[str, Any] = field(default_factory=dict)

    def dump(self) -> str:
        return json.dumps({"k": self.key, "a": dict(self.address)}, separators=(",", ":"))


def classify_action(payload: Mapping[str, Any]) -> Pressed:
    """What a ``block_actions`` interaction asks: a customer's Yes/No, or an operator's hand-back."""
    if payload.get("type") != "block_actions":
        return Ignored(f"interaction {payload.get('type')}")
    actions = payload.get("actions") or ()
    user = (payload.get("user") or {}).get("id")
    team = (payload.get("user") or {}).get("team_id") or (payload.get("team") or {}).get("id") or ""
    container = payload.get("container") or {}
    channel = container.get("channel_id") or (payload.get("channel") or {}).get("id")
    message_ts = container.get("message_ts") or (payload.get("message") or {}).get("ts")
    if not actions or not user or not channel or not message_ts:
        return Ignored("no action, user, channel or message")
    action = actions[0]
    action_id = action.get("action_id")
    if action_id == HAND_BACK:
        try:
            ticket_id = int(action.get("value") or "")
        except ValueError:
            return Ignored("hand-back button without a ticket")
        return HandBack(channel=channel, message_ts=message_ts, action_ts=str(action.get("action_ts") or message_ts),
                        user=user, ticket_id=ticket_id)  # fmt: skip
    if action_id in (CONFIRM_YES, CONFIRM_NO):
        try:
            value = json.loads(action.get("value") or "")
            key, address = str(value["k"]), dict(value.get("a") or {})
        except (ValueError, KeyError, TypeError):
            return Ignored("confirmation button without its conversation")
        if address.get("user") and address["user"] != user:
            return Ignored("someone else's confirmation")
        if address.get("kind") == "channel":
            # Keyed by the presser: in a channel's thread, only their own conversation.
            pressed_by = channel_thread_key(str(address.get("team") or ""), str(address.get("channel") or ""),
                                            str(address.get("thread_ts") or ""), user)  # fmt: skip
            if pressed_by != key:
                return Ignored("someone else's confirmation")
        message = InboundMessage(
            channel=CHANNEL,
            # One answer per question: a second press (or the other button) is the same message.
            external_id=f"{channel}:{message_ts}:answer",
            key=key,
            text="yes" if action_id == CONFIRM_YES else "no",
            identity=Identity(external_id=f"{team}/{user}"),
            address=address,
        )
        return ButtonPress(message=message, channel=channel, message_ts=message_ts)
    return Ignored(f"action {action_id}")
