"""The chat-completions client against fake providers over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from supportbot.errors import LLMConnectionError, LLMHTTPError, LLMProtocolError, LLMTimeout
from supportbot.llm.base import LLMRequest, TextChunk
from supportbot.llm.client import OpenAICompatibleLLM, _encode_body, _Fragments, message_to_dict, request_body
from supportbot.messages import ChatMessage, ImagePart, ToolCall
from supportbot.testing import Cut, Fail, FakeLLMServer, Hang, Reply, StreamError

SIGNED_EXTRA = {"extra_content": {"google": {"thought_signature": "CrICAd+/opaque=="}}}


async def drain(llm: OpenAICompatibleLLM, request: LLMRequest) -> list[Any]:
    return [event async for event in llm.stream(request)]


# -- requests ---------------------------------------------------------------------------------------


async def test_text_stream(fake: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any) -> None:
    fake.script(Reply("Your order A123 has shipped.", usage=(112, 7)))
    texts, completion = await collect(make_llm(fake.base_url), request_for())
    assert "".join(texts) == "Your order A123 has shipped."
    assert completion.message == ChatMessage(role="assistant", content="Your order A123 has shipped.")
    assert completion.finish_reason == "stop"
    assert completion.usage.input_tokens == 112 and completion.usage.output_tokens == 7
    assert completion.model == "fake-model"


async def test_text_arriving_over_time_streams_piece_by_piece(make_llm: Any, collect: Any, request_for: Any) -> None:
    async with FakeLLMServer(token_delay=0.005) as slow:
        slow.script(Reply("one two three four"))
        texts, completion = await collect(make_llm(slow.base_url), request_for())
    assert len(texts) > 1 and "".join(texts) == "one two three four" == completion.message.content


async def test_events_of_one_network_read_come_out_as_one_chunk(
    fake: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any
) -> None:
    fake.script(Reply(" ".join(["word"] * 50)))  # token_delay 0: the fake writes the whole stream at once
    texts, _ = await collect(make_llm(fake.base_url), request_for())
    assert len(texts) < 10


async def test_request_body_and_headers(fake: FakeLLMServer, make_llm: Any, request_for: Any) -> None:
    llm = make_llm(fake.base_url + "/", api_key="sk-test", extra_headers={"X-Team": "support"})
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    await drain(llm, request_for(temperature=0.3, max_tokens=800, tools=[tool], reasoning_effort="low", json_mode=True))
    await drain(llm, request_for())
    first, second = fake.requests
    assert first.path == "/v1/chat/completions"  # a trailing "/" in base_url is not doubled
    assert first.headers["Authorization"] == "Bearer sk-test"
    assert first.headers["X-Team"] == "support"
    assert first.body == {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Where is my order?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.3,
        "max_tokens": 800,
        "tools": [tool],
        "reasoning_effort": "low",
        "response_format": {"type": "json_object"},
    }
    assert set(second.body) == {"model", "messages", "stream", "stream_options"}  # None fields and no tools: left out


@pytest.mark.parametrize("stream", [True, False])
def test_encoded_body_is_request_body(stream: bool) -> None:
    # The encoder reuses the text of the system prompt and the tools; what it sends must not change.
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    system = ChatMessage(role="system", content="Be kind. Ünïcode too.")
    user = ChatMessage(role="user", content="Where is my order?")
    call = ChatMessage(role="assistant", tool_calls=(ToolCall(id="c1", name="f", arguments="{}"),))
    fragments = _Fragments()
    requests = [
        LLMRequest(messages=[system, user], tools=[tool], model="m", temperature=0.3, json_mode=True),
        LLMRequest(messages=[system, user, call], tools=[tool], model="m", reasoning_effort="low"),
        LLMRequest(messages=[system], model="m", max_tokens=5),
        LLMRequest(messages=[user], model="m", top_p=0.9),
        LLMRequest(messages=[], model="m"),
        LLMRequest(messages=[ChatMessage(role="system", content="Another prompt."), user], tools=[tool], model="m"),
    ]
    for _ in range(2):  # the second time from the kept text
        for request in requests:
            assert json.loads(_encode_body(request, stream, fragments)) == request_body(request, stream=stream)


async def test_no_authorization_header_without_key(fake: FakeLLMServer, make_llm: Any, request_for: Any) -> None:
    await drain(make_llm(fake.base_url), request_for())
    assert "Authorization" not in fake.requests[0].headers


def test_message_serialisation() -> None:
    call = ToolCall(id="c1", name="lookup_order", arguments='{"order_id":"A1"}', extra=SIGNED_EXTRA)
    plain = ToolCall(id="c2", name="lookup_order", arguments="{}")
    assert message_to_dict(ChatMessage(role="assistant", tool_calls=(call, plain), extra={"x": 1})) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "lookup_order", "arguments": '{"order_id":"A1"}'},
                **SIGNED_EXTRA,
            },
            {"id": "c2", "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}},
        ],
        "x": 1,
    }
    assert message_to_dict(ChatMessage(role="assistant", content="Hi", extra=SIGNED_EXTRA)) == {
        "role": "assistant",
        "content": "Hi",
        **SIGNED_EXTRA,
    }
    assert message_to_dict(ChatMessage(role="tool", tool_call_id="c1", name="lookup_order", content="{}")) == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": "{}",
        "name": "lookup_order",
    }
    assert message_to_dict(ChatMessage(role="system", content="Be kind.")) == {"role": "system", "content": "Be kind."}


async def test_image_parts(fake: FakeLLMServer, make_llm: Any) -> None:
    message = ChatMessage(
        role="user",
        content="Is this box damaged?",
        images=(
            ImagePart(url="data:image/png;base64,iVBORw0KGgo="),
            ImagePart(url="https://x.example/a.jpg", detail="low"),
        ),
    )
    await drain(make_llm(fake.base_url), LLMRequest(messages=[message], model="fake-model"))
    assert fake.requests[0].body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Is this box damaged?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}},
                {"type": "image_url", "image_url": {"url": "https://x.example/a.jpg", "detail": "low"}},
            ],
        }
    ]


# -- tool calls -------------------------------------------------------------------------------------


async def test_openai_parallel_tool_calls(fake: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any) -> None:
    fake.script(Reply(tool_calls=[("lookup_order", {"order_id": "A1"}), ("lookup_order", {"order_id": "A2"})]))
    texts, completion = await collect(make_llm(fake.base_url), request_for())
    assert texts == []
    calls = completion.message.tool_calls
    assert [(c.name, c.arguments) for c in calls] == [
        ("lookup_order", '{"order_id":"A1"}'),
        ("lookup_order", '{"order_id":"A2"}'),
    ]
    assert len({c.id for c in calls}) == 2
    assert completion.finish_reason == "tool_calls"
    assert completion.message.content is None


async def test_gemini_signature_round_trip(gemini: FakeLLMServer, make_llm: Any, collect: Any) -> None:
    gemini.script(
        Reply(tool_calls=[("lookup_order", {"order_id": "A1"}), ("lookup_order", {"order_id": "A2"})]),
        Reply("Both have shipped."),
    )
    llm = make_llm(gemini.base_url)
    question = ChatMessage(role="user", content="Where are A1 and A2?")
    _, first = await collect(llm, LLMRequest(messages=[question], model="fake-model"))
    calls = first.message.tool_calls
    assert first.finish_reason == "tool_calls"  # the stream said "stop"
    signature = calls[0].extra["extra_content"]["google"]["thought_signature"]
    assert signature and calls[1].extra == {}
    results = [ChatMessage(role="tool", tool_call_id=c.id, content='{"status":"shipped"}') for c in calls]
    history = [question, first.message, *results]
    _, second = await collect(llm, LLMRequest(messages=history, model="fake-model"))
    assert second.message.content == "Both have shipped."
    sent = gemini.requests[1].body["messages"][1]
    assert sent["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": signature}}
    assert sent["content"] is None


async def test_gemini_refuses_a_lost_signature_and_it_is_not_retried(
    gemini: FakeLLMServer, make_llm: Any, collect: Any
) -> None:
    gemini.script(Reply(tool_calls=[("lookup_order", {"order_id": "A1"})]))
    llm = make_llm(gemini.base_url)
    question = ChatMessage(role="user", content="Where is A1?")
    _, first = await collect(llm, LLMRequest(messages=[question], model="fake-model"))
    call = first.message.tool_calls[0]
    stripped = ChatMessage(
        role="assistant", tool_calls=(ToolCall(id=call.id, name=call.name, arguments=call.arguments),)
    )
    result = ChatMessage(role="tool", tool_call_id=call.id, content="{}")
    with pytest.raises(LLMHTTPError, match="missing a thought_signature") as caught:
        await drain(llm, LLMRequest(messages=[question, stripped, result], model="fake-model"))
    assert caught.value.status == 400
    assert "report this bug" in str(caught.value)
    assert len(gemini.requests) == 2


async def test_gemini_usage_counts_thinking_as_output(
    gemini: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any
) -> None:
    gemini.script(Reply("Fine.", usage=(40, 2), reasoning_tokens=30))
    _, completion = await collect(make_llm(gemini.base_url), request_for())
    # Every chunk carried a cumulative usage; the last one wins and total - prompt is the output.
    assert completion.usage.input_tokens == 40
    assert completion.usage.output_tokens == 32


async def test_openai_reasoning_tokens(fake: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any) -> None:
    fake.script(Reply("Fine.", usage=(40, 2), reasoning_tokens=30))
    _, completion = await collect(make_llm(fake.base_url), request_for())
    assert (completion.usage.output_tokens, completion.usage.reasoning_tokens) == (32, 30)


# -- retries ----------------------------------------------------------------------------------------


async def test_429_retry_after_is_honoured(fake: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any) -> None:
    fake.script(Fail(429, retry_after=0), Fail(429, retry_after="0.001"), Reply("ok"))
    # The backoff alone would wait 30 s: finishing fast proves the header was used.
    llm = make_llm(fake.base_url, retries={"max_retries": 2, "backoff_initial_s": 30, "backoff_max_s": 30})
    async with asyncio.timeout(5):
        texts, _ = await collect(llm, request_for())
    assert texts == ["ok"]
    assert len(fake.requests) == 3


async def test_retry_after_ms_header(fake: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any) -> None:
    fake.script(Fail(503, headers={"retry-after-ms": "1"}), Reply("ok"))
    llm = make_llm(fake.base_url, retries={"max_retries": 1, "backoff_initial_s": 30, "backoff_max_s": 30})
    async with asyncio.timeout(5):
        await collect(llm, request_for())
    assert len(fake.requests) == 2


async def test_gemini_retry_delay_in_body(gemini: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any) -> None:
    error = {
        "error": {
            "code": 429,
            "message": "Resource exhausted",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0s"}],
        }
    }
    gemini.script(Fail(429, body=error, array_wrapped=True), Reply("ok"))
    llm = make_llm(gemini.base_url, retries={"max_retries": 1, "backoff_initial_s": 30, "backoff_max_s": 30})
    async with asyncio.timeout(5):
        await collect(llm, request_for())
    assert len(gemini.requests) == 2


async def test_500_retried_then_success(fake: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any) -> None:
    fake.script(Fail(500), Fail(502), Reply("recovered"))
    texts, _ = await collect(make_llm(fake.base_url), request_for())
    assert texts == ["recovered"]
    assert len(fake.requests) == 3


async def test_retries_exhausted(fake: FakeLLMServer, make_llm: Any, request_for: Any) -> None:
    fake.script(Fail(503), Fail(503), Fail(503), Reply("too late"))
    with pytest.raises(LLMHTTPError, match="gave up after 3 attempts") as caught:
        await drain(make_llm(fake.base_url), request_for())
    assert caught.value.status == 503
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    ("status", "hint"), [(400, "llm.model"), (401, "llm.api_key"), (403, "llm.api_key"), (404, "llm.base_url")]
)
async def test_client_errors_are_not_retried(
    fake: FakeLLMServer, make_llm: Any, request_for: Any, status: int, hint: str
) -> None:
    fake.script(Fail(status, body={"error": {"message": "nope", "type": "invalid_request_error"}}), Reply("never"))
    with pytest.raises(LLMHTTPError) as caught:
        await drain(make_llm(fake.base_url, api_key="sk-x"), request_for())
    assert caught.value.status == status
    assert not caught.value.retryable
    assert f"answered {status}" in str(caught.value) and "'nope'" in str(caught.value) and hint in str(caught.value)
    assert len(fake.requests) == 1


async def test_401_message(fake: FakeLLMServer, make_llm: Any, request_for: Any) -> None:
    fake.script(Fail(401, body={"error": {"message": "invalid api key sk-secret-123"}}))
    with pytest.raises(LLMHTTPError) as caught:
        await drain(make_llm(fake.base_url, api_key="sk-secret-123"), request_for())
    assert str(caught.value) == (
        f"LLM endpoint {fake.base_url}/chat/completions answered 401 Unauthorized: 'invalid api key ***'. "
        "Check llm.api_key / SUPPORTBOT_LLM_API_KEY."
    )


async def test_insufficient_quota_is_not_retried(fake: FakeLLMServer, make_llm: Any, request_for: Any) -> None:
    body = {
        "error": {
            "message": "You exceeded your current quota",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
        }
    }
    fake.script(Fail(429, body=body), Reply("never"))
    with pytest.raises(LLMHTTPError, match="no quota left"):
        await drain(make_llm(fake.base_url), request_for())
    assert len(fake.requests) == 1


async def test_x_should_retry_overrides(fake: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any) -> None:
    fake.script(
        Fail(400, headers={"x-should-retry": "true"}), Reply("ok"), Fail(500, headers={"x-should-retry": "false"})
    )
    llm = make_llm(fake.base_url)
    await collect(llm, request_for())
    with pytest.raises(LLMHTTPError):
        await drain(llm, request_for())
    assert len(fake.requests) == 3


async def test_array_wrapped_error_is_unwrapped(gemini: FakeLLMServer, make_llm: Any, request_for: Any) -> None:
    body = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
        }
    }
    gemini.script(Fail(400, body=body, array_wrapped=True))
    with pytest.raises(LLMHTTPError, match=re.escape("'API key not valid. Please pass a valid API key.'")) as caught:
        await drain(make_llm(gemini.base_url), request_for())
    assert caught.value.body == [body]


async def test_non_json_error_body(fake: FakeLLMServer, make_llm: Any, request_for: Any) -> None:
    fake.script(Fail(404, body="<html>" + "x" * 1000 + "</html>"))
    with pytest.raises(LLMHTTPError) as caught:
        await drain(make_llm(fake.base_url), request_for())
    assert "'<html>" + "x" * 294 + "'" in str(caught.value)


async def test_connection_refused_is_retried_then_raised(make_llm: Any, request_for: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(LLMConnectionError, match="could not be reached"):
        await drain(make_llm(f"http://127.0.0.1:{port}/v1"), request_for())


# -- failures inside the stream ---------------------------------------------------------------------


async def test_mid_stream_error_after_text(fake: FakeLLMServer, make_llm: Any, request_for: Any) -> None:
    async with FakeLLMServer(token_delay=0.01) as slow:
        slow.script(StreamError("The model is overloaded.", text="Let me", code=503), Reply("never"))
        seen: list[str] = []
        with pytest.raises(LLMHTTPError, match=re.escape("'The model is overloaded.'")) as caught:
            async for event in make_llm(slow.base_url).stream(request_for()):
                seen.append(event.text)
        assert "".join(seen) == "Let me"
        assert caught.value.status == 503
        assert len(slow.requests) == 1  # text had reached the caller: never retried


async def test_mid_stream_error_before_text_is_retried(
    fake: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any
) -> None:
    fake.script(StreamError("overloaded", code=503), Reply("ok"))
    texts, _ = await collect(make_llm(fake.base_url), request_for())
    assert texts == ["ok"]


async def test_error_event(raw_server: Any, make_llm: Any, request_for: Any) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: error\ndata: {"error": {"message": "quota", "code": 400}}\n\n')
        await response.write_eof()
        return response

    with pytest.raises(LLMHTTPError, match="'quota'"):
        await drain(make_llm(await raw_server.start(handler)), request_for())


async def test_cut_stream_after_text_is_not_retried(fake: FakeLLMServer, make_llm: Any, request_for: Any) -> None:
    fake.script(Cut(after_chunks=2), Reply("never"))
    seen: list[str] = []
    with pytest.raises(LLMProtocolError, match="stream ended before the model finished"):
        async for event in make_llm(fake.base_url).stream(request_for()):
            seen.append(event.text)
    assert "".join(seen) == "This answer"
    assert len(fake.requests) == 1


async def test_cut_stream_before_text_is_retried(
    fake: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any
) -> None:
    fake.script(Cut(after_chunks=0), Reply("ok"))
    texts, _ = await collect(make_llm(fake.base_url), request_for())
    assert texts == ["ok"]
    assert len(fake.requests) == 2


# -- timeouts ---------------------------------------------------------------------------------------


async def test_hang_is_a_first_byte_timeout(fake: FakeLLMServer, make_llm: Any, request_for: Any) -> None:
    fake.script(Hang(), Hang())
    llm = make_llm(
        fake.base_url, retries={"max_retries": 1, "backoff_initial_s": 0.001}, timeouts={"first_byte_s": 0.05}
    )
    async with asyncio.timeout(5):
        with pytest.raises(LLMTimeout, match=r"did not start answering within 0.05 s \(llm.timeouts.first_byte_s\)"):
            await drain(llm, request_for())
    assert len(fake.requests) == 2  # a timeout before any text is retried


async def test_stall_between_chunks(raw_server: Any, make_llm: Any, request_for: Any) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n')
        await raw_server.release.wait()
        return response

    llm = make_llm(await raw_server.start(handler), timeouts={"between_chunks_s": 0.05, "first_byte_s": 5})
    seen = []
    async with asyncio.timeout(5):  # fail, rather than hang, if the stall went unnoticed
        with pytest.raises(LLMTimeout, match=re.escape("stalled: no data arrived within 0.05 s")):
            async for event in llm.stream(request_for()):
                seen.append(event)
    assert seen == [TextChunk(text="Hel")]


async def test_slow_consumer_is_not_a_stall(make_llm: Any, request_for: Any) -> None:
    async with FakeLLMServer(token_delay=0.005) as fake:
        fake.script(Reply("one two three"))
        llm = make_llm(fake.base_url, timeouts={"between_chunks_s": 0.02})
        texts = []
        async for event in llm.stream(request_for()):
            if isinstance(event, TextChunk):
                texts.append(event.text)
                # The customer's channel is slow; time spent here is not the provider's stall.
                await asyncio.sleep(0.05)
    assert "".join(texts) == "one two three"


async def test_total_timeout(make_llm: Any, request_for: Any) -> None:
    async with FakeLLMServer(token_delay=0.02) as slow:
        slow.script(Reply(" ".join(["word"] * 200)))
        llm = make_llm(slow.base_url, timeouts={"total_s": 0.1, "between_chunks_s": 5, "first_byte_s": 5})
        with pytest.raises(LLMTimeout, match=re.escape("did not finish its answer within 0.1 s")):
            await drain(llm, request_for())
        assert len(slow.requests) == 1


# -- non-streaming ----------------------------------------------------------------------------------


async def test_complete_without_streaming(gemini: FakeLLMServer, make_llm: Any, request_for: Any) -> None:
    gemini.script(Reply("Here you go."), Reply(tool_calls=[("lookup_order", {"order_id": "A1"})]))
    llm = make_llm(gemini.base_url)
    completion = await llm.complete(request_for())
    assert completion.message.content == "Here you go."
    assert gemini.requests[0].body["stream"] is False and "stream_options" not in gemini.requests[0].body
    completion = await llm.complete(request_for())
    assert completion.finish_reason == "tool_calls"
    assert completion.message.tool_calls[0].extra["extra_content"]["google"]["thought_signature"]


async def test_stream_setting_off_yields_one_chunk(
    fake: FakeLLMServer, make_llm: Any, collect: Any, request_for: Any
) -> None:
    fake.script(Reply("Whole answer at once."), Fail(500), Reply("again"))
    llm = make_llm(fake.base_url, stream=False)
    texts, completion = await collect(llm, request_for())
    assert texts == ["Whole answer at once."]
    assert completion.message.content == "Whole answer at once."
    texts, _ = await collect(llm, request_for())  # complete() retries too
    assert texts == ["again"]


async def test_complete_timeout(fake: FakeLLMServer, make_llm: Any, request_for: Any) -> None:
    fake.script(Hang())
    llm = make_llm(fake.base_url, retries={"max_retries": 0}, timeouts={"total_s": 0.05})
    async with asyncio.timeout(5):
        with pytest.raises(LLMTimeout, match="did not finish its answer"):
            await llm.complete(request_for())


async def test_given_session_is_left_open(fake: FakeLLMServer, settings: Any, request_for: Any) -> None:
    async with aiohttp.ClientSession() as session:
        llm = OpenAICompatibleLLM(settings(fake.base_url), session=session)
        await drain(llm, request_for())
        await llm.aclose()
        assert not session.closed


async def test_connection_is_reused(raw_server: Any, make_llm: Any, collect: Any, request_for: Any) -> None:
    peers = []

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(
            b'data: {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}\n\n'
        )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    llm = make_llm(await raw_server.start(handler))
    for _ in range(3):
        await collect(llm, request_for())
    assert len(peers) == 3 and len(set(peers)) == 1  # after [DONE] the body is read to its end and the socket kept


async def test_steady_slow_stream_is_not_a_stall(make_llm: Any, collect: Any, request_for: Any) -> None:
    async with FakeLLMServer(token_delay=0.01) as slow:
        slow.script(Reply(" ".join(["word"] * 60)))  # ~0.6 s in all, a chunk every 10 ms
        llm = make_llm(slow.base_url, timeouts={"between_chunks_s": 0.25})
        texts, _ = await collect(llm, request_for())
    assert len(texts) == 60


async def test_server_ignoring_stream_true(raw_server: Any, make_llm: Any, collect: Any, request_for: Any) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        message = {"role": "assistant", "content": "All at once."}
        return web.json_response({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})

    texts, completion = await collect(make_llm(await raw_server.start(handler)), request_for())
    assert texts == ["All at once."]
    assert completion.finish_reason == "stop"


@pytest.mark.parametrize(
    "bad",
    [b'{"choices": "x"}', b'{"choices": [{"index": 0, "delta": "hi"}]}', b'{"choices": [5]}'],
)
async def test_a_chunk_of_the_wrong_shape_is_a_protocol_error(
    raw_server: Any, make_llm: Any, request_for: Any, bad: bytes
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: " + bad + b"\n\n")
        await response.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    with pytest.raises(LLMProtocolError):
        await drain(make_llm(await raw_server.start(handler), retries={"max_retries": 0}), request_for())


async def test_a_request_over_one_megabyte_is_sent_without_a_warning(
    fake: FakeLLMServer, make_llm: Any, collect: Any
) -> None:
    # An image in the conversation makes a body of several MB; aiohttp warns about large raw
    # bytes bodies (ResourceWarning, an error under the test settings).
    image = "data:image/png;base64," + "A" * 1_500_000
    message = ChatMessage(role="user", content="Is this box damaged?", images=(ImagePart(url=image),))
    fake.script(Reply("It looks fine."))
    _, completion = await collect(make_llm(fake.base_url), LLMRequest(messages=[message], model="fake-model"))
    assert completion.message.content == "It looks fine."
    assert fake.requests[0].body["messages"][0]["content"][1]["image_url"]["url"] == image
