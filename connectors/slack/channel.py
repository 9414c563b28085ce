"""The Slack channel: delivering replies, showing turns live, and completing messages before their turn.

``deliver`` posts each outbox row once: the message carries metadata naming the row, and a retry
after a crash (``attempt > 1``) first looks for it in the conversation. A reply to a turn that is
being shown live finishes that live message with the whole final text instead of posting another.
``prepare`` adds the sender's Slack profile (name; email, verified when Slack vouches for it) and the images
they shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from connectors.slack.api import Budgets, delivery_error, error_code
from connectors.slack.inbound import CONFIRM_NO, CONFIRM_YES, HAND_BACK, ConfirmValue
from connectors.slack.live import LiveMessage
from connectors.slack.mrkdwn import escape, to_mrkdwn
from connectors.slack.people import Downloads, SlackUser, Users
from connectors.slack.settings import SlackSettings
from supportbot.channels import ChannelBase, DeliveryError, Identity, InboundMessage, Intake, Reply, TurnInfo
from supportbot.events import Event, TextDelta, ToolCallStarted, TurnFailed, TurnFinished, TurnStarted

__all__ = ["METADATA_TYPE", "SlackChannel"]

log = logging.getLogger("supportbot.slack")

METADATA_TYPE = "supportbot_reply"
"""``metadata.event_type`` of every message the bot posts; ``event_payload.outbox_id`` names the outbox row."""
LIVE_KINDS = frozenset({"answer", "fallback", "notice", "confirmation"})
ORDER_WAIT_S = 10.0
"""The longest a live message waits for the conversation's earlier replies to be delivered before it shows."""
LIVE_TTL_S = 600.0
"""How long a live message waits for its turn's reply before it is ended as it stands."""
_SECTION_CHARS = 3000  # Slack's limit on a section block's text
_LOOKUP_PAGES = 5
_LIVE_GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
_THINKING = "is thinking…"
_WORKING = "is looking that up…"


class SlackChannel(ChannelBase):
    """Replies to Slack conversations, live rendering, and the sender's profile and images.

    Args:
        settings: ``connectors.slack``.
        session: the HTTP session for Slack's Web API and file downloads.
        max_images, max_image_bytes: ``limits.max_images_per_message`` and ``limits.max_image_bytes``.
        suggested_prompts: ``(title, message)`` pairs offered when an assistant thread opens.
        has_conversation: whether a conversation key already has a conversation (the store's
            ``conversation_for_key``).
        keep, kept: a value per conversation kept durably (the store's channel state): where a turn's live
            message is, so a restarted server finishes it instead of posting the reply beside it.
    """

    name = "slack"

    def __init__(
        self,
        settings: SlackSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        max_images: int = 4,
        max_image_bytes: int = 5_000_000,
        suggested_prompts: Callable[[], Sequence[tuple[str, str]]] = lambda: (),
        has_conversation: Callable[[str], Awaitable[bool]] | None = None,
        keep: Callable[[str, str], Awaitable[None]] | None = None,
        kept: Callable[[str], Awaitable[str | None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.announces_tickets = settings.tickets_channel is not None
        token = settings.bot_token.get_secret_value() if settings.bot_token else ""
        # No retries inside a call (slack_sdk's default repeats a call whose connection broke): a post Slack
        # took before the connection broke would be posted twice. The outbox worker retries, looking for it
        # first; live rendering pauses on a 429 and stops on a broken connection (the reply replaces what it
        # showed); the core retries prepare (users.info).
        self.api = AsyncWebClient(
            token=token, base_url=settings.api_url, session=session, timeout=10, retry_handlers=[]
        )
        # Calls nothing waits on (prompts, titles, statuses, notes) may wait out a 429 inside the call.
        self.background_api = AsyncWebClient(
            token=token, base_url=settings.api_url, session=session, timeout=10,
            retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
        )  # fmt: skip
        secret = settings.signing_secret.get_secret_value() if settings.signing_secret else None
        self.verifier = SignatureVerifier(secret) if secret else None
        self.budgets = Budgets(clock=clock)
        self.users = Users(self.api, ttl=settings.user_cache_s, clock=clock)
        self._session = session
        self._max_images = max_images
        self._max_image_bytes = min(settings.max_file_bytes, max(0, max_image_bytes - 2))  # base64 rounds up 2 bytes
        self.suggested_prompts = suggested_prompts
        self.has_conversation = has_conversation
        self.keep = keep
        self.kept = kept
        self.clock = clock
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self.team_id: str | None = None
        self.enterprise_id: str | None = None
        self.tickets_channel_id: str | None = (
            settings.tickets_channel if settings.tickets_channel and settings.tickets_channel[0] in "CG"
            and settings.tickets_channel.isupper() else None
        )  # fmt: skip
        self.native_streaming = settings.streaming in ("auto", "native")
        self.intake: Intake | None = None
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._live: dict[int, LiveMessage] = {}
        # Turns seen live whose reply is not delivered yet, by conversation: a later turn's live message
        # waits for them, so a reply the outbox is still sending is not shown after the next one.
        self._open: dict[str, set[int]] = {}
        self._open_in: dict[int, str] = {}
        self._closed = asyncio.Event()
        self._finished_turns: OrderedDict[int, None] = OrderedDict()
        self._assistant_threads: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self.on_start: list[Callable[[Intake], Awaitable[None]]] = []
        """Receivers of the channel's own (Socket Mode), started with it."""
        self.on_stop: list[Callable[[], Awaitable[None]]] = []

    # -- start, stop, readiness -------------------------------------------------------------------------

    async def start(self, intake: Intake) -> None:
        """Learn the bot's identity and the tickets channel (retried in the background until Slack answers)."""
        self.intake = intake
        try:
            await self.ensure_ready()
        except Exception as exc:
            log.warning("Slack is not reachable yet (%s); retrying in the background", _describe(exc))
            self.spawn(self._ready_retry())
        for start in self.on_start:
            await start(intake)

    async def stop(self) -> None:
        for stop in self.on_stop:
            with contextlib.suppress(Exception):
                await stop()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for live in list(self._live.values()):
            await live.abandon()
        self._live.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _ready_retry(self) -> None:
        delay = 5.0
        while not self._ready:
            await asyncio.sleep(delay)
            try:
                await self.ensure_ready()
            except Exception as exc:
                log.warning("Slack is still not reachable: %s", _describe(exc))
                delay = min(delay * 2, 300.0)

    async def ensure_ready(self) -> None:
        """``auth.test`` (the bot's user id) and the tickets channel's id, once.

        Raises:
            SlackApiError, aiohttp.ClientError: Slack could not be asked; try again later.
            DeliveryError: ``tickets_channel`` names no channel the bot can see (not retryable).
        """
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            auth = await self.api.auth_test()
            self.bot_user_id = auth.get("user_id")
            self.bot_id = auth.get("bot_id")
            self.team_id = auth.get("team_id")
            self.enterprise_id = auth.get("enterprise_id")
            if self.settings.tickets_channel and self.tickets_channel_id is None:
                self.tickets_channel_id = await self._find_channel(self.settings.tickets_channel)
            self._ready = True

    async def _find_channel(self, name: str) -> str:
        cursor: str | None = None
        while True:
            response = await self.api.conversations_list(
                types="public_channel,private_channel", exclude_archived=True, limit=1000, cursor=cursor
            )
            for channel in response.get("channels") or ():
                if channel.get("name") == name or channel.get("id") == name:
                    if not channel.get("is_member", True):
                        log.warning("the bot is not in #%s; invite it (/invite @bot) to see operators' replies", name)
                    return str(channel["id"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                raise DeliveryError(
                    f"connectors.slack.tickets_channel: no channel named #{name} that the bot can see; create it, "
                    "invite the bot (/invite @yourbot), or write its id (C0123ABCD)",
                    retryable=False,
                )

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a call nothing waits on; failures are logged, the task is cancelled at ``stop``."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a Slack call failed: %s", _describe(task.exception()))

    # -- assistant threads ------------------------------------------------------------------------------

    def remember_assistant_thread(self, channel: str, thread_ts: str) -> None:
        self._assistant_threads[(channel, thread_ts)] = None
        while len(self._assistant_threads) > 10_000:
            self._assistant_threads.popitem(last=False)

    def is_assistant_thread(self, channel: str, thread_ts: str) -> bool:
        return (channel, thread_ts) in self._assistant_threads

    async def offer_prompts(self, channel: str, thread_ts: str) -> None:
        prompts = [{"title": title[:75], "message": message} for title, message in self.suggested_prompts()][:4]
        if prompts:
            await self.background_api.assistant_threads_setSuggestedPrompts(
                channel_id=channel, thread_ts=thread_ts, prompts=prompts
            )

    async def set_title(self, channel: str, thread_ts: str, text: str) -> None:
        title = " ".join(text.split())
        title = title if len(title) <= 60 else title[:59].rstrip() + "…"
        if title:
            await self.background_api.assistant_threads_setTitle(channel_id=channel, thread_ts=thread_ts, title=title)

    def _status(self, address: Mapping[str, Any], status: str) -> None:
        channel, thread_ts = address.get("channel"), address.get("thread_ts")
        if channel and thread_ts and self.budgets["assistant.threads.setStatus"].take():
            self.spawn(
                self.background_api.assistant_threads_setStatus(channel_id=channel, thread_ts=thread_ts, status=status)
            )

    async def note(self, channel: str, thread_ts: str | None, text: str) -> None:
        """Post a short note of the bot's own (plain text) in a conversation."""
        await self.background_api.chat_postMessage(channel=channel, thread_ts=thread_ts, text=escape(text))

    # -- prepare ------------------------------------------------------------------------------------------

    async def prepare(self, message: InboundMessage) -> InboundMessage | None:
        """Add the sender's Slack profile and download the images they shared.

        The customer is verified, with their email, only when ``users.info`` answered for a user of the
        installing workspace (or its Enterprise Grid org) with an email Slack does not call unconfirmed;
        anyone else (another organisation's user in a shared channel, no email, Slack not saying) is
        answered unverified, without an email.

        Returns:
            The message to answer; None (left unanswered) for a deleted user or a bot: Slack's own record
            says so.

        Raises:
            SlackApiError, aiohttp.ClientError, TimeoutError: Slack could not answer now; the core tries
                again, then answers the message as it came (unverified).
        """
        user_id = message.address.get("user")
        identity = replace(message.identity, email=None, verified=False)
        if user_id:
            user = await self.users.get(str(user_id))
            if user is not None:
                if not user.person:
                    log.info("not answering %s: Slack says the sender is %s", message.external_id,
                             "deleted" if user.deleted else "a bot")  # fmt: skip
                    return None
                vouched = bool(user.email) and user.email_confirmed is not False and self._ours(user, message)
                identity = Identity(external_id=identity.external_id, email=user.email if vouched else None,
                                    name=user.name, verified=vouched)  # fmt: skip
        images = message.images
        text = message.text
        files = message.data.get("files") or ()
        if files:
            downloads = Downloads(
                self._session or aiohttp.ClientSession(), token=self.api.token or "", api_url=self.settings.api_url,
                max_images=max(0, self._max_images - len(images)), max_bytes=self._max_image_bytes,
            )  # fmt: skip
            try:
                found, notes = await downloads.images(files)
            finally:
                if self._session is None:
                    await downloads.session.close()
            images = (*images, *found)
            if notes:
                text = "\n".join([text, *(f"[{note}]" for note in notes)]).strip()
        return replace(message, identity=identity, images=images, text=text)

    def _ours(self, user: SlackUser, message: InboundMessage) -> bool:
        """Whether the user belongs to the workspace the event came from (the installing one) or its org."""
        if user.team is not None and user.team in (message.address.get("team"), self.team_id):
            return True
        return user.enterprise is not None and user.enterprise == self.enterprise_id

    # -- live rendering --------------------------------------------------------------------------------

    def _live_mode(self, address: Mapping[str, Any]) -> Literal["native", "update"] | None:
        mode = self.settings.streaming
        if mode == "off" or not address.get("channel"):
            return None
        if mode == "update":
            return "update"
        if address.get("thread_ts") and self.native_streaming:
            return "native"
        return None if mode == "native" else "update"

    def render(self, turn: TurnInfo, event: Event) -> None:
        """Show a running turn: a "thinking…" status in assistant threads, the reply as it is written."""
        if turn.turn in self._finished_turns:
            return
        if turn.turn not in self._open_in:
            self._open.setdefault(turn.conversation_id, set()).add(turn.turn)
            self._open_in[turn.turn] = turn.conversation_id
        if isinstance(event, TurnFinished | TurnFailed) and event.message_id is None:
            self._close(turn.turn)  # nothing to deliver (a person has the conversation, the server stopped)
        address = turn.message.address
        if isinstance(event, TurnStarted | ToolCallStarted):
            if address.get("kind") == "assistant":
                self._status(address, _THINKING if isinstance(event, TurnStarted) else _WORKING)
            return
        if isinstance(event, TextDelta):
            live = self._live.get(turn.turn)
            if live is None:
                mode = self._live_mode(address)
                if mode is None or not event.text:
                    return
                where = str(address["channel"])
                live = self._live_message(
                    where, address, mode,
                    remember=functools.partial(self._remember, turn.conversation_id, turn.turn, where),
                    recall=functools.partial(self._recall, turn.conversation_id, turn.turn, where),
                    ready=functools.partial(self._earlier_delivered, turn.conversation_id, turn.turn),
                )  # fmt: skip
                self._live[turn.turn] = live
            live.add(event.text)
        elif isinstance(event, TurnFinished | TurnFailed):
            live = self._live.get(turn.turn)
            if live is not None:
                live.ended = True
                loop = asyncio.get_running_loop()
                self._timers[turn.turn] = loop.call_later(LIVE_TTL_S, self._expire, turn.turn)

    def _live_message(
        self,
        channel: str,
        address: Mapping[str, Any],
        mode: Literal["native", "update"] = "update",
        *,
        remember: Callable[[str, Literal["native", "update"]], Awaitable[None]] | None = None,
        recall: Callable[[], Awaitable[tuple[str, Literal["native", "update"]] | None]] | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> LiveMessage:
        team, user = address.get("team"), address.get("user")
        return LiveMessage(
            api=self.api, budgets=self.budgets, channel=channel, thread_ts=address.get("thread_ts"),
            recipient=(str(team), str(user)) if team and user else None, mode=mode,
            interval=self.settings.update_interval_s, native_unavailable=self._no_native, remember=remember,
            recall=recall, ready=ready, clock=self.clock,
        )  # fmt: skip

    async def _remember(
        self, conversation_id: str, turn: int, channel: str, ts: str, mode: Literal["native", "update"]
    ) -> None:
        if self.keep is not None:
            value = json.dumps({"turn": turn, "channel": channel, "ts": ts, "mode": mode}, separators=(",", ":"))
            await self.keep(conversation_id, value)

    async def _recall(
        self, conversation_id: str, turn: int, channel: str
    ) -> tuple[str, Literal["native", "update"]] | None:
        """The live message an earlier run of the server started for this turn, if any."""
        if self.kept is None:
            return None
        value = await self.kept(conversation_id)
        try:
            found = json.loads(value) if value else None
        except ValueError:
            return None
        if not isinstance(found, dict) or found.get("turn") != turn or found.get("channel") != channel:
            return None
        return str(found["ts"]), "native" if found.get("mode") == "native" else "update"

    def _no_native(self) -> None:
        self.native_streaming = False

    def _expire(self, turn: int) -> None:
        self._timers.pop(turn, None)
        live = self._live.pop(turn, None)
        self._finish_turn(turn)
        if live is not None:
            log.warning(
                "turn %d's reply did not come within %.0f s; its live message is left as it is", turn, LIVE_TTL_S
            )
            self.spawn(live.abandon())

    def _close(self, turn: int) -> None:
        conversation = self._open_in.pop(turn, None)
        if conversation is not None:
            waiting = self._open.get(conversation)
            if waiting is not None:
                waiting.discard(turn)
                if not waiting:
                    del self._open[conversation]
            self._closed.set()
            self._closed = asyncio.Event()

    async def _earlier_delivered(self, conversation: str, turn: int) -> None:
        """Wait (at most ``ORDER_WAIT_S``) until the conversation's earlier turns' replies are delivered."""
        deadline = self.clock() + ORDER_WAIT_S
        while any(t < turn for t in self._open.get(conversation, ())):
            left = deadline - self.clock()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), left)

    def _finish_turn(self, turn: int) -> None:
        self._close(turn)
        self._finished_turns[turn] = None
        while len(self._finished_turns) > 10_000:
            self._finished_turns.popitem(last=False)
        timer = self._timers.pop(turn, None)
        if timer is not None:
            timer.cancel()

    # -- deliver ------------------------------------------------------------------------------------------

    async def deliver(self, reply: Reply) -> str:
        """Post the reply (or finish its turn's live message); returns ``"<channel>:<ts>"``.

        Raises:
            DeliveryError: Slack refused or rate-limited it (``retry_after``), or could not be reached.
        """
        method = "chat.postMessage"
        try:
            channel, thread_ts = await self._target(reply)
            payload: dict[str, Any] = {"outbox_id": reply.outbox_id}
            if reply.kind == "ticket" and reply.data.get("ticket_id") is not None:
                payload["ticket_id"] = reply.data["ticket_id"]
            metadata = {"event_type": METADATA_TYPE, "event_payload": payload}
            if reply.attempt > 1:
                method = "conversations.history"
                found = await self._find(channel, thread_ts, reply.outbox_id)
                if found is not None:
                    self._drop_live(reply)
                    return f"{channel}:{found}"
            text, blocks, buttons = self._message(reply)
            turn = reply.turn if reply.turn is not None and reply.kind in LIVE_KINDS else None
            if turn is not None:
                method = "chat.update"
                ts = await self._finish_live(reply, turn, channel, metadata=metadata, blocks=blocks, buttons=buttons)
                if ts is not None:
                    return f"{channel}:{ts}"
            method = "chat.postMessage"
            response = await self.api.chat_postMessage(
                channel=channel, thread_ts=thread_ts, text=text, blocks=blocks or None, metadata=metadata,
                unfurl_links=False, unfurl_media=False,
            )  # fmt: skip
            if turn is not None:
                self._finish_turn(turn)
            return f"{response.get('channel') or channel}:{response['ts']}"
        except DeliveryError:
            raise
        except Exception as exc:
            raise delivery_error(exc, method) from exc

    async def _target(self, reply: Reply) -> tuple[str, str | None]:
        """The channel and thread the reply goes to."""
        if reply.kind == "ticket":
            await self.ensure_ready()
            if self.tickets_channel_id is None:
                raise DeliveryError(
                    "a ticket was to be announced in Slack, but connectors.slack.tickets_channel is not set",
                    retryable=False,
                )
            return self.tickets_channel_id, None
        channel = reply.address.get("channel")
        if not channel:
            raise DeliveryError(f"outbox row {reply.outbox_id} has no Slack channel in its address", retryable=False)
        return str(channel), reply.address.get("thread_ts")

    async def _finish_live(
        self,
        reply: Reply,
        turn: int,
        channel: str,
        *,
        metadata: dict[str, Any],
        blocks: list[dict[str, Any]],
        buttons: list[dict[str, Any]],
    ) -> str | None:
        """Finish the turn's live message with the whole reply; its ts, or None when there is none to finish.

        The live message is this process's (being shown now), or one an earlier run of the server left
        half-written before it stopped (kept with the conversation).
        """
        live = self._live.pop(turn, None)
        if live is not None and live.channel != channel:
            self._live[turn] = live
            return None
        if live is None:
            found = await self._recall(reply.conversation_id, turn, channel) if reply.conversation_id else None
            if found is None:
                return None
            live = self._live_message(channel, reply.address)
            await live.take_over(*found)
        try:
            ts = await live.finish(_final_markdown(reply), metadata=metadata, blocks=blocks, buttons=buttons)
        except SlackApiError as exc:
            if error_code(exc) in _LIVE_GONE:
                # Someone deleted the half-written message (or it can no longer be edited): post the reply.
                log.info("the live reply in %s is gone (%s); posting the reply", channel, error_code(exc))
                return None
            self._live[turn] = live  # the next attempt finishes it
            raise
        except BaseException:
            self._live[turn] = live
            raise
        self._finish_turn(turn)
        return ts

    def _drop_live(self, reply: Reply) -> None:
        if reply.turn is not None and reply.kind in LIVE_KINDS:
            live = self._live.pop(reply.turn, None)
            self._finish_turn(reply.turn)
            if live is not None:
                self.spawn(live.close())

    async def _find(self, channel: str, thread_ts: str | None, outbox_id: int) -> str | None:
        """The ts of the message already posted for ``outbox_id`` (a retry after a crash), or None."""
        cursor: str | None = None
        for _ in range(_LOOKUP_PAGES):
            if thread_ts:
                response = await self.api.conversations_replies(
                    channel=channel, ts=thread_ts, include_all_metadata=True, limit=200, cursor=cursor
                )
            else:
                response = await self.api.conversations_history(
                    channel=channel, include_all_metadata=True, limit=100, cursor=cursor
                )
            for message in response.get("messages") or ():
                metadata = message.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if metadata.get("event_type") == METADATA_TYPE and str(payload.get("outbox_id")) == str(outbox_id):
                    return str(message["ts"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                return None
        return None

    def _message(self, reply: Reply) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
        """The ``text``, the blocks of a posted message, and the buttons alone (the end of a native stream)."""
        if reply.kind == "ticket":
            return _ticket(reply)
        if reply.kind == "operator":
            author = escape(reply.author or "Support team")
            return f"*{author}* (support team)\n{to_mrkdwn(reply.text)}", [], []
        text = to_mrkdwn(reply.text) or "…"
        if reply.kind != "confirmation" or not reply.key:
            return text, [], []
        value = ConfirmValue(key=reply.key, address=reply.address).dump()
        if len(value) > 2000:  # a button's value holds at most 2,000 characters; a typed "yes" still works
            return text, [], []
        buttons = [
            {
                "type": "actions",
                "block_id": "supportbot_confirm",
                "elements": [
                    {"type": "button", "action_id": CONFIRM_YES, "style": "primary", "value": value,
                     "text": {"type": "plain_text", "text": "Yes"}},
                    {"type": "button", "action_id": CONFIRM_NO, "value": value,
                     "text": {"type": "plain_text", "text": "No"}},
                ],
            }
        ]  # fmt: skip
        if len(text) > _SECTION_CHARS:
            return text, [], []
        return text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}, *buttons], buttons


def _final_markdown(reply: Reply) -> str:
    return reply.text or "…"


def _ticket(reply: Reply) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """A new ticket for the operators: number, subject, customer, their channel, a link to the admin page."""
    data = reply.data
    number = data.get("ticket_id")
    subject = escape(str(data.get("subject") or reply.text or "New ticket"))
    customer = escape(str(data.get("customer") or "a customer"))
    email = data.get("customer_email")
    if email and str(email) not in str(data.get("customer")):
        customer += f" ({escape(str(email))}{'' if data.get('customer_verified') else ', unverified'})"
    where = escape(str(data.get("channel") or "unknown"))
    priority = data.get("priority")
    heading = f"*Ticket #{number}*" + (f" ({escape(str(priority))})" if priority and priority != "normal" else "")
    lines = [f"{heading}: {subject}", f"Customer: {customer} · Channel: {where}"]
    url = str(data.get("url") or "")
    if url.startswith(("https://", "http://")):
        lines.append(f"<{url.replace('&', '&amp;')}|Open ticket #{number}>")
    elif url:
        # No server.public_url: a path Slack cannot link; shown for the operator to open on the admin page.
        lines.append(f"Admin page: `{escape(url)}` (set server.public_url to make this a link)")
    lines.append(
        "_Reply in this thread to answer the customer; write `hand back` to give the conversation back to the bot._"
    )
    text = "\n".join(lines)
    buttons: list[dict[str, Any]] = []
    if number is not None:
        buttons.append(
            {
                "type": "actions",
                "block_id": "supportbot_ticket",
                "elements": [
                    {"type": "button", "action_id": HAND_BACK, "value": str(number),
                     "text": {"type": "plain_text", "text": "Hand back to bot"}},
                ],
            }
        )  # fmt: skip
    return text, [{"type": "section", "text": {"type": "mrkdwn", "text": text[:_SECTION_CHARS]}}, *buttons], buttons


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, SlackApiError):
        return error_code(exc)
    return f"{type(exc).__name__}: {exc}"
