"""What an operator does to a ticket or a conversation, the same from the admin page, its API and the CLI.

Every action is stored with who did it (a ticket event). A reply is stored as a ``human``
message in the conversation; the conversation then belongs to a person (status ``human``) and the
bot stays silent until an operator hands it back. A reply and the hand-back notice are queued in
the outbox with their message (one transaction), and the server's delivery worker of the
conversation's channel sends them: from whichever process stored them (the admin page, the CLI,
another worker), also after a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from supportbot.errors import SupportbotError
from supportbot.store.base import (
    Conversation,
    NewMessage,
    Outgoing,
    Store,
    StoredMessage,
    Ticket,
    TicketPriority,
    TicketStatus,
)
from supportbot.store.review import Review

__all__ = ["HANDBACK_TEXT", "MAX_REPLY_CHARS", "NotFound", "OperatorError", "OperatorStore", "Operators"]

MAX_REPLY_CHARS = 10_000
HANDBACK_TEXT = "You're chatting with our assistant again."
"""What the customer sees when an operator hands the conversation back to the bot."""


class OperatorStore(Store, Review, Protocol):
    """A store with the operators' queries (``SQLStore``)."""


class OperatorError(SupportbotError):
    """An operator's action cannot be done as asked (unknown ticket, empty reply, ...); the message says why."""


class NotFound(OperatorError):
    """The ticket or conversation does not exist."""


class Operators:
    """Operators' actions on tickets and conversations.

    Args:
        store: where tickets and conversations live.
        queued: called with the channel's name after a reply was queued for it (the server wakes that
            channel's delivery at once; without it, delivery finds the reply within a second).
    """

    def __init__(self, store: OperatorStore, *, queued: Callable[[str], None] | None = None) -> None:
        self.store = store
        self._queued = queued

    async def ticket(self, ticket_id: int) -> Ticket:
        ticket = await self.store.get_ticket(ticket_id)
        if ticket is None:
            raise NotFound(f"no ticket #{ticket_id}; `supportbot tickets list` shows the existing ones")
        return ticket

    async def conversation(self, conversation_id: str) -> Conversation:
        conversation = await self.store.get_conversation(conversation_id)
        if conversation is None:
            raise NotFound(
                f"no conversation {conversation_id!r}; `supportbot conversations list` shows the existing ones"
            )
        return conversation

    async def reply(
        self, *, actor: str, text: str, ticket_id: int | None = None, conversation_id: str | None = None
    ) -> StoredMessage:
        """Reply to the customer as a person, in the ticket's conversation (or ``conversation_id``'s).

        The conversation goes to ``human`` (the bot pauses); the ticket records the reply.
        """
        text = _text(text, "reply")
        ticket = await self.ticket(ticket_id) if ticket_id is not None else None
        if ticket is not None:
            if ticket.conversation_id is None:
                raise OperatorError(f"ticket #{ticket.id} has no conversation to reply in; add a note instead")
            conversation_id = ticket.conversation_id
        if conversation_id is None:
            raise OperatorError("say which ticket or conversation to reply in")
        conversation = await self.conversation(conversation_id)
        [message] = await self.store.add_messages(
            conversation.id,
            [NewMessage(role="assistant", content=text, kind="human", author=actor, flow=conversation.flow)],
            outgoing=Outgoing(
                channel=conversation.channel, payload={"kind": "operator", "text": text, "author": actor}
            ),
        )
        if conversation.status != "human":
            await self.store.update_conversation(conversation.id, status="human")
        if ticket is not None:
            await self.store.add_ticket_event(ticket.id, actor=actor, action="reply", detail=_summary(text))
        if self._queued is not None:
            self._queued(conversation.channel)
        return message

    async def note(self, ticket_id: int, *, actor: str, text: str) -> Ticket:
        """An internal note on the ticket; the customer never sees it."""
        await self.ticket(ticket_id)
        return await self.store.update_ticket(ticket_id, actor=actor, note=_text(text, "note"))

    async def update(
        self,
        ticket_id: int,
        *,
        actor: str,
        status: TicketStatus | None = None,
        priority: TicketPriority | None = None,
        assignee: str | None = None,
    ) -> Ticket:
        """Change the ticket's status, priority or assignee (``""`` unassigns)."""
        await self.ticket(ticket_id)
        updated = await self.store.update_ticket(
            ticket_id, actor=actor, status=status, priority=priority,
            assignee=None if assignee is None else assignee.strip(),
        )  # fmt: skip
        if status == "closed" and updated.conversation_id is not None:
            conversation = await self.store.get_conversation(updated.conversation_id)
            if conversation is not None and conversation.status == "human":
                # Closed: the customer's next message starts fresh with the bot.
                await self.store.update_conversation(conversation.id, status="closed")
        return updated

    async def hand_back(
        self, *, actor: str, ticket_id: int | None = None, conversation_id: str | None = None
    ) -> Conversation:
        """Give the conversation back to the bot: it answers the customer's next message again."""
        ticket = await self.ticket(ticket_id) if ticket_id is not None else None
        if ticket is not None:
            conversation_id = ticket.conversation_id
        if conversation_id is None:
            raise OperatorError("this ticket has no conversation to hand back")
        conversation = await self.conversation(conversation_id)
        if conversation.status != "bot":
            # The notice first, with its outbox row: a crash before the status changes leaves a hand-back
            # that is finished on recovery, never a conversation given back without the customer told.
            await self.store.add_messages(
                conversation.id,
                [NewMessage(role="assistant", content=HANDBACK_TEXT, kind="notice", author=actor,
                            flow=conversation.flow)],
                outgoing=Outgoing(channel=conversation.channel,
                                  payload={"kind": "handback", "text": HANDBACK_TEXT, "author": actor}),
            )  # fmt: skip
            conversation = await self.store.update_conversation(conversation.id, status="bot")
            if self._queued is not None:
                self._queued(conversation.channel)
        if ticket is not None:
            await self.store.add_ticket_event(ticket.id, actor=actor, action="handback", detail="to the bot")
        return conversation


def _text(text: str, what: str) -> str:
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise OperatorError(f"the {what} is empty; write something")
    if len(text) > MAX_REPLY_CHARS:
        raise OperatorError(f"the {what} has {len(text)} characters; the limit is {MAX_REPLY_CHARS}")
    if "\x00" in text:
        raise OperatorError(f"the {what} holds a NUL character; remove it")
    return text


def _summary(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
