"""A fake chat-completions provider on 127.0.0.1, speaking the real wire protocol.

Tests, benchmarks and demos point ``llm.base_url`` at it. It streams real SSE in OpenAI's form
or in the form of Gemini's compatibility layer (whole index-less tool calls with a thought
signature on the first, ``finish_reason: "stop"`` after tool calls, cumulative usage in every
chunk), and in Gemini mode it refuses, as Google does, a history whose tool calls lost the
thought signatures it issued.

Example::

    async with FakeLLMServer(mode="gemini") as server:
        server.script(Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})]), Reply(text="Shipped."))
        settings = LLMSettings(base_url=server.base_url, model="fake")

It runs in the same process as the code under test (and the benchmark counts its CPU time),
so the frames are built from pre-encoded pieces rather than by serialising a dict per token.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDict

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

DEFAULT_TEXT = "Hello from the fake model. How can I help?"


# The steps are frozen dataclasses but not kw_only: ``Fail(429)``, ``Hang(5)`` and ``Cut(2)`` read
# better in a test script than their keyword forms.
@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer.

    Attributes:
        text: the answer text, streamed in several content deltas.
        tool_calls: ``(name, arguments)`` pairs, streamed after the text.
        usage: ``(prompt_tokens, completion_tokens)``; estimated when None.
        reasoning_tokens: thinking tokens: in Gemini mode counted only in ``total_tokens``, in
            OpenAI mode in ``completion_tokens`` and ``completion_tokens_details``.
        chunk_size: characters per content delta; None splits the text into words.
        finish_reason: the finish reason to send instead of the usual one (e.g. ``length``).
    """

    text: str = ""
    tool_calls: Sequence[tuple[str, Mapping[str, Any]]] = ()
    usage: tuple[int, int] | None = None
    reasoning_tokens: int = 0
    chunk_size: int | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    """An error answer.

    Attributes:
        status: the HTTP status.
        body: a JSON-ready object, or a str sent as it is (non-JSON); None makes a standard error object.
        retry_after: value of a ``Retry-After`` header.
        array_wrapped: wrap the body in a JSON array, as Gemini does.
        headers: more response headers (``x-should-retry``, ``retry-after-ms``...).
    """

    status: int
    body: object = None
    retry_after: float | str | None = None
    array_wrapped: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hang:
    """Accept the request and send nothing for ``seconds`` (or until the server closes)."""

    seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class Cut:
    """Stream ``after_chunks`` content chunks of ``text``, then drop the connection (no finish_reason, no [DONE])."""

    after_chunks: int
    text: str = "This answer will be cut short before it ends."


@dataclass(frozen=True, slots=True)
class StreamError:
    """Answer 200, stream ``text`` (if any), then send ``data: {"error": {...}}`` with ``message`` and ``code``."""

    message: str
    text: str = ""
    code: int = 500


@dataclass(frozen=True, slots=True)
class Chunks:
    """Answer 200 and replay a recorded stream: each item is sent as one SSE event, then ``data: [DONE]``.

    A dict is sent as ``data: <its JSON>`` (a ``chat.completion.chunk``, an ``{"error": ...}`` chunk...);
    a str is sent as the raw event text (``": OPENROUTER PROCESSING"``, ``"event: error\ndata: ..."``).
    Used to replay the shapes real providers stream (DeepSeek's ``reasoning_content``, OpenRouter's
    ``reasoning_details``, empty ``choices``).
    """

    items: Sequence[Mapping[str, Any] | str]
    done: bool = True


Step = Reply | Fail | Hang | Cut | StreamError | Chunks


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordedRequest:
    """A request the fake received.

    Attributes:
        path: the URL path.
        headers: the request headers (case-insensitive).
        body: the JSON body.
    """

    path: str
    headers: Mapping[str, str]
    body: dict[str, Any]


def tool_then_text(tool_name: str, args: Mapping[str, Any], text: str) -> Callable[[dict[str, Any]], Step]:
    """A responder that calls a tool after a customer message and answers with text after the tool result.

    Args:
        tool_name: the tool to call.
        args: its arguments.
        text: the answer once the tool result is in.

    Returns:
        A function to assign to ``FakeLLMServer.responder``.
    """
    call = Reply(tool_calls=((tool_name, args),))
    answer = Reply(text=text)

    def respond(body: dict[str, Any]) -> Step:
        messages = body.get("messages") or [{}]
        return call if messages[-1].get("role") == "user" else answer

    return respond


@functools.lru_cache(maxsize=512)
def _pieces(text: str, chunk_size: int | None) -> tuple[bytes, ...]:
    """The text's content deltas, each already JSON-encoded."""
    if chunk_size:
        parts = [text[i : i + chunk_size] for i in range(0, len(text), chunk_size)]
    else:
        parts = re.findall(r"\s*\S+|\s+$", text)
    return tuple(json.dumps(p, ensure_ascii=False).encode() for p in parts if p)


def _split_arguments(arguments: str) -> list[str]:
    step = max(1, len(arguments) // 3)
    return [arguments[i : i + step] for i in range(0, len(arguments), step)] or [""]


def _frame(head: bytes, delta: bytes, *, finish: bytes = b"null", usage: bytes = b"null") -> bytes:
    return b'%s"choices":[{"index":0,"delta":%s,"finish_reason":%s}],"usage":%s}\n\n' % (head, delta, finish, usage)


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"


class FakeLLMServer:
    """An OpenAI-compatible chat-completions endpoint for tests and benchmarks.

    Args:
        mode: ``openai`` or ``gemini`` wire form.
        token_delay: seconds between content chunks (benchmarks use 0.02).
        api_key: when set, requests without ``Authorization: Bearer <api_key>`` get a 401.
        record: keep every request in ``requests`` (turn off for long benchmarks).

    Attributes:
        requests: the requests received, in order.
        request_count: how many requests arrived (also with ``record=False``).
        responder: called with the request body when no scripted step is left.
    """

    def __init__(
        self,
        mode: Literal["openai", "gemini"] = "openai",
        token_delay: float = 0.0,
        *,
        api_key: str | None = None,
        record: bool = True,
    ) -> None:
        if mode not in ("openai", "gemini"):
            raise ValueError(f"FakeLLMServer mode {mode!r} is unknown; use 'openai' or 'gemini'")
        self.mode = mode
        self.token_delay = token_delay
        self.api_key = api_key
        self.record = record
        self.requests: list[RecordedRequest] = []
        self.responder: Callable[[dict[str, Any]], Step] | None = None
        self._steps: deque[Step] = deque()
        self._signatures: dict[str, str] = {}  # Gemini mode: call id -> the signature issued with it
        self._counter = 0
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._arrived = asyncio.Event()
        self._port = 0
        self.request_count = 0

    @property
    def base_url(self) -> str:
        """The base URL to configure as ``llm.base_url`` (``http://127.0.0.1:PORT/v1``)."""
        if not self._port:
            raise RuntimeError("FakeLLMServer.base_url is unknown before start(); await server.start() first")
        return f"http://127.0.0.1:{self._port}/v1"

    async def wait_for_requests(self, count: int) -> None:
        """Waits until ``count`` requests have arrived in total (e.g. before closing on a hanging one)."""
        while self.request_count < count:
            self._arrived.clear()
            await self._arrived.wait()

    def script(self, *steps: Step) -> None:
        """Queues responses; each request consumes the next one, in order."""
        self._steps.extend(steps)

    async def start(self) -> None:
        """Starts listening on a free port of 127.0.0.1."""
        # Real providers take requests of tens of MB (images in the conversation); aiohttp's default is 1 MB.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/chat/completions", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        """Stops the server; hanging requests end at once."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeLLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.request_count += 1
        self._arrived.set()
        try:
            body = json.loads(raw)
        except ValueError:
            return self._error(400, "the request body is not JSON", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error(400, "the request body needs a 'messages' array", "invalid_request_error")
        if self.record:
            self.requests.append(RecordedRequest(path=request.path, headers=CIMultiDict(request.headers), body=body))
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Incorrect API key provided.", "invalid_api_key")
        if self.mode == "gemini":
            problem = self._signature_problem(body["messages"])
            if problem:
                return self._error(400, problem, "INVALID_ARGUMENT", array=True)
        if self._steps:
            step = self._steps.popleft()
        elif self.responder is not None:
            step = self.responder(body)
        else:
            step = Reply(text=DEFAULT_TEXT)
        stream = body.get("stream") is True
        model = str(body.get("model") or "fake-model")
        if isinstance(step, Reply):
            if stream:
                return await self._stream_reply(request, step, model, len(raw))
            return self._json_reply(step, model, len(raw))
        if isinstance(step, Fail):
            return self._fail(step)
        if isinstance(step, Hang):
            try:
                await asyncio.wait_for(self._closing.wait(), step.seconds)
            except TimeoutError:
                pass
            return self._error(503, "the fake model hung and gave up", "server_error")
        if isinstance(step, Cut):
            return await self._cut(request, step, model)
        if isinstance(step, Chunks):
            frames = [
                b"data: %s\n\n" % _json(i) if isinstance(i, Mapping) else i.encode() + b"\n\n" for i in step.items
            ]
            return await self._send(request, frames + ([_DONE] if step.done else []))
        return await self._stream_error(request, step, model)

    # -- answers --------------------------------------------------------------------------------

    def _next_id(self) -> int:
        self._counter += 1
        return self._counter

    def _chunk(self, ident: int, model: str) -> bytes:
        return b'data: {"id":"chatcmpl-%d","object":"chat.completion.chunk","created":1700000000,"model":%s,' % (
            ident,
            json.dumps(model).encode(),
        )

    def _usage_json(self, step: Reply, prompt: int, completion: int) -> bytes:
        if step.usage is not None:
            completion = step.usage[1]
        reasoning = step.reasoning_tokens
        if self.mode == "gemini":
            # Gemini leaves thinking out of completion_tokens but counts it in the total.
            return b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (
                prompt,
                completion,
                prompt + completion + reasoning,
            )
        completion += reasoning
        details = b',"completion_tokens_details":{"reasoning_tokens":%d}' % reasoning if reasoning else b""
        return b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d%s}' % (
            prompt,
            completion,
            prompt + completion,
            details,
        )

    def _tool_calls(self, step: Reply) -> list[dict[str, Any]]:
        calls = []
        for position, (name, args) in enumerate(step.tool_calls):
            n = self._next_id()
            call: dict[str, Any] = {
                "id": f"function-call-{n}" if self.mode == "gemini" else f"call_{n}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args, separators=(",", ":"))},
            }
            if self.mode == "gemini" and position == 0:
                # Like Gemini 3: only the first of parallel calls carries the signature.
                signature = base64.b64encode(b"fake-thought-signature-%d" % n).decode()
                call["extra_content"] = {"google": {"thought_signature": signature}}
                self._signatures[call["id"]] = signature
            calls.append(call)
        return calls

    async def _stream_reply(
        self, request: web.Request, step: Reply, model: str, request_bytes: int
    ) -> web.StreamResponse:
        head = self._chunk(self._next_id(), model)
        pieces = _pieces(step.text, step.chunk_size) if step.text else ()
        gemini = self.mode == "gemini"
        prompt = max(1, request_bytes // 4) if step.usage is None else step.usage[0]
        frames: list[bytes] = []
        for k, piece in enumerate(pieces):
            role_field = b"" if k else b'"role":"assistant",'
            # Gemini repeats the cumulative usage in every chunk; OpenAI sends null until the end.
            usage = b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (prompt, k + 1, prompt + k + 1)
            frames.append(_frame(head, b'{%s"content":%s}' % (role_field, piece), usage=usage if gemini else b"null"))
        calls = self._tool_calls(step)
        final_usage = self._usage_json(step, prompt, len(pieces) + 10 * len(calls))
        role: dict[str, str] = {} if pieces else {"role": "assistant"}  # only the first delta names the role
        if calls and gemini:
            frames.append(_frame(head, _json({**role, "tool_calls": calls}), usage=final_usage))  # whole, one delta
        for index, call in enumerate(() if gemini else calls):
            function = call["function"]
            first = {"index": index, "id": call["id"], "type": "function", "function": {**function, "arguments": ""}}
            frames.append(_frame(head, _json({**(role if index == 0 else {}), "tool_calls": [first]})))
            for part in _split_arguments(function["arguments"]):
                frames.append(_frame(head, _json({"tool_calls": [{"index": index, "function": {"arguments": part}}]})))
        finish = b'"%s"' % (step.finish_reason or ("tool_calls" if calls and not gemini else "stop")).encode()
        if gemini:
            frames.append(_frame(head, b"{}", finish=finish, usage=final_usage))
        else:
            frames.append(_frame(head, b"{}", finish=finish))
            frames.append(b'%s"choices":[],"usage":%s}\n\n' % (head, final_usage))
        frames.append(_DONE)
        return await self._send(request, frames)

    async def _send(self, request: web.Request, frames: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        if self.token_delay <= 0:
            await response.write(b"".join(frames))
        else:
            for k, frame in enumerate(frames):
                if k:
                    await asyncio.sleep(self.token_delay)
                await response.write(frame)
        await response.write_eof()
        return response

    def _json_reply(self, step: Reply, model: str, request_bytes: int) -> web.Response:
        calls = self._tool_calls(step)
        pieces = _pieces(step.text, step.chunk_size) if step.text else ()
        prompt = max(1, request_bytes // 4) if step.usage is None else step.usage[0]
        usage = self._usage_json(step, prompt, len(pieces) + 10 * len(calls))
        message: dict[str, Any] = {"role": "assistant", "content": step.text or None}
        if calls:
            message["tool_calls"] = calls
        finish = step.finish_reason or ("tool_calls" if calls else "stop")
        answer = {
            "id": f"chatcmpl-{self._next_id()}",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": json.loads(usage),
        }
        return web.json_response(answer)

    def _error(self, status: int, message: str, kind: str, *, array: bool = False) -> web.Response:
        if self.mode == "gemini" or array:
            error: object = {"error": {"code": status, "message": message, "status": kind}}
            if array:
                error = [error]
        else:
            error = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
        return web.json_response(error, status=status)

    def _fail(self, step: Fail) -> web.Response:
        headers = dict(step.headers)
        if step.retry_after is not None:
            headers["Retry-After"] = str(step.retry_after)
        if isinstance(step.body, str):
            return web.Response(status=step.status, text=step.body, headers=headers)
        body = step.body
        if body is None:
            body = {
                "error": {
                    "message": f"fake failure {step.status}",
                    "type": "server_error" if step.status >= 500 else "invalid_request_error",
                    "code": step.status,
                }
            }
        return web.json_response([body] if step.array_wrapped else body, status=step.status, headers=headers)

    async def _cut(self, request: web.Request, step: Cut, model: str) -> web.StreamResponse:
        head = self._chunk(self._next_id(), model)
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        for piece in _pieces(step.text, None)[: step.after_chunks]:
            await response.write(_frame(head, b'{"content":%s}' % piece))
        # Drop the connection mid-body: the client sees an unfinished chunked response.
        if request.transport is not None:
            request.transport.close()
        return response

    async def _stream_error(self, request: web.Request, step: StreamError, model: str) -> web.StreamResponse:
        head = self._chunk(self._next_id(), model)
        frames = [_frame(head, b'{"content":%s}' % piece) for piece in (_pieces(step.text, None) if step.text else ())]
        error = {"error": {"message": step.message, "type": "server_error", "code": step.code}}
        frames.append(b"data: %s\n\n" % json.dumps(error).encode())
        return await self._send(request, frames)

    def _signature_problem(self, messages: list[Any]) -> str | None:
        if not self._signatures:
            return None
        for message in messages:
            if not isinstance(message, dict) or message.get("role") != "assistant":
                continue
            for call in message.get("tool_calls") or ():
                expected = self._signatures.get(str(call.get("id"))) if isinstance(call, dict) else None
                if expected is None:
                    continue
                google = (call.get("extra_content") or {}).get("google") or {}
                signature = google.get("thought_signature")
                if signature is None:
                    return (
                        f"Function call is missing a thought_signature in functionCall parts. This is required "
                        f"for tools to work correctly. Additional data, function call `{call.get('id')}`"
                    )
                if signature != expected:
                    return "Corrupted thought signature."
        return None
