"""The fake provider itself, read with a bare aiohttp client: it must speak the real wire formats."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from supportbot.testing import Chunks, Cut, Fail, FakeLLMServer, Hang, Reply, StreamError, tool_then_text

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any] = BODY, **kw: Any) -> Any:
    async with session.post(url + "/chat/completions", json=body, **kw) as response:
        return response.status, response.headers, await response.read()


def events(raw: bytes) -> list[Any]:
    assert raw.endswith(b"data: [DONE]\n\n")
    frames = raw.split(b"\n\n")
    assert frames[-1] == b"" and frames[-2] == b"data: [DONE]"
    assert all(f.startswith(b"data: ") for f in frames[:-1])
    return [json.loads(f[6:]) for f in frames[:-2]]


async def test_default_text_stream(session: aiohttp.ClientSession) -> None:
    async with FakeLLMServer() as server:
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        status, headers, raw = await post(session, server.base_url)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    chunks = events(raw)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello from the fake model. How can I help?"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in chunks)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] > 0  # the usage chunk


async def test_openai_tool_call_fragments(session: aiohttp.ClientSession) -> None:
    async with FakeLLMServer() as server:
        server.script(Reply(tool_calls=[("lookup_order", {"order_id": "A1001"}), ("noop", {})]))
        _, _, raw = await post(session, server.base_url)
    chunks = [c for c in events(raw) if c["choices"]]
    entries = [e for c in chunks for e in c["choices"][0]["delta"].get("tool_calls", [])]
    first = [e for e in entries if "id" in e]
    assert [(e["index"], e["function"]["name"], e["function"]["arguments"]) for e in first] == [
        (0, "lookup_order", ""),
        (1, "noop", ""),
    ]
    arguments = "".join(e["function"]["arguments"] for e in entries if e["index"] == 0)
    assert json.loads(arguments) == {"order_id": "A1001"}
    assert len([e for e in entries if e["index"] == 0]) > 2  # arguments come in several pieces
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_gemini_form(session: aiohttp.ClientSession) -> None:
    async with FakeLLMServer(mode="gemini") as server:
        server.script(Reply("Checking.", tool_calls=[("lookup_order", {"order_id": "A1"}), ("lookup_order", {})]))
        _, _, raw = await post(session, server.base_url)
    chunks = events(raw)
    assert all(c["usage"]["total_tokens"] > 0 for c in chunks)  # cumulative usage in every chunk
    with_calls = [c for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert len(with_calls) == 1  # all calls whole, in one delta
    first, second = with_calls[0]["choices"][0]["delta"]["tool_calls"]
    assert "index" not in first and "index" not in second
    assert json.loads(first["function"]["arguments"]) == {"order_id": "A1"}
    assert first["extra_content"]["google"]["thought_signature"]
    assert "extra_content" not in second  # only the first of parallel calls is signed
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_gemini_checks_signatures(session: aiohttp.ClientSession) -> None:
    async with FakeLLMServer(mode="gemini") as server:
        server.script(Reply(tool_calls=[("lookup_order", {"order_id": "A1"})]), Reply("ok"))
        _, _, raw = await post(session, server.base_url)
        call = events(raw)[0]["choices"][0]["delta"]["tool_calls"][0]
        history = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "{}"},
        ]
        bare = {k: v for k, v in call.items() if k != "extra_content"}
        forged = {**call, "extra_content": {"google": {"thought_signature": "forged"}}}
        for tool_call, expected in ((bare, "missing a thought_signature"), (forged, "Corrupted thought signature")):
            messages = [history[0], {**history[1], "tool_calls": [tool_call]}, history[2]]
            status, _, body = await post(session, server.base_url, {**BODY, "messages": messages})
            assert status == 400
            error = json.loads(body)
            assert isinstance(error, list) and error[0]["error"]["status"] == "INVALID_ARGUMENT"
            assert expected in error[0]["error"]["message"]
        status, _, raw = await post(session, server.base_url, {**BODY, "messages": history})
        assert status == 200 and events(raw)


async def test_script_order_responder_and_recording(session: aiohttp.ClientSession) -> None:
    async with FakeLLMServer() as server:
        server.script(Fail(503, retry_after=2, headers={"x-should-retry": "true"}), Reply("scripted"))
        server.responder = tool_then_text("lookup_order", {"order_id": "A1"}, "It shipped.")
        status, headers, body = await post(session, server.base_url, headers={"Authorization": "Bearer k"})
        assert status == 503 and headers["Retry-After"] == "2" and headers["x-should-retry"] == "true"
        assert json.loads(body)["error"]["message"]
        _, _, raw = await post(session, server.base_url)
        assert "scripted" in raw.decode()
        _, _, raw = await post(session, server.base_url)
        assert '"name": "lookup_order"' in raw.decode()
        after_tool = {**BODY, "messages": [*BODY["messages"], {"role": "tool", "tool_call_id": "x", "content": "{}"}]}
        _, _, raw = await post(session, server.base_url, after_tool)
        assert "shipped" in raw.decode()
    assert len(server.requests) == 4
    assert server.requests[0].headers["authorization"] == "Bearer k"
    assert server.requests[0].path == "/v1/chat/completions"
    assert server.requests[3].body == after_tool


async def test_non_streaming(session: aiohttp.ClientSession) -> None:
    async with FakeLLMServer(mode="gemini") as server:
        server.script(Reply(tool_calls=[("f", {"a": 1})]))
        url = server.base_url.removesuffix("/v1")  # also served without the /v1 prefix
        status, _, body = await post(session, url, {**BODY, "stream": False})
    answer = json.loads(body)
    assert status == 200 and answer["object"] == "chat.completion"
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["extra_content"]["google"]["thought_signature"]
    assert answer["usage"]["prompt_tokens"] > 0


async def test_api_key_is_checked(session: aiohttp.ClientSession) -> None:
    async with FakeLLMServer(api_key="sk-right") as server:
        status, _, body = await post(session, server.base_url, headers={"Authorization": "Bearer sk-wrong"})
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        status, _, _ = await post(session, server.base_url, headers={"Authorization": "Bearer sk-right"})
        assert status == 200


async def test_fail_bodies(session: aiohttp.ClientSession) -> None:
    async with FakeLLMServer() as server:
        server.script(
            Fail(500, body="upstream exploded"), Fail(400, body={"error": {"message": "x"}}, array_wrapped=True)
        )
        assert (await post(session, server.base_url))[2] == b"upstream exploded"
        assert json.loads((await post(session, server.base_url))[2]) == [{"error": {"message": "x"}}]


async def test_stream_error_and_cut(session: aiohttp.ClientSession) -> None:
    async with FakeLLMServer() as server:
        server.script(StreamError("overloaded", text="Hi"), Cut(after_chunks=1))
        _, _, raw = await post(session, server.base_url)
        assert raw.startswith(b"data: ") and raw.endswith(
            b'data: {"error": {"message": "overloaded", "type": "server_error", "code": 500}}\n\n'
        )
        with pytest.raises(aiohttp.ClientPayloadError):
            await post(session, server.base_url)


async def test_close_ends_a_hanging_request(session: aiohttp.ClientSession) -> None:
    server = FakeLLMServer()
    await server.start()
    server.script(Hang())
    request = asyncio.create_task(post(session, server.base_url))
    await server.wait_for_requests(1)
    async with asyncio.timeout(5):
        await server.close()
    status, _, _ = await request  # the handler gave up at once rather than after an hour
    assert status == 503


async def test_token_delay_streams_chunk_by_chunk(session: aiohttp.ClientSession) -> None:
    async with FakeLLMServer(token_delay=0.001) as server:
        server.script(Reply("a b c d"))
        async with session.post(server.base_url + "/chat/completions", json=BODY) as response:
            pieces = [chunk async for chunk in response.content.iter_any()]
    assert len(pieces) > 1


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode 'claude' is unknown"):
        FakeLLMServer(mode="claude")  # type: ignore[arg-type]


async def test_chunks_replay_a_recorded_stream_verbatim(session: aiohttp.ClientSession) -> None:
    recorded = {"id": "gen-1", "choices": [{"index": 0, "delta": {"reasoning_content": "hm"}, "finish_reason": None}]}
    async with FakeLLMServer() as server:
        server.script(Chunks([": OPENROUTER PROCESSING", recorded]), Chunks([recorded], done=False))
        _, _, raw = await post(session, server.base_url)
        _, _, unfinished = await post(session, server.base_url)
    assert raw == b": OPENROUTER PROCESSING\n\ndata: " + json.dumps(recorded).encode() + b"\n\ndata: [DONE]\n\n"
    assert unfinished == b"data: " + json.dumps(recorded).encode() + b"\n\n"
