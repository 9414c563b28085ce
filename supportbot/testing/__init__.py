"""Test doubles that ship with supportbot: a fake chat-completions provider for tests, benchmarks and demos."""

from __future__ import annotations

from supportbot.testing.fake_llm import (
    Chunks,
    Cut,
    Fail,
    FakeLLMServer,
    Hang,
    RecordedRequest,
    Reply,
    Step,
    StreamError,
    tool_then_text,
)

__all__ = [
    "Chunks",
    "Cut",
    "Fail",
    "FakeLLMServer",
    "Hang",
    "RecordedRequest",
    "Reply",
    "Step",
    "StreamError",
    "tool_then_text",
]
