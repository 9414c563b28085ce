"""``supportbot llm check``: probe the configured endpoint before customers do.

Three small streamed requests: plain text, a tool call, and the tool result sent back (which
is where a Gemini endpoint rejects a history that lost its thought signatures). The report says
what came back and in which wire form, and how to fix what failed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from supportbot.config import API_KEY_ENV, LLMSettings
from supportbot.errors import LLMConnectionError, LLMError, LLMHTTPError, LLMProtocolError, LLMTimeout
from supportbot.llm.accumulate import StreamFacts
from supportbot.llm.base import Completion, LLMRequest, TextChunk
from supportbot.llm.client import OpenAICompatibleLLM
from supportbot.messages import ChatMessage

__all__ = ["CheckReport", "ProbeResult", "check_endpoint", "missing_key"]

PROBE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_order_status",
        "description": "Look up the status of an order.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string", "description": "The order number, e.g. A1001."}},
            "required": ["order_id"],
        },
    },
}
_SYSTEM = ChatMessage(role="system", content="You are a connectivity probe. Follow the instructions exactly.")
_TOOL_QUESTION = ChatMessage(
    role="user", content="What is the status of order A1001? Call the get_order_status tool to find out."
)


@dataclass(frozen=True, kw_only=True, slots=True)
class ProbeResult:
    """The outcome of one probe request.

    Attributes:
        name: what was probed.
        ok: whether it behaved as supportbot needs.
        latency_s: seconds from sending the request to the end of the answer.
        observed: what came back, one short phrase each.
        error: why it failed, if it did.
        hint: what to change, if it failed.
    """

    name: str
    ok: bool
    latency_s: float = 0.0
    observed: tuple[str, ...] = ()
    error: str | None = None
    hint: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckReport:
    """All probes against one endpoint.

    Attributes:
        url: the chat-completions URL probed.
        model: the model asked for.
        probes: the probes, in the order they ran.
    """

    url: str
    model: str
    probes: tuple[ProbeResult, ...]

    @property
    def ok(self) -> bool:
        """Whether every probe passed."""
        return all(p.ok for p in self.probes)

    def render(self) -> str:
        """The report for a terminal: one line per probe, then a one-line verdict (and a hint on failure)."""
        lines = [f"LLM endpoint {self.url}, model {self.model!r}"]
        width = max(len(p.name) for p in self.probes) if self.probes else 0
        for probe in self.probes:
            status = "ok" if probe.ok else "FAILED"
            details = "; ".join(probe.observed) if probe.observed else ""
            lines.append(f"  {status:<7}{probe.name:<{width}}  {probe.latency_s:6.2f} s  {details}".rstrip())
            if probe.error:
                lines.append(f"         error: {probe.error}")
            if probe.hint:
                lines.append(f"         hint: {probe.hint}")
        failed = next((p for p in self.probes if not p.ok), None)
        if failed is None:
            lines.append("Verdict: OK: the endpoint streams text and calls tools; supportbot can use it.")
        else:
            hint = f" {failed.hint}" if failed.hint else ""
            lines.append(f"Verdict: FAILED at '{failed.name}'.{hint}")
        return "\n".join(lines)


def missing_key(settings: LLMSettings) -> str | None:
    """Why the endpoint cannot be probed yet (no key for the default hosted endpoint), or None.

    An endpoint at another ``base_url`` is probed without a key: a local server may need none.
    """
    if not settings.key_missing:
        return None
    return (
        f"no API key is set for {settings.base_url}: export {API_KEY_ENV}=<your key> or set llm.api_key in "
        "config.yaml (a local server at another llm.base_url needs none)"
    )


async def check_endpoint(settings: LLMSettings, *, session: aiohttp.ClientSession | None = None) -> CheckReport:
    """Probes the endpoint of ``settings`` with streamed requests (whatever ``llm.stream`` says).

    Args:
        settings: the ``llm`` section of the configuration.
        session: an aiohttp session to use instead of a new one.

    Returns:
        The report; it never raises for an endpoint failure, it describes it.
    """
    llm = OpenAICompatibleLLM(settings.model_copy(update={"stream": True}), session=session)
    probes: list[ProbeResult] = []
    try:
        text_request = _request(settings, (_SYSTEM, ChatMessage(role="user", content="Say OK.")))
        text_probe, _, _ = await _probe(llm, "streamed text", text_request)
        probes.append(text_probe)
        if text_probe.error is not None:
            return CheckReport(url=llm.url, model=settings.model, probes=tuple(probes))

        tool_request = _request(settings, (_SYSTEM, _TOOL_QUESTION), tools=(PROBE_TOOL,))
        tool_probe, completion, _ = await _probe(llm, "tool call", tool_request)
        probes.append(tool_probe)
        if tool_probe.ok and completion is not None:
            calls = completion.message.tool_calls
            results = tuple(
                ChatMessage(role="tool", tool_call_id=c.id, content='{"status": "shipped", "eta": "2026-12-03"}')
                for c in calls
            )
            history = (_SYSTEM, _TOOL_QUESTION, completion.message, *results)
            round_trip = _request(settings, history, tools=(PROBE_TOOL,))
            probe, _, _ = await _probe(llm, "tool result sent back", round_trip)
            probes.append(probe)
    finally:
        await llm.aclose()
    return CheckReport(url=llm.url, model=settings.model, probes=tuple(probes))


def _request(
    settings: LLMSettings, messages: tuple[ChatMessage, ...], tools: tuple[dict[str, Any], ...] = ()
) -> LLMRequest:
    return LLMRequest(
        messages=messages,
        tools=tools,
        model=settings.model,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
        reasoning_effort=settings.reasoning_effort,
    )


async def _probe(
    llm: OpenAICompatibleLLM, name: str, request: LLMRequest
) -> tuple[ProbeResult, Completion | None, StreamFacts]:
    facts = StreamFacts()
    start = time.perf_counter()
    first_text: float | None = None
    completion: Completion | None = None
    try:
        async for event in llm.stream(request, facts=facts):
            if isinstance(event, TextChunk):
                if first_text is None:
                    first_text = time.perf_counter() - start
            else:
                completion = event
    except LLMError as exc:
        latency = time.perf_counter() - start
        return ProbeResult(name=name, ok=False, latency_s=latency, error=str(exc), hint=_hint(exc)), None, facts
    latency = time.perf_counter() - start
    assert completion is not None  # stream() always ends with a Completion or raises
    observed: list[str] = []
    ok = True
    hint: str | None = None
    text = completion.message.content or ""
    calls = completion.message.tool_calls
    if text:
        shown = text if len(text) <= 60 else text[:57] + "..."
        observed.append(f"text {shown!r}" + (f" (first text after {first_text:.2f} s)" if first_text else ""))
    for call in calls:
        observed.append(f"tool call {call.name}({call.arguments})")
    if calls:
        form = []
        if facts.indexed_tool_calls:
            form.append("indexed (OpenAI form)")
        if facts.indexless_tool_calls:
            form.append("index-less (Gemini form)")
        observed.append("streamed " + " and ".join(form))
        signed = any("thought_signature" in json.dumps(c.extra) for c in calls)
        observed.append("thought signature present" if signed else "no thought signature")
    raw = facts.raw_finish_reason
    if raw != completion.finish_reason:
        observed.append(f"finish_reason {raw} (counted as {completion.finish_reason})")
    else:
        observed.append(f"finish_reason {raw}")
    if facts.usage_seen:
        usage = completion.usage
        observed.append(f"usage {usage.input_tokens} in / {usage.output_tokens} out")
    else:
        observed.append("no usage reported (cost will show as 0)")
    if name == "tool call":
        if not calls:
            ok = False
            hint = "The model answered without calling the tool; choose an llm.model that supports function calling."
        elif any(not _is_json_object(c.arguments) for c in calls):
            ok = False
            hint = "The tool arguments are not a JSON object; the endpoint's tool calling is unreliable."
    elif not text:
        ok = False
        hint = "No text came back; check llm.model, and raise llm.max_tokens if the model thinks before answering."
    return ProbeResult(name=name, ok=ok, latency_s=latency, observed=tuple(observed), hint=hint), completion, facts


def _is_json_object(arguments: str) -> bool:
    try:
        return isinstance(json.loads(arguments), dict)
    except ValueError:
        return False


def _hint(exc: LLMError) -> str:
    if isinstance(exc, LLMHTTPError):
        if exc.status in (401, 403):
            return "Check llm.api_key / SUPPORTBOT_LLM_API_KEY: is it set, valid, and allowed to use this model?"
        if exc.status == 404:
            return "Check llm.base_url (the part before /chat/completions) and llm.model."
        if exc.status == 429:
            return "The provider is rate limiting or out of quota; wait, or check the account."
        if exc.status == 400:
            return (
                "The endpoint refused the request; the model may not support streaming or tools. Try another llm.model."
            )
        return "The provider failed; try again later."
    if isinstance(exc, LLMTimeout):
        return "The endpoint is too slow or unreachable; check llm.base_url and llm.timeouts."
    if isinstance(exc, LLMConnectionError):
        return "Check llm.base_url (host and port) and that the endpoint is running."
    if isinstance(exc, LLMProtocolError):
        return "The answer is not chat-completions SSE; check that llm.base_url is an OpenAI-compatible API."
    return "Check the llm section of the configuration."
