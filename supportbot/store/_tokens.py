"""Conversation access tokens (the ``ConversationTokens`` protocol), as a part of ``SQLStore``.

Only a SHA-256 hash of a token is stored: a copy of the database opens no conversation.
"""

from __future__ import annotations

from supportbot.store._sqlbase import SQLBase, now

__all__ = ["TokenMixin"]


class TokenMixin(SQLBase):
    """Implements ``supportbot.store.base.ConversationTokens``."""

    async def add_conversation_token(self, conversation_id: str, token_hash: str) -> None:
        """Record that the token with this hash opens the conversation."""
        async with self._driver("storing a conversation token") as driver:
            await self._backend.add_conversation_token(driver, conversation_id, token_hash, now())

    async def conversation_for_token(self, token_hash: str) -> str | None:
        """The id of the conversation the token with this hash opens, or None."""
        async with self._driver("checking a conversation token") as driver:
            return await self._backend.conversation_for_token(driver, token_hash)
