"""Provider quirks seen in real recorded streams, replayed by the fake provider at the wire.

Each test streams what the provider streams and checks the NEXT request the fake receives (or the
error text): what the provider needs back must go back verbatim.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from supportbot.errors import LLMHTTPError
from supportbot.llm.base import LLMRequest
from supportbot.messages import ChatMessage
from supportbot.testing import Chunks, Fail, FakeLLMServer, Reply


def chunk(delta: dict[str, Any], finish: str | None = None, **top: Any) -> dict[str, Any]:
    return {"id": "gen-1", "object": "chat.completion.chunk", "created": 1790000000, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **top}  # fmt: skip


USAGE = {"id": "gen-1", "object": "chat.completion.chunk", "choices": [],
         "usage": {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50}}  # fmt: skip
QUESTION = ChatMessage(role="user", content="Where is A1001?")


async def round_trip(fake: FakeLLMServer, llm: Any, collect: Any) -> tuple[Any, dict[str, Any]]:
    """One tool-call answer, its result, then the next request; returns the first completion and the echo."""
    _, first = await collect(llm, LLMRequest(messages=[QUESTION], model="m"))
    call = first.message.tool_calls[0]
    result = ChatMessage(role="tool", tool_call_id=call.id, content='{"status": "shipped"}')
    await collect(llm, LLMRequest(messages=[QUESTION, first.message, result], model="m"))
    echoed: dict[str, Any] = fake.requests[1].body["messages"][1]
    return first, echoed


async def test_deepseek_reasoning_content_goes_back_on_the_tool_call_message(
    fake: FakeLLMServer, make_llm: Any, collect: Any
) -> None:
    # deepseek-reasoner / V3.x thinking: reasoning_content deltas (content null), then the tool call.
    fake.script(
        Chunks([
            chunk({"role": "assistant", "content": None, "reasoning_content": ""}),
            chunk({"content": None, "reasoning_content": "The customer asks about A1001. "}),
            chunk({"content": None, "reasoning_content": "I should look it up — 订单."}),
            chunk({"content": None, "reasoning_content": None, "tool_calls": [
                {"index": 0, "id": "call_00_abc", "type": "function",
                 "function": {"name": "lookup_order", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"order_id":"A1001"}'}}]}),
            chunk({"content": None, "reasoning_content": None}, "tool_calls"),
            USAGE,
        ]),
        Reply("It has shipped."),
    )  # fmt: skip
    first, echoed = await round_trip(fake, make_llm(fake.base_url), collect)
    reasoning = "The customer asks about A1001. I should look it up — 订单."
    assert first.message.content is None and first.message.extra == {"reasoning_content": reasoning}
    assert echoed["reasoning_content"] == reasoning
    assert echoed["tool_calls"][0]["id"] == "call_00_abc" and echoed["content"] is None


async def test_a_reasoning_content_field_that_was_only_null_goes_back_empty(
    fake: FakeLLMServer, make_llm: Any, collect: Any
) -> None:
    fake.script(
        Chunks([
            chunk({"role": "assistant", "content": None, "reasoning_content": None, "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": "lookup_order", "arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
        ]),
        Reply("ok"),
    )  # fmt: skip
    _, echoed = await round_trip(fake, make_llm(fake.base_url), collect)
    assert echoed["reasoning_content"] == ""


async def test_a_provider_without_reasoning_gets_no_reasoning_field(
    fake: FakeLLMServer, make_llm: Any, collect: Any
) -> None:
    fake.script(Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})]), Reply("ok"))
    _, echoed = await round_trip(fake, make_llm(fake.base_url), collect)
    assert "reasoning_content" not in echoed and "reasoning_details" not in echoed


async def test_openrouter_gemini_reasoning_details_are_merged_and_go_back(
    fake: FakeLLMServer, make_llm: Any, collect: Any
) -> None:
    # As OpenRouter streams google/gemini-3-pro-preview: a reasoning.text detail in pieces, the thought
    # signature as a reasoning.encrypted detail at the same index (here split across two deltas), then
    # the tool call whose id the signature names.
    fake.script(
        Chunks([
            ": OPENROUTER PROCESSING",
            chunk({"role": "assistant", "content": "", "reasoning": "**Checking** ", "reasoning_details": [
                {"type": "reasoning.text", "text": "**Checking** ", "format": "google-gemini-v1", "index": 0}]}),
            chunk({"content": "", "reasoning": "the order.", "reasoning_details": [
                {"type": "reasoning.text", "text": "the order.", "format": "google-gemini-v1", "index": 0}]}),
            chunk({"content": "", "reasoning": None, "reasoning_details": [
                {"type": "reasoning.encrypted", "data": "CiQBjz1rXy/d6pcs", "format": "google-gemini-v1",
                 "id": "tool_lookup_order_Ujt", "index": 0}]}),
            chunk({"content": "", "reasoning": None, "reasoning_details": [
                {"type": "reasoning.encrypted", "data": "xX2eeGAFJcWL+w==", "index": 0}]}),
            chunk({"content": None, "tool_calls": [{"index": 0, "id": "tool_lookup_order_Ujt", "type": "function",
                                                    "function": {"name": "lookup_order", "arguments": ""}}]}),
            chunk({"content": None, "tool_calls": [{"index": 0, "function": {"arguments": '{"order_id":"A1001"}'}}]}),
            chunk({"content": "", "reasoning": None}, "tool_calls", native_finish_reason="STOP"),
            USAGE,
        ]),
        Reply("It has shipped."),
    )  # fmt: skip
    _, echoed = await round_trip(fake, make_llm(fake.base_url), collect)
    assert echoed["reasoning_details"] == [
        {"type": "reasoning.text", "text": "**Checking** the order.", "format": "google-gemini-v1", "index": 0},
        {"type": "reasoning.encrypted", "data": "CiQBjz1rXy/d6pcsxX2eeGAFJcWL+w==", "format": "google-gemini-v1",
         "id": "tool_lookup_order_Ujt", "index": 0},
    ]  # fmt: skip
    assert echoed["tool_calls"][0]["id"] == "tool_lookup_order_Ujt"
    assert "reasoning" not in echoed  # reasoning_details carry it; sending both would repeat it


async def test_an_anthropic_signature_arriving_after_the_text_is_kept_once(
    fake: FakeLLMServer, make_llm: Any, collect: Any
) -> None:
    fake.script(
        Chunks([
            chunk({"role": "assistant", "content": "", "reasoning_details": [
                {"type": "reasoning.text", "text": "Look it ", "signature": None, "index": 0}]}),
            chunk({"content": "", "reasoning_details": [
                {"type": "reasoning.text", "text": "up.", "signature": None, "index": 0}]}),
            chunk({"content": "", "reasoning_details": [
                {"type": "reasoning.text", "text": "", "signature": "EqQBCkYIBxgC", "format": "anthropic-claude-v1",
                 "index": 0}]}),
            chunk({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function",
                                   "function": {"name": "lookup_order", "arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
        ]),
        Reply("ok"),
    )  # fmt: skip
    _, echoed = await round_trip(fake, make_llm(fake.base_url), collect)
    assert echoed["reasoning_details"] == [
        {"type": "reasoning.text", "text": "Look it up.", "signature": "EqQBCkYIBxgC", "index": 0,
         "format": "anthropic-claude-v1"}
    ]  # fmt: skip


OPENROUTER_RAW = (
    "Gemini models require OpenRouter reasoning details to be preserved in each request. Upstream error: "
    '{"error": {"code": 400, "message": "Function call is missing a thought_signature in functionCall parts."}}'
)


async def test_openrouter_error_names_the_providers_own_reason(
    fake: FakeLLMServer, make_llm: Any, request_for: Any
) -> None:
    fake.script(
        Fail(400, {"error": {"message": "Provider returned error", "code": 400,
                             "metadata": {"raw": OPENROUTER_RAW, "provider_name": "Google AI Studio"}}})
    )  # fmt: skip
    with pytest.raises(LLMHTTPError) as caught:
        async for _ in make_llm(fake.base_url).stream(request_for()):
            pass
    text = str(caught.value)
    assert "Provider returned error (provider Google AI Studio said: Gemini models require" in text
    assert "missing a thought_signature" in text and "report this bug" in text


async def test_openrouter_error_inside_the_stream_names_the_providers_reason(
    fake: FakeLLMServer, make_llm: Any, request_for: Any
) -> None:
    raw = {"error": {"type": "overloaded_error", "message": "Overloaded"}}
    error = {"code": 502, "message": "Provider returned error",
             "metadata": {"raw": raw, "provider_name": "Anthropic"}}  # fmt: skip
    fake.script(
        Chunks([": OPENROUTER PROCESSING", chunk({"content": ""}, "error", error=error)]),
        Chunks([chunk({"content": ""}, "error", error=error)]),
        Chunks([chunk({"content": ""}, "error", error=error)]),
    )
    with pytest.raises(LLMHTTPError) as caught:
        async for _ in make_llm(fake.base_url).stream(request_for()):
            pass
    assert f"(provider Anthropic said: {json.dumps(raw)})" in str(caught.value)
    assert caught.value.status == 502 and len(fake.requests) == 3  # a 502 is retried like one


async def test_the_gemini_signature_path_still_works_beside_them(
    gemini: FakeLLMServer, make_llm: Any, collect: Any
) -> None:
    gemini.script(Reply(tool_calls=[("lookup_order", {"order_id": "A1001"})]), Reply("ok"))
    first, echoed = await round_trip(gemini, make_llm(gemini.base_url), collect)
    assert echoed["tool_calls"][0]["extra_content"]["google"]["thought_signature"]
    assert first.message.extra == {}
