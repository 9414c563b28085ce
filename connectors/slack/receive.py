"""From a verified Slack event or button press to the core, before Slack is acknowledged.

The same path serves the HTTP Events API and Socket Mode: ``Receiver.event`` and
``Receiver.action`` store what must be answered (``intake.submit``, ``intake.operator_reply``) and
return only then, with the status to acknowledge with: 2xx once it is stored (a redelivery is
recognised by its external id and is not answered twice), 500 when it could not be stored and 503
while the server drains (Slack retries both). Everything else (suggested prompts, titles, notes to
the sender) runs after the acknowledgement in tasks of the channel's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connectors.slack.channel import SlackChannel
from connectors.slack.inbound import (
    CHANNEL,
    ButtonPress,
    Customer,
    HandBack,
    Ignored,
    Operator,
    ThreadStarted,
    classify_action,
    classify_event,
    is_hand_back,
)
from connectors.slack.mrkdwn import escape
from supportbot.channels import (
    Busy,
    InboundMessage,
    Intake,
    MessageTooLarge,
    OperatorError,
    OperatorReply,
    StorageError,
    Unavailable,
)

__all__ = ["Outcome", "Receiver"]

log = logging.getLogger("supportbot.slack")

_READY_S = 1.0
"""The most an acknowledgement waits for Slack to name the tickets channel (only until it has, once); Slack
allows 3 s, and storing the event follows. No other call to Slack is on the acknowledgement's path."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How to acknowledge: an HTTP status (Socket Mode acknowledges only a 2xx), and why for a failure."""

    status: int = 200
    code: str = "ok"
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status < 300


_STORED = Outcome()
_NOT_STORED = Outcome(500, "not_stored", "the event could not be stored; Slack will send it again")
_DRAINING = Outcome(503, "unavailable", "the server is shutting down; Slack will send the event again")
_BUSY = Outcome(503, "busy", "too many model calls are waiting on this worker; Slack will send the event again")
_NOT_READY = Outcome(503, "not_ready", "the tickets channel is not known yet; Slack will send the event again")


class Receiver:
    """Decides and stores what Slack sent; see the module's docstring."""

    def __init__(self, channel: SlackChannel) -> None:
        self.channel = channel

    async def _ready(self) -> None:
        """Learn the tickets channel's id if it is named and not known yet: an operator's reply is told apart by it.

        The bot's own user id is not waited for: the envelope's ``authorizations`` name it.
        """
        channel = self.channel
        if channel.settings.tickets_channel is None or channel.tickets_channel_id is not None:
            return
        try:
            await asyncio.wait_for(channel.ensure_ready(), _READY_S)
        except Exception as exc:  # not fatal here: Slack retries what cannot be told apart yet (_NOT_READY)
            log.debug("Slack not ready while acknowledging: %s", exc)

    async def event(self, envelope: Mapping[str, Any], intake: Intake) -> Outcome:
        """Handle an Events API envelope (its signature already checked)."""
        if envelope.get("type") == "app_rate_limited":
            log.warning("Slack is dropping this app's events: over 30,000 events an hour for team %s",
                        envelope.get("team_id"))  # fmt: skip
            return _STORED
        if envelope.get("type") != "event_callback":
            return _STORED
        channel = self.channel
        await self._ready()
        found = classify_event(
            envelope, bot_user_id=channel.bot_user_id, tickets_channel=channel.tickets_channel_id,
            dm_replies=channel.settings.dm_replies, assistant_threads=channel.is_assistant_thread,
            user_name=channel.users.cached_name,
        )  # fmt: skip
        if isinstance(found, Ignored):
            log.debug("Slack event ignored: %s", found.reason)
            return _STORED
        if isinstance(found, ThreadStarted):
            channel.remember_assistant_thread(found.channel, found.thread_ts)
            channel.spawn(channel.offer_prompts(found.channel, found.thread_ts))
            return _STORED
        if isinstance(found, Operator):
            return await self._operator(found, intake)
        return await self._customer(found, intake)

    async def _customer(self, found: Customer, intake: Intake) -> Outcome:
        channel, message = self.channel, found.message
        key = message.key or ""
        if found.if_conversation or found.kind == "assistant":
            try:
                known = await channel.has_conversation(key) if channel.has_conversation is not None else False
            except StorageError:
                return _NOT_STORED
            if found.if_conversation and not known:
                # A thread the bot was not asked into, or (while the tickets channel is unknown) maybe an
                # operator's reply: Slack sends it again later, when it can be told apart.
                unresolved = channel.settings.tickets_channel is not None and channel.tickets_channel_id is None
                return _NOT_READY if unresolved else _STORED
            first = found.kind == "assistant" and not known
        else:
            first = False
        outcome, new = await self._submit(message, intake)
        if first and new:
            thread = message.address.get("thread_ts")
            if thread:
                channel.spawn(channel.set_title(str(message.address["channel"]), str(thread), message.text))
        return outcome

    async def _submit(self, message: InboundMessage, intake: Intake) -> tuple[Outcome, bool]:
        """Store the message; the outcome, and whether it is new (not a redelivery)."""
        try:
            accepted = await intake.submit(message)
        except MessageTooLarge as exc:
            address = message.address
            self.channel.spawn(self.channel.note(str(address["channel"]), address.get("thread_ts"), _too_large(exc)))
            return _STORED, False  # answered with the note: nothing to store, nothing for Slack to retry
        except StorageError as exc:
            log.error("a Slack message could not be stored (Slack will retry): %s", exc)
            return _NOT_STORED, False
        except Busy as exc:
            log.warning("a Slack message was refused unstored (Slack will retry): %s", exc)
            return _BUSY, False
        except Unavailable:
            return _DRAINING, False
        return _STORED, not accepted.duplicate

    async def _operator(self, found: Operator, intake: Intake) -> Outcome:
        try:
            announcement = await intake.delivered(CHANNEL, f"{found.channel}:{found.thread_ts}")
        except StorageError:
            return _NOT_STORED
        ticket_id = announcement.data.get("ticket_id") if announcement is not None else None
        if ticket_id is None:
            return _STORED  # a thread in the tickets channel that is no ticket's
        hand_back = is_hand_back(found.text)
        reply = OperatorReply(
            channel=CHANNEL, external_id=f"{found.channel}:{found.ts}", actor=await self._actor(found.user),
            text="" if hand_back else found.text, ticket_id=int(ticket_id), hand_back=hand_back,
        )  # fmt: skip
        return await self._operator_reply(reply, intake, found.channel, found.thread_ts)

    async def _operator_reply(self, reply: OperatorReply, intake: Intake, channel: str, thread_ts: str) -> Outcome:
        try:
            taken = await intake.operator_reply(reply)
        except OperatorError as exc:
            self.channel.spawn(self.channel.note(channel, thread_ts, f"Not sent to the customer: {exc}"))
            return _STORED
        except StorageError as exc:
            log.error("an operator's Slack reply could not be stored (Slack will retry): %s", exc)
            return _NOT_STORED
        except Unavailable:
            return _DRAINING
        if taken and reply.hand_back:
            self.channel.spawn(self.channel.note(channel, thread_ts, f"{reply.actor} handed the conversation back "
                                                                     "to the bot."))  # fmt: skip
        return _STORED

    async def _actor(self, user_id: str) -> str:
        """An operator as a ticket's log names them: their name if it is known already, else their user id.

        Never asks Slack while Slack waits for the acknowledgement; an unknown name is looked up afterwards,
        for the operator's next reply.
        """
        users = self.channel.users
        name = users.cached_name(user_id)
        if name is None:
            self.channel.spawn(users.get(user_id))
        return f"{name or user_id} (Slack)"

    async def action(self, payload: Mapping[str, Any], intake: Intake) -> Outcome:
        """Handle a ``block_actions`` interaction (its signature already checked)."""
        found = classify_action(payload)
        if isinstance(found, Ignored):
            log.debug("Slack interaction ignored: %s", found.reason)
            return _STORED
        if isinstance(found, HandBack):
            reply = OperatorReply(
                channel=CHANNEL, external_id=f"{found.channel}:{found.message_ts}:hand_back:{found.action_ts}",
                actor=await self._actor(found.user), ticket_id=found.ticket_id, hand_back=True,
            )  # fmt: skip
            return await self._operator_reply(reply, intake, found.channel, found.message_ts)
        outcome, new = await self._submit(found.message, intake)
        if new:
            self.channel.spawn(self._answered(found, payload))
        return outcome

    async def _answered(self, found: ButtonPress, payload: Mapping[str, Any]) -> None:
        """Replace the buttons of an answered question by the answer."""
        original = str((payload.get("message") or {}).get("text") or "")
        answer = "Yes" if found.message.text == "yes" else "No"
        await self.channel.background_api.chat_update(
            channel=found.channel,
            ts=found.message_ts,
            text=f"{original}\n\n_You answered: {escape(answer)}_",
            blocks=[],
        )


def _too_large(exc: MessageTooLarge) -> str:
    if exc.limit == "limits.max_message_chars":
        return (
            f"Sorry, your message is too long for me: {exc.actual:,} characters, and I can read at most "
            f"{exc.allowed:,}. Please send a shorter message, or split it into parts."
        )
    return f"Sorry, I can't take this message: {exc}"
