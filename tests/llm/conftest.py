"""Fixtures for the LLM client tests: fake providers on 127.0.0.1 and a client wired to them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from supportbot.config import LLMSettings
from supportbot.llm.base import Completion, LLMRequest, TextChunk
from supportbot.llm.client import OpenAICompatibleLLM
from supportbot.messages import ChatMessage
from supportbot.testing import FakeLLMServer

Settings = Callable[..., LLMSettings]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    """A fake provider speaking OpenAI's stream form."""
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def gemini() -> AsyncIterator[FakeLLMServer]:
    """A fake provider speaking the form of Gemini's OpenAI-compatibility layer."""
    async with FakeLLMServer(mode="gemini") as server:
        yield server


def _settings(base_url: str, **overrides: Any) -> LLMSettings:
    # Tiny backoffs and short timeouts keep failure tests fast; a test that checks a delay sets its own.
    values: dict[str, Any] = {
        "base_url": base_url,
        "model": "fake-model",
        "retries": {"max_retries": 2, "backoff_initial_s": 0.001, "backoff_max_s": 0.002},
        "timeouts": {"connect_s": 2, "first_byte_s": 5, "between_chunks_s": 5, "total_s": 10},
    }
    values.update(overrides)
    return LLMSettings(**values)


@pytest.fixture
def settings() -> Settings:
    """Makes test settings: ``settings(base_url, **overrides)``."""
    return _settings


@pytest.fixture
async def make_llm() -> AsyncIterator[Callable[..., OpenAICompatibleLLM]]:
    """Makes clients (``make_llm(base_url, **settings_overrides)``), all closed after the test."""
    made: list[OpenAICompatibleLLM] = []

    def make(base_url: str, **overrides: Any) -> OpenAICompatibleLLM:
        llm = OpenAICompatibleLLM(_settings(base_url, **overrides))
        made.append(llm)
        return llm

    yield make
    for llm in made:
        await llm.aclose()


def ask(text: str = "Where is my order?", **fields: Any) -> LLMRequest:
    """A one-message request."""
    return LLMRequest(messages=[ChatMessage(role="user", content=text)], model="fake-model", **fields)


@pytest.fixture
def request_for() -> Callable[..., LLMRequest]:
    """Makes a one-message request: ``request_for(text, **LLMRequest fields)``."""
    return ask


async def _collect(llm: OpenAICompatibleLLM, request: LLMRequest) -> tuple[list[str], Completion]:
    texts: list[str] = []
    completions: list[Completion] = []
    async for event in llm.stream(request):
        if isinstance(event, TextChunk):
            assert not completions, "text after the Completion"
            texts.append(event.text)
        else:
            completions.append(event)
    assert len(completions) == 1, "a stream must end with exactly one Completion"
    return texts, completions[0]


@pytest.fixture
def collect() -> Callable[[OpenAICompatibleLLM, LLMRequest], Awaitable[tuple[list[str], Completion]]]:
    """Runs a stream to the end: ``texts, completion = await collect(llm, request)``."""
    return _collect


class RawServers:
    """Serves hand-written aiohttp handlers at /v1/chat/completions, for byte-level cases.

    Attributes:
        release: set when the test ends; handlers that must stall wait on it.
    """

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self._runners: list[web.AppRunner] = []

    async def start(self, handler: Handler) -> str:
        """Starts a server for ``handler``; returns its base URL."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    async def close(self) -> None:
        self.release.set()
        for runner in self._runners:
            await runner.cleanup()


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServers]:
    """Hand-written provider handlers on 127.0.0.1: ``base_url = await raw_server.start(handler)``."""
    servers = RawServers()
    yield servers
    await servers.close()
