"""The Web API methods the fake answers, each checked and answered as Slack's method reference says."""

from __future__ import annotations

import base64
import binascii
import copy
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from connectors.slack.testing.wire import _ts_key, slack_ts
from connectors.slack.testing.workspace import _SlackError, _Stream, _Workspace


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


class _WebAPIMethods(_Workspace):
    """The Web API methods (but ``apps.connections.open``, in ``socket_mode``), one handler each."""

    def _web_api_methods(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """The handlers by method name: each takes the call's arguments and returns the ``ok`` answer's fields."""
        return {
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
        }

    # -- helpers of the streaming methods ------------------------------------------------------------------

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
        } | ({"enterprise_id": self.enterprise_id} if self.enterprise_id else {})

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
