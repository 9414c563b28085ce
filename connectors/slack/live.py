"""One reply shown while the model writes it: Slack's native stream, or one message edited as it grows.

A ``LiveMessage`` belongs to one turn. ``add`` (called from the channel's sync ``render``) only
buffers text; its own task makes the Slack calls, at most one per ``interval`` for this message and
only when the method's workspace ``Budget`` has a call free, so any number of concurrent turns stays
within Slack's tiers: text that could not go out waits and goes with the next call.

``finish`` (called by ``deliver`` with the stored reply) ends it with the *whole* final text: the
native stream is stopped with what the stream has not shown yet (or, if the final text is not a
continuation of what was shown, stopped and replaced with ``chat.update``); the edited message gets
the final text. Either way the message carries the reply's metadata, so a redelivery finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from connectors.slack.api import Budgets, error_code, retry_after
from connectors.slack.mrkdwn import stream_ready, to_markdown, to_mrkdwn

__all__ = ["MAX_MARKDOWN_CHARS", "LiveMessage"]

log = logging.getLogger("supportbot.slack")

MAX_MARKDOWN_CHARS = 12_000
"""Slack's limit on ``markdown_text`` per streaming call."""
_PIECE_CHARS = 10_000  # raw characters per call; the word joiners to_markdown adds stay within the limit
# Errors meaning this workspace or token cannot stream natively: use edited messages from now on.
_NO_NATIVE = frozenset(
    {"unknown_method", "method_deprecated", "not_allowed_token_type", "feature_not_enabled", "not_supported",
     "invalid_arguments", "streaming_not_enabled"}
)  # fmt: skip

_STOPPED_BY_USER = "stopped_by_user"

Mode = Literal["native", "update"]


class LiveMessage:
    """The live view of one turn's reply in one Slack conversation.

    Args:
        api: the Web API client.
        budgets: the workspace's per-method call budgets.
        channel: where the conversation is; ``thread_ts`` its thread (native streams need one).
        recipient: ``(team, user)`` the stream is for (Slack needs it outside DMs).
        mode: ``native`` (chat.startStream/appendStream/stopStream) or ``update`` (chat.postMessage, then
            chat.update).
        interval: the least seconds between two calls for this message.
        native_unavailable: called when Slack refuses native streaming here, before switching to ``update``.
        remember: called with the message's ts and mode once it exists, to keep them durably (a restart
            then finds the message instead of leaving it half-written beside a new one).
        recall: what ``remember`` kept for this turn in an earlier run of the server: that message is
            taken over (edited from then on) instead of starting another.
    """

    def __init__(
        self,
        *,
        api: AsyncWebClient,
        budgets: Budgets,
        channel: str,
        thread_ts: str | None,
        recipient: tuple[str, str] | None,
        mode: Mode,
        interval: float,
        native_unavailable: Callable[[], None] = lambda: None,
        remember: Callable[[str, Mode], Awaitable[None]] | None = None,
        recall: Callable[[], Awaitable[tuple[str, Mode] | None]] | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.budgets = budgets
        self.channel = channel
        self.thread_ts = thread_ts
        self.recipient = recipient
        self.mode: Mode = mode if thread_ts else "update"
        self.interval = interval
        self.native_unavailable = native_unavailable
        self.remember = remember
        self.recall = recall
        self.ready = ready
        self.clock = clock
        self.raw = ""  # every delta so far
        self.shown = ""  # the part of ``raw`` Slack shows
        self.ts: str | None = None
        self.calls: list[str] = []  # the methods called, in order (for tests and the benchmark)
        self.failed = False
        self.stopped = False  # the native stream was stopped
        self.ended = False  # the turn ended (its last event came)
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._last_call = float("-inf")
        self._task: asyncio.Task[None] | None = None

    # -- fed by render ---------------------------------------------------------------------------

    def add(self, text: str) -> None:
        """Buffer a piece of the reply (never blocks)."""
        self.raw += text
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"supportbot-slack-live-{self.channel}")
        self._wake.set()

    # -- the task ------------------------------------------------------------------------------------

    def _pending(self) -> bool:
        if self.failed:
            return False
        if self.mode == "native":
            return stream_ready(self.raw) > len(self.shown)
        return self.raw != self.shown and bool(self.raw.strip())

    def _method(self) -> str:
        if self.mode == "native":
            return "chat.appendStream" if self.ts else "chat.startStream"
        return "chat.update" if self.ts else "chat.postMessage"

    async def _run(self) -> None:
        if self.recall is not None:
            with contextlib.suppress(Exception):  # nothing recalled: a new message, as usual
                found = await self.recall()
                if found is not None:
                    await self.take_over(*found)
        if self.ready is not None and self.ts is None:
            await self.ready()  # the conversation's earlier replies are in Slack first, so the order holds
        while not self._closing.is_set():
            waiter = asyncio.ensure_future(self._wake.wait())
            closer = asyncio.ensure_future(self._closing.wait())
            try:
                await asyncio.wait({waiter, closer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                closer.cancel()
            self._wake.clear()
            while self._pending() and not self._closing.is_set():
                budget = self.budgets[self._method()]
                delay = max(self._last_call + self.interval - self.clock(), budget.wait())
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), delay)
                    continue
                budget.take()
                self._last_call = self.clock()
                await self._send_once()

    async def _send_once(self) -> None:
        method = self._method()
        try:
            await self._send(method)
        except SlackApiError as exc:
            wait = retry_after(exc)
            if wait is not None:
                self.budgets[method].pause(wait)  # honour Retry-After for every live message of the workspace
                return
            if self.mode == "native" and self.ts is None and error_code(exc) in _NO_NATIVE:
                log.info("Slack refused native streaming (%s); showing replies as edited messages", error_code(exc))
                self.native_unavailable()
                self.mode = "update"
                return
            log.warning("live reply in %s stopped: %s failed: %s", self.channel, method, error_code(exc))
            self.failed = True
        except Exception as exc:  # a timeout or a broken connection: the call may or may not have landed
            log.warning("live reply in %s stopped: %s failed: %s: %s", self.channel, method, type(exc).__name__, exc)
            self.failed = True

    async def take_over(self, ts: str, mode: Mode) -> None:
        """Continue in a message an earlier run of the server started for this turn: end its stream, if it was one,
        and edit it from now on."""
        self.ts = ts
        if mode == "native":
            self.calls.append("chat.stopStream")
            with contextlib.suppress(SlackApiError):  # it may have ended already (Slack ends idle streams)
                await self.api.chat_stopStream(channel=self.channel, ts=ts)
        self.mode = "update"
        self.stopped = True
        log.info("continuing the live reply %s in %s left by an earlier run", ts, self.channel)

    async def _created(self) -> None:
        if self.remember is not None and self.ts is not None:
            try:
                await self.remember(self.ts, self.mode)
            except Exception as exc:  # the message still works; only a crash now would leave it behind
                log.warning("could not keep the live reply's ts: %s: %s", type(exc).__name__, exc)

    async def _send(self, method: str) -> None:
        self.calls.append(method)
        if self.mode == "native":
            ready = stream_ready(self.raw)
            end = min(ready, len(self.shown) + _PIECE_CHARS)
            end = stream_ready(self.raw[:end]) or end
            piece = to_markdown(self.raw[len(self.shown) : end])
            if self.ts is None:
                team, user = self.recipient or (None, None)
                response = await self.api.chat_startStream(
                    channel=self.channel, thread_ts=str(self.thread_ts), markdown_text=piece,
                    recipient_team_id=team, recipient_user_id=user,
                )  # fmt: skip
                self.ts = str(response["ts"])
                await self._created()
            else:
                await self.api.chat_appendStream(channel=self.channel, ts=self.ts, markdown_text=piece)
            self.shown = self.raw[:end]
            return
        text = self.raw
        if self.ts is None:
            response = await self.api.chat_postMessage(
                channel=self.channel, thread_ts=self.thread_ts, text=to_mrkdwn(text), unfurl_links=False,
                unfurl_media=False,
            )  # fmt: skip
            self.ts = str(response["ts"])
            await self._created()
        else:
            await self.api.chat_update(channel=self.channel, ts=self.ts, text=to_mrkdwn(text), blocks=[])
        self.shown = text

    # -- the end -----------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop live updates and wait for the call in flight (if any) to end."""
        self._closing.set()
        if self._task is not None:
            await self._task

    async def finish(
        self,
        final: str,
        *,
        metadata: dict[str, Any],
        blocks: Sequence[dict[str, Any]] = (),
        buttons: Sequence[dict[str, Any]] = (),
    ) -> str | None:
        """Show the whole reply ``final`` (the model's Markdown) in the live message; returns its ts, or None
        when there is no live message to finish (nothing was shown: post the reply instead).

        ``blocks`` go with an edited message (a section with the text and the buttons); ``buttons`` (an
        actions block) at the bottom of a stopped native stream.

        Raises:
            SlackApiError: (and connection errors) the message is not finished; call again to retry.
        """
        await self.close()
        if self.ts is None:
            return None
        if self.mode == "native" and not self.stopped:
            if not self.failed and final.startswith(self.shown):
                try:
                    await self._stop_with(final, metadata=metadata, buttons=buttons)
                    return self.ts
                except SlackApiError as exc:
                    if retry_after(exc) is not None:
                        raise
                    if error_code(exc) == _STOPPED_BY_USER:
                        return self._stopped_by_user()
                    # The stream ended on its own (Slack ends streams left open): replace its text.
                    log.info("could not finish the live stream in %s (%s); replacing it", self.channel, error_code(exc))
            else:
                # What was shown is not the start of the reply (or the stream broke): stop it, then replace it.
                self.calls.append("chat.stopStream")
                try:
                    await self.api.chat_stopStream(channel=self.channel, ts=self.ts)
                except SlackApiError as exc:
                    if retry_after(exc) is not None:
                        raise
                    if error_code(exc) == _STOPPED_BY_USER:
                        return self._stopped_by_user()
                    log.info("could not stop the live stream in %s (%s); replacing it", self.channel, error_code(exc))
            self.stopped = True
        self.calls.append("chat.update")
        await self.api.chat_update(
            channel=self.channel, ts=self.ts, text=to_mrkdwn(final), blocks=list(blocks), metadata=metadata
        )
        self.shown = final
        return self.ts

    def _stopped_by_user(self) -> str | None:
        # The customer pressed "stop" on the streaming answer: it stays as they stopped it, and counts as sent.
        log.info("the customer stopped the live reply in %s; it is left as it is", self.channel)
        self.stopped = True
        return self.ts

    async def _stop_with(self, final: str, *, metadata: dict[str, Any], buttons: Sequence[dict[str, Any]]) -> None:
        """Append what the stream has not shown of ``final`` and stop it with the metadata and buttons."""
        assert self.ts is not None
        rest = final[len(self.shown) :]
        while len(rest) > _PIECE_CHARS:
            cut = stream_ready(rest[:_PIECE_CHARS]) or _PIECE_CHARS
            self.calls.append("chat.appendStream")
            await self.api.chat_appendStream(channel=self.channel, ts=self.ts, markdown_text=to_markdown(rest[:cut]))
            self.shown += rest[:cut]
            rest = rest[cut:]
        self.calls.append("chat.stopStream")
        await self.api.chat_stopStream(
            channel=self.channel, ts=self.ts, markdown_text=to_markdown(rest) or None,
            blocks=list(buttons) or None, metadata=metadata,
        )  # fmt: skip
        self.stopped = True
        self.shown = final

    async def abandon(self) -> None:
        """The reply never came (or went elsewhere): end a native stream so Slack does not show it as running."""
        await self.close()
        if self.ts is not None and self.mode == "native" and not self.stopped:
            with contextlib.suppress(Exception):
                await self.api.chat_stopStream(channel=self.channel, ts=self.ts)
            self.stopped = True
