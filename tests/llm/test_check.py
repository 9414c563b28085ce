"""``supportbot llm check`` against the fake provider in both wire forms, and against failures."""

from __future__ import annotations

from typing import Any

from supportbot.llm.check import check_endpoint
from supportbot.testing import Fail, FakeLLMServer, Reply

TOOL_REPLY = Reply(tool_calls=[("get_order_status", {"order_id": "A1001"})])


async def test_openai_endpoint(fake: FakeLLMServer, settings: Any) -> None:
    fake.script(Reply("OK"), TOOL_REPLY, Reply("Order A1001 has shipped."))
    report = await check_endpoint(settings(fake.base_url))
    assert report.ok
    assert [p.name for p in report.probes] == ["streamed text", "tool call", "tool result sent back"]
    tool = report.probes[1]
    assert "streamed indexed (OpenAI form)" in tool.observed
    assert "no thought signature" in tool.observed
    assert "finish_reason tool_calls" in tool.observed
    text = report.render()
    assert text.splitlines()[0] == f"LLM endpoint {fake.base_url}/chat/completions, model 'fake-model'"
    assert text.splitlines()[-1].startswith("Verdict: OK")


async def test_gemini_endpoint(gemini: FakeLLMServer, settings: Any) -> None:
    gemini.script(Reply("OK"), TOOL_REPLY, Reply("Order A1001 has shipped."))
    report = await check_endpoint(settings(gemini.base_url, stream=False))  # the probe streams anyway
    assert report.ok, report.render()
    tool = report.probes[1]
    assert "streamed index-less (Gemini form)" in tool.observed
    assert "thought signature present" in tool.observed
    assert "finish_reason stop (counted as tool_calls)" in tool.observed
    assert any(o.startswith("usage ") for o in tool.observed)
    # The round trip passed the fake's signature check, as it would pass Google's.
    assert gemini.requests[2].body["messages"][2]["tool_calls"][0]["extra_content"]["google"]["thought_signature"]
    assert all(r.body["stream"] is True for r in gemini.requests)


async def test_unauthorised(settings: Any) -> None:
    async with FakeLLMServer(api_key="sk-right") as server:
        report = await check_endpoint(settings(server.base_url, api_key="sk-wrong"))
    assert not report.ok
    assert len(report.probes) == 1  # nothing else can work without a key
    probe = report.probes[0]
    assert probe.error is not None and "answered 401" in probe.error and "sk-wrong" not in probe.error
    assert probe.hint is not None and "llm.api_key" in probe.hint
    assert report.render().splitlines()[-1].startswith("Verdict: FAILED at 'streamed text'. Check llm.api_key")


async def test_unknown_model(fake: FakeLLMServer, settings: Any) -> None:
    fake.script(Fail(404, body={"error": {"message": "model 'nope' not found"}}))
    report = await check_endpoint(settings(fake.base_url))
    assert "llm.base_url" in (report.probes[0].hint or "")


async def test_model_that_does_not_call_tools(fake: FakeLLMServer, settings: Any) -> None:
    fake.script(Reply("OK"), Reply("I cannot look that up."))
    report = await check_endpoint(settings(fake.base_url))
    assert not report.ok
    assert [p.ok for p in report.probes] == [True, False]
    assert "function calling" in (report.probes[1].hint or "")
    assert "Verdict: FAILED at 'tool call'" in report.render()
