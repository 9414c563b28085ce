"""The chat-completions client: any OpenAI-compatible endpoint (OpenAI, Gemini's ``/v1beta/openai``, vLLM, Ollama...).

One ``POST {base_url}/chat/completions`` per model response, streamed as SSE. Retries follow
openai-python's policy, except that a response is never retried once any of its text has been
handed on (the customer may already be reading it). Timeouts are split the way they fail:
connect, first event, gap between chunks, and total.

Provider quirks (docs/llm-providers.md has one entry per quirk, each with its test):

* Gemini: ``extra_content.google.thought_signature`` on tool calls, kept in ``ToolCall.extra``
  and sent back verbatim; index-less tool calls; ``stop`` after tool calls.
* DeepSeek thinking models: ``delta.reasoning_content``, kept in ``ChatMessage.extra`` and sent
  back on the assistant message (DeepSeek refuses a tool-call history without it).
* OpenRouter: ``delta.reasoning_details`` (Gemini 3 signatures among them), merged per type and
  index and sent back on the assistant message; ``error.metadata.raw`` named in errors.
* An answer with no text and no tool calls is passed on as it is; the engine decides what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp

from supportbot._json import dumps_bytes, has_long_number, is_plain, loads
from supportbot._version import __version__
from supportbot.config import LLMSettings
from supportbot.errors import LLMError, LLMHTTPError, LLMTimeout
from supportbot.llm._http_errors import (
    connection_error,
    cut_error,
    http_error,
    not_json_error,
    raise_final,
    stream_error,
    timeout_error,
)
from supportbot.llm.accumulate import ChunkAccumulator, StreamFacts
from supportbot.llm.base import Completion, LLMRequest, TextChunk
from supportbot.llm.sse import SSEDecoder, SSEEvent
from supportbot.messages import ChatMessage

__all__ = ["OpenAICompatibleLLM", "message_to_dict", "request_body"]

logger = logging.getLogger("supportbot.llm")

_MAX_CONNECTIONS = 1000  # one stream per running turn; aiohttp's default of 100 would queue turns
_DONE = b"[DONE]"
_LARGE_BODY = 1 << 20  # aiohttp warns (ResourceWarning) about a bytes body larger than this


def _body(payload: bytes) -> bytes | io.BytesIO:
    """The request body as aiohttp sends a large one without warning: a fresh ``BytesIO`` each attempt.

    aiohttp sets Content-Length from the ``BytesIO``'s size and writes it in chunks; small bodies
    (nearly all) stay plain bytes, the cheapest path.
    """
    return io.BytesIO(payload) if len(payload) > _LARGE_BODY else payload


def message_to_dict(message: ChatMessage) -> dict[str, Any]:
    """Serialises one message for the ``messages`` array of a request.

    Provider extras (``ToolCall.extra``, ``ChatMessage.extra``) are merged back verbatim:
    Gemini checks that every function call it made comes back with its thought signature.

    Args:
        message: the message.

    Returns:
        The JSON-ready dict.
    """
    role = message.role
    if role == "assistant":
        calls = message.tool_calls
        content = message.content if message.content or not calls else None
        out: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}, **c.extra}
                if c.extra
                else {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        if message.extra:
            out.update(message.extra)
        return out
    if role == "tool":
        out = {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content or ""}
        if message.name:
            out["name"] = message.name
        return out
    if message.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
        parts.extend({"type": "image_url", "image_url": {"url": i.url, "detail": i.detail}} for i in message.images)
        return {"role": role, "content": parts}
    return {"role": role, "content": message.content or ""}


def request_body(request: LLMRequest, *, stream: bool) -> dict[str, Any]:
    """Builds the JSON body of a chat-completions request.

    Args:
        request: the request; sampling fields that are None are left out.
        stream: ask for an SSE stream with a final usage chunk.

    Returns:
        The JSON-ready body.
    """
    body: dict[str, Any] = {"model": request.model, "messages": [message_to_dict(m) for m in request.messages]}
    body.update(_settings(request, stream=stream))
    if request.tools:
        body["tools"] = list(request.tools)
    return body


def _settings(request: LLMRequest, *, stream: bool) -> dict[str, Any]:
    """Everything in the body but the messages and the tools."""
    body: dict[str, Any] = {"model": request.model}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    else:
        body["stream"] = False
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.reasoning_effort:
        body["reasoning_effort"] = request.reasoning_effort
    if request.json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


_FRAGMENTS = 64
"""System prompts and tool lists whose JSON text a client keeps (they are the same objects request after request)."""


class _Fragments:
    """The JSON text of the parts of a request that repeat: the system prompt and the tool definitions.

    They are a request's largest parts, and the engine passes the very same objects again and
    again (it caches both), so their text is kept by object identity, with a reference that
    keeps the id from being reused. Messages are immutable; tool definitions are read-only by
    ``ToolRegistry.schemas``' contract. Oldest entries go first once ``_FRAGMENTS`` are kept.
    """

    __slots__ = ("_texts",)

    def __init__(self) -> None:
        self._texts: dict[int, tuple[object, bytes]] = {}

    def text(self, value: object, encode: Callable[[], bytes]) -> bytes:
        entry = self._texts.get(id(value))
        if entry is not None and entry[0] is value:
            return entry[1]
        text = encode()
        if len(self._texts) >= _FRAGMENTS:
            del self._texts[next(iter(self._texts))]
        self._texts[id(value)] = (value, text)
        return text


def _typed(messages: Sequence[ChatMessage]) -> bool:
    """Whether ``message_to_dict`` makes plain JSON of these messages (``is_plain``) without walking it all.

    A message's fields are strs and None by type; only the provider extras can hold anything
    (a float, a NaN), and they are few and small.
    """
    for m in messages:
        if m.extra and not is_plain(m.extra):
            return False
        for c in m.tool_calls:
            if c.extra and not is_plain(c.extra):
                return False
    return True


def _encode_messages(messages: Sequence[ChatMessage]) -> bytes:
    return dumps_bytes([message_to_dict(m) for m in messages], checked=_typed(messages))


def _encode_body(request: LLMRequest, stream: bool, fragments: _Fragments) -> bytes:
    """``request_body`` as UTF-8 JSON, the system prompt's and the tools' text reused from earlier requests."""
    messages = request.messages
    if messages and messages[0].role == "system":
        system = messages[0]
        rest = _encode_messages(messages[1:])
        head = fragments.text(system, lambda: dumps_bytes(message_to_dict(system)))
        text = b"[" + head + b"," + rest[1:] if len(rest) > 2 else b"[" + head + b"]"
    else:
        text = _encode_messages(messages)
    parts = [b'{"messages":', text]
    if request.tools:
        tools = request.tools
        parts += [b',"tools":', fragments.text(tools, lambda: dumps_bytes(list(tools)))]
    parts += [b",", dumps_bytes(_settings(request, stream=stream))[1:]]
    return b"".join(parts)


class OpenAICompatibleLLM:
    """An ``LLM`` speaking the chat-completions protocol over HTTP.

    Args:
        settings: the ``llm`` section of the configuration.
        session: an aiohttp session to use (and leave open); by default the client makes its
            own on first use and ``aclose()`` closes it.
    """

    def __init__(self, settings: LLMSettings, *, session: aiohttp.ClientSession | None = None) -> None:
        self._settings = settings
        self._session = session
        self._owns_session = session is None
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json", "User-Agent": f"supportbot/{__version__}"}
        headers.update(settings.extra_headers)
        self._key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._json_headers = {**headers, "Accept": "application/json"}
        self._sse_headers = {**headers, "Accept": "text/event-stream"}
        timeouts = settings.timeouts
        # Only the connect timeout is left to aiohttp; the others are ours, so that the error says which one hit.
        self._client_timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=timeouts.connect_s)
        self._fragments = _Fragments()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=_MAX_CONNECTIONS, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._client_timeout)
        return self._session

    async def aclose(self) -> None:
        """Closes the HTTP session if this client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def stream(
        self, request: LLMRequest, *, facts: StreamFacts | None = None
    ) -> AsyncIterator[TextChunk | Completion]:
        """Streams one model response: text chunks as they arrive, then one ``Completion``.

        With ``llm.stream: false`` the whole answer is fetched in one request and yielded as
        one chunk.

        Args:
            request: the request.
            facts: optional record of the stream's wire form (used by ``llm check``).

        Raises:
            LLMError: after the retries allowed by ``llm.retries``, or at once when text had
                already been yielded.
        """
        if not self._settings.stream:
            completion = await self.complete(request)
            if completion.message.content:
                yield TextChunk(text=completion.message.content)
            yield completion
            return
        payload = _encode_body(request, True, self._fragments)
        attempt = 0
        while True:
            yielded = False
            try:
                async with contextlib.aclosing(self._stream_once(payload, facts)) as events:
                    async for event in events:
                        if type(event) is TextChunk:
                            yielded = True
                        yield event
                return
            except LLMError as exc:
                if yielded:
                    raise  # the customer may already be reading the text: never send it twice
                delay = self._delay_before_retry(exc, attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def complete(self, request: LLMRequest) -> Completion:
        """Fetches one model response without streaming (``stream: false``).

        Args:
            request: the request.

        Returns:
            The whole response.

        Raises:
            LLMError: after the retries allowed by ``llm.retries``.
        """
        payload = _encode_body(request, False, self._fragments)
        attempt = 0
        while True:
            try:
                return await self._complete_once(payload)
            except LLMError as exc:
                delay = self._delay_before_retry(exc, attempt)
            attempt += 1
            await asyncio.sleep(delay)

    def _delay_before_retry(self, exc: LLMError, attempt: int) -> float:
        """Seconds to wait before trying again; raises the final error when no retry is allowed."""
        delay = self._retry_delay(exc, attempt)
        if delay is None:
            raise_final(exc, attempt)
        logger.warning(
            "LLM request failed, retrying in %.2f s (attempt %d of %d): %s",
            delay,
            attempt + 2,
            self._settings.retries.max_retries + 1,
            exc,
        )
        return delay

    def _retry_delay(self, exc: LLMError, attempt: int) -> float | None:
        retries = self._settings.retries
        if not exc.retryable or attempt >= retries.max_retries:
            return None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None and 0 <= retry_after <= 60:
            return float(retry_after)
        backoff = min(retries.backoff_initial_s * 2**attempt, retries.backoff_max_s)
        return float(backoff * (1 - 0.25 * random.random()))

    async def _stream_once(
        self, payload: bytes, facts: StreamFacts | None
    ) -> AsyncGenerator[TextChunk | Completion, None]:
        timeouts = self._settings.timeouts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.total_s
        decoder = SSEDecoder()
        acc = ChunkAccumulator(facts)
        response: aiohttp.ClientResponse | None = None
        events: list[SSEEvent] = []
        watchdog: _Watchdog | None = None
        whole: Completion | None = None
        finished = False
        try:
            try:
                # The first-byte phase yields nothing, so one timeout scope can cover it.
                async with asyncio.timeout(min(timeouts.first_byte_s, timeouts.total_s)):
                    response = resp = await self._get_session().post(
                        self.url, data=_body(payload), headers=self._sse_headers, timeout=self._client_timeout
                    )
                    if response.status >= 300:
                        raise self._http_error(response, await response.read())
                    # Reading the raw header first spares the full Content-Type parse on every stream.
                    if not resp.headers.get("Content-Type", "").startswith("text/event-stream") and (
                        response.content_type == "application/json"
                    ):
                        # Some servers ignore "stream": true and answer in one piece.
                        whole = self._parse_completion(await response.read())
                        finished = True
                    while not events and whole is None:
                        chunk = await response.content.readany()
                        if not chunk:
                            events = decoder.close()
                            break
                        events = decoder.feed(chunk)
            except aiohttp.ConnectionTimeoutError as exc:
                raise self._timeout("connect") from exc
            except TimeoutError as exc:
                raise self._timeout("first_byte") from exc
            watchdog = _Watchdog(loop, resp.content, timeouts.between_chunks_s, deadline, self._timeout)
            content = resp.content
            while True:
                # The text of every event of one network read goes out as one chunk: the reader
                # gets the same bytes at the same moment, for far less work per token.
                pieces: list[str] = []
                # One look for long numbers (see ``loads``) over all the events of the read.
                checked = not has_long_number(b"\n".join([data for _, data in events]))
                for kind, data in events:
                    if data == _DONE:
                        finished = True
                        break
                    if kind == "error":
                        raise stream_error(self.url, data, None, key=self._key)
                    if not data:
                        continue
                    try:
                        chunk_json = loads(data, checked=checked)
                    except ValueError as exc:
                        raise not_json_error(self.url, data, "a stream event that is not JSON") from exc
                    if type(chunk_json) is not dict:
                        raise not_json_error(self.url, data, "a stream event that is not a JSON object")
                    if "error" in chunk_json:
                        raise stream_error(self.url, data, chunk_json, key=self._key)
                    try:
                        text = acc.add(chunk_json)
                    except (AttributeError, TypeError, ValueError) as exc:
                        raise not_json_error(self.url, data, "a chunk that is not a chat.completion.chunk") from exc
                    if text:
                        pieces.append(text)
                if pieces:
                    yield TextChunk(text="".join(pieces))
                if finished:
                    break
                watchdog.since = loop.time()
                watchdog.waiting = True
                chunk = await content.readany()
                watchdog.waiting = False
                if chunk:
                    events = decoder.feed(chunk)
                    continue
                events = decoder.close()
                if not events:
                    if acc.finished:
                        finished = True  # no [DONE], but the model did finish: nothing is missing
                        break
                    raise cut_error(self.url)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            if response is None:
                raise connection_error(self.url, exc) from exc
            raise cut_error(self.url) from exc
        except aiohttp.ClientError as exc:
            raise connection_error(self.url, exc) from exc
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if response is not None:
                if not finished:
                    response.close()  # the rest of the body is unknown: the connection cannot be reused
                else:
                    if not response.content.is_eof():
                        # Read the end of the chunked body so the connection can be reused.
                        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                            async with asyncio.timeout(1.0):
                                await response.content.read()
                    response.release()
        if whole is not None:
            if whole.message.content:
                yield TextChunk(text=whole.message.content)
            yield whole
        else:
            yield acc.completion()

    async def _complete_once(self, payload: bytes) -> Completion:
        timeouts = self._settings.timeouts
        try:
            async with asyncio.timeout(timeouts.total_s):
                async with self._get_session().post(
                    self.url, data=_body(payload), headers=self._json_headers, timeout=self._client_timeout
                ) as response:
                    body = await response.read()
                    if response.status >= 300:
                        raise self._http_error(response, body)
        except aiohttp.ConnectionTimeoutError as exc:
            raise self._timeout("connect") from exc
        except TimeoutError as exc:
            raise self._timeout("total") from exc
        except aiohttp.ClientError as exc:
            raise connection_error(self.url, exc) from exc
        return self._parse_completion(body)

    def _parse_completion(self, body: bytes) -> Completion:
        try:
            answer = loads(body)
            choices = answer["choices"]
            # ``choices: []`` is an (empty) answer, which the engine treats as such; not a protocol error.
            chunk = {
                "choices": [{"delta": c["message"], "finish_reason": c.get("finish_reason")} for c in choices[:1]],
                "usage": answer.get("usage"),
                "model": answer.get("model"),
            }
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise not_json_error(self.url, body, "an answer that is not a chat completion") from exc
        acc = ChunkAccumulator()
        try:
            acc.add(chunk)
        except (AttributeError, TypeError, ValueError) as exc:
            raise not_json_error(self.url, body, "an answer that is not a chat completion") from exc
        return acc.completion()

    def _timeout(self, which: str) -> LLMTimeout:
        return timeout_error(self.url, which, getattr(self._settings.timeouts, f"{which}_s"))

    def _http_error(self, response: aiohttp.ClientResponse, body: bytes) -> LLMHTTPError:
        return http_error(
            self.url,
            response.status,
            response.reason,
            response.headers,
            body,
            key=self._key,
            model=self._settings.model,
        )


class _Watchdog:
    """Enforces the between-chunks and total timeouts of one stream after its first event.

    A timeout scope per read would schedule and cancel a timer for every chunk; this one timer
    re-arms itself only when it fires (about once per ``gap``), so a chunk costs a clock read.
    On expiry it fails the pending read with an ``LLMTimeout``.
    """

    __slots__ = ("_content", "_deadline", "_gap", "_handle", "_loop", "_make_error", "since", "waiting")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        content: aiohttp.StreamReader,
        gap: float,
        deadline: float,
        make_error: Callable[[str], LLMTimeout],
    ) -> None:
        self._loop = loop
        self._content = content
        self._gap = gap
        self._deadline = deadline
        self._make_error = make_error
        self.since = loop.time()  # when the current read started waiting
        self.waiting = False
        self._handle = loop.call_at(min(self.since + gap, deadline), self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if now >= self._deadline:
            self._content.set_exception(self._make_error("total"))
            return
        if self.waiting and now - self.since >= self._gap:
            self._content.set_exception(self._make_error("between_chunks"))
            return
        start = self.since if self.waiting else now
        self._handle = self._loop.call_at(min(start + self._gap, self._deadline), self._check)

    def cancel(self) -> None:
        self._handle.cancel()
