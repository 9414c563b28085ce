"""Helpers of the tests that run turns on several workers: a fake model that answers each message by name,
and a wait for a condition another task or process brings about."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from supportbot.testing.fake_llm import Reply, Step


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last customer message in a chat-completions request body."""
    return next(str(m["content"]) for m in reversed(body["messages"]) if m["role"] == "user")


def echo(body: dict[str, Any]) -> Step:
    """The fake model's answer names the message it answers (``FakeLLMServer.responder``)."""
    return Reply(text=f"Answer to {last_user_text(body)}.")


async def until(check: Callable[[], bool], within: float, what: str) -> None:
    """Return once ``check()`` is true; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        await asyncio.sleep(0.02)
