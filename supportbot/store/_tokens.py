"""Conversation access tokens (the ``ConversationTokens`` protocol), as a part of ``SQLStore``.

Only a SHA-256 hash of a token is stored: a copy of the database opens no conversation.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select

from supportbot.store._sqlbase import SQLBase, now
from supportbot.store.models import conversation_tokens as _t

__all__ = ["TokenMixin"]

_BY_HASH = select(_t.c.conversation_id).where(_t.c.token_hash == bindparam("h"))


class TokenMixin(SQLBase):
    """Implements ``supportbot.store.base.ConversationTokens``."""

    async def add_conversation_token(self, conversation_id: str, token_hash: str) -> None:
        """Record that the token with this hash opens the conversation."""
        async with self._begin("storing a conversation token") as connection:
            await connection.execute(
                _t.insert(), {"token_hash": token_hash, "conversation_id": conversation_id, "created_at": now()}
            )

    async def conversation_for_token(self, token_hash: str) -> str | None:
        """The id of the conversation the token with this hash opens, or None."""
        async with self._begin("checking a conversation token") as connection:
            row = (await connection.execute(_BY_HASH, {"h": token_hash})).first()
        return None if row is None else str(row[0])
