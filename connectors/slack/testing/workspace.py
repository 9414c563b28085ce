"""The fake's state: the workspace (users, channels, messages, files, streams) and the helpers its methods share.

``FakeSlack`` (``server``) is this class with the Web API methods (``methods``) and Socket Mode (``socket_mode``)
mixed in; the state they share is set up here, in one place.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from connectors.slack.testing.events import _rich_text, app_mention, event_callback, message_event
from connectors.slack.testing.records import Ack
from connectors.slack.testing.wire import _ts_key, slack_ts


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


class _Workspace:
    """The state of a ``FakeSlack`` and the helpers its parts share; see ``FakeSlack`` for the arguments."""

    def __init__(
        self,
        *,
        bot_token: str,
        app_token: str,
        team_id: str,
        app_id: str,
        bot_user_id: str,
        bot_id: str,
        stream_ttl: float,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.enterprise_id: str | None = None  # set for an Enterprise Grid workspace (auth.test names it)
        self.app_id = app_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.stream_ttl = stream_ttl
        self.acks: list[Ack] = []
        self.envelopes: list[dict[str, Any]] = []
        self.ephemerals: list[dict[str, Any]] = []
        self.assistant_status: dict[tuple[str, str], str] = {}
        self.suggested_prompts: dict[tuple[str, str], dict[str, Any]] = {}
        self.titles: dict[tuple[str, str], str] = {}
        self.connects = 0
        self._users: dict[str, dict[str, Any]] = {}
        self._channels: dict[str, dict[str, Any]] = {}
        self._messages: dict[str, dict[str, dict[str, Any]]] = {}  # channel -> ts -> message
        self._replies: dict[tuple[str, str], list[str]] = {}  # (channel, thread_ts) -> reply ts, in order
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._next_socket = 0
        self._changed = asyncio.Condition()
        self._port = 0

    # -- where it is served ----------------------------------------------------------------------------

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
        enterprise: str | None = None,
        email_confirmed: bool | None = None,
    ) -> dict[str, Any]:
        """Registers a user (a Slack user object, as ``users.info`` answers it).

        ``team``: the user's workspace (another organisation's in a shared channel); ``enterprise``: their
        Enterprise Grid org (``enterprise_user``); ``email_confirmed``: ``is_email_confirmed`` (default:
        whether there is an email).

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
            "is_email_confirmed": email is not None if email_confirmed is None else email_confirmed,
        }
        if enterprise is not None:
            teams = [team or self.team_id]
            user["enterprise_user"] = {"id": id, "enterprise_id": enterprise, "enterprise_name": "Fake Org",
                                       "is_admin": False, "is_owner": False, "teams": teams}  # fmt: skip
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

    # -- helpers its parts share ----------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

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
