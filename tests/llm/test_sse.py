"""The SSE decoder, alone and through the client against hand-written servers (byte-level cases)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from supportbot.errors import LLMProtocolError
from supportbot.llm.base import TextChunk
from supportbot.llm.sse import SSEDecoder, SSEEvent


def feed_all(pieces: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    events.extend(decoder.close())
    return events


STREAM = (
    ": keep-alive\r\n"
    "event: message\r\n"
    "id: 7\r\n"
    "retry: 1000\r\n"
    'data: {"a": 1}\r\n'
    "\r\n"
    "data: first line\n"
    "data:second line\n"
    "\n"
    "data: caf\u00e9 \u2028 \U0001f600\r"
    "\r"
    "event: error\n"
    'data: {"error": {"message": "boom"}}\n'
    "\n"
    "data: [DONE]\n\n"
).encode()
EXPECTED = [
    SSEEvent("message", b'{"a": 1}'),
    SSEEvent("message", b"first line\nsecond line"),
    SSEEvent("message", "caf\u00e9 \u2028 \U0001f600".encode()),
    SSEEvent("error", b'{"error": {"message": "boom"}}'),
    SSEEvent("message", b"[DONE]"),
]


def test_whole_stream() -> None:
    assert feed_all([STREAM]) == EXPECTED


def test_every_split_point() -> None:
    # Network chunks end anywhere: inside "\r\n", inside "data:", inside a UTF-8 character.
    for cut in range(1, len(STREAM)):
        assert feed_all([STREAM[:cut], STREAM[cut:]]) == EXPECTED, f"split at byte {cut}"


def test_byte_by_byte() -> None:
    assert feed_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


# Only "\n" line endings: whole reads of this take the decoder's fast path, cut-up ones do not.
LF_STREAM = (
    'data: {"a": 1}\n\n'
    "\n\n"
    ": keep-alive\n\n"
    "data:no space\n\n"
    "data: first line\ndata:second line\n\n"
    "event: error\n\n"
    "data\n\n"
    "event: error\ndata: boom\n\n"
    "data: caf\u00e9\n\n\n"
    "id: 7\ndata: after id\n\n"
    "data: [DONE]\n\n"
).encode()
LF_EXPECTED = [
    SSEEvent("message", b'{"a": 1}'),
    SSEEvent("message", b"no space"),
    SSEEvent("message", b"first line\nsecond line"),
    SSEEvent("error", b""),
    SSEEvent("message", b""),
    SSEEvent("error", b"boom"),
    SSEEvent("message", "caf\u00e9".encode()),
    SSEEvent("message", b"after id"),
    SSEEvent("message", b"[DONE]"),
]


def test_whole_events_read_at_once_decode_as_when_cut_up() -> None:
    assert feed_all([LF_STREAM]) == LF_EXPECTED
    assert feed_all([LF_STREAM[i : i + 1] for i in range(len(LF_STREAM))]) == LF_EXPECTED
    for cut in range(1, len(LF_STREAM)):
        assert feed_all([LF_STREAM[:cut], LF_STREAM[cut:]]) == LF_EXPECTED, f"split at byte {cut}"
    events = feed_all([LF_STREAM])
    assert all(type(e) is SSEEvent for e in events) and events[0].event == "message" and events[0].data == b'{"a": 1}'


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_line_endings(ending: bytes) -> None:
    stream = b"data: x" + ending + ending + b"data: y" + ending + ending
    assert [e.data for e in feed_all([stream])] == [b"x", b"y"]


def test_only_blank_lines_dispatch() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n") == []
    assert decoder.feed(b"\n") == [SSEEvent("message", b"x")]


def test_comment_only_and_empty_events_are_not_dispatched() -> None:
    assert feed_all([b": ping\n\n\n\nevent: ignored\n\n"]) == []


def test_pending_event_is_dispatched_at_eof() -> None:
    assert feed_all([b"data: [DONE]"]) == [SSEEvent("message", b"[DONE]")]


def test_field_without_space_and_without_colon() -> None:
    assert feed_all([b"data:x\ndata\nevent:error\n\n"]) == [SSEEvent("error", b"x\n")]


# -- through the client, over real HTTP -----------------------------------------------------------


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return json.dumps(body, ensure_ascii=False).encode()


async def start_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


async def test_crlf_comments_and_multiline_data(raw_server: Any, make_llm: Any, collect: Any, request_for: Any) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        # One JSON object spread over several data: lines is valid SSE and valid JSON once joined.
        await response.write(b": OPENROUTER PROCESSING\r\n\r\n")
        await response.write(b'data: {"choices": [{"index": 0,\r\ndata:  "delta": {"content": "Hi"}}]}\r\n\r\n')
        await response.write(b"event: message\r\nid: 1\r\ndata: " + chunk(" there", "stop") + b"\r\n\r\n")
        await response.write(b"data: [DONE]\r\n\r\n")
        await response.write_eof()
        return response

    llm = make_llm(await raw_server.start(handler))
    texts, completion = await collect(llm, request_for())
    assert "".join(texts) == "Hi there"
    assert completion.message.content == "Hi there"
    assert completion.finish_reason == "stop"


async def test_line_and_utf8_character_split_across_network_chunks(
    raw_server: Any, make_llm: Any, request_for: Any
) -> None:
    first_text_seen = asyncio.Event()
    second = b"data: " + chunk("caf\u00e9 \U0001f600", "stop") + b"\n\ndata: [DONE]\n\n"
    cut = second.index("\U0001f600".encode()) + 2  # inside the 4-byte emoji, mid-line

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b"data: " + chunk("Bonjour") + b"\n\n" + second[:cut])
        # The client has surely read the first network chunk once it handed on "Bonjour".
        await first_text_seen.wait()
        await response.write(second[cut:])
        await response.write_eof()
        return response

    llm = make_llm(await raw_server.start(handler))
    texts = []
    async for event in llm.stream(request_for()):
        if isinstance(event, TextChunk):
            texts.append(event.text)
            first_text_seen.set()
        else:
            completion = event
    assert texts == ["Bonjour", "caf\u00e9 \U0001f600"]
    assert completion.message.content == "Bonjourcaf\u00e9 \U0001f600"


async def test_eof_after_finish_reason_without_done_is_complete(
    raw_server: Any, make_llm: Any, collect: Any, request_for: Any
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b"data: " + chunk("ok", "stop"))  # no blank line, no [DONE]
        await response.write_eof()
        return response

    llm = make_llm(await raw_server.start(handler))
    texts, completion = await collect(llm, request_for())
    assert texts == ["ok"]
    assert completion.finish_reason == "stop"


async def test_eof_without_finish_reason_is_a_protocol_error(raw_server: Any, make_llm: Any, request_for: Any) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(b"data: " + chunk("half an ans") + b"\n\n")
        await response.write_eof()
        return response

    llm = make_llm(await raw_server.start(handler))
    with pytest.raises(LLMProtocolError, match="stream ended before the model finished"):
        async for _ in llm.stream(request_for()):
            pass


async def test_invalid_json_is_a_protocol_error(raw_server: Any, make_llm: Any, request_for: Any) -> None:
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        response = await start_stream(request)
        await response.write(b"data: {not json\n\n")
        await response.write_eof()
        return response

    llm = make_llm(await raw_server.start(handler))
    with pytest.raises(LLMProtocolError, match="not JSON"):
        async for _ in llm.stream(request_for()):
            pass
    assert calls == 1  # a broken protocol does not get better by asking again
