"""An offline, deterministic stand-in for a model, for ``--demo``: no key, no network.

It shows the whole path (streaming, tool calls, confirmations, tickets) without an LLM:
it looks up an order when the customer names one (``A1001``), opens a ticket or hands over to a
person when asked, transfers to another flow on the flow's own keywords, and otherwise says what
it can do. Its replies are labelled as the demo's. It is never used unless asked for.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from supportbot.llm.base import Completion, LLMRequest, StreamEvent, TextChunk
from supportbot.messages import ChatMessage, ToolCall, Usage

_ORDER = re.compile(r"\b([A-Z]{1,3}-?\d{3,8})\b", re.IGNORECASE)
_TICKET = re.compile(r"\b(ticket|complain|complaint|report)\b", re.IGNORECASE)
_HUMAN = re.compile(r"\b(human|person|agent|someone|real)\b", re.IGNORECASE)
_RETURN = re.compile(r"\b(return|refund|exchange|send back)\b", re.IGNORECASE)
_ORDER_WORDS = re.compile(r"\b(order|delivery|shipping|parcel|package|track)\b", re.IGNORECASE)
LABEL = "[demo model] "


class DemoLLM:
    """Implements ``supportbot.llm.base.LLM`` with fixed rules."""

    def __init__(self) -> None:
        self._calls = 0

    async def aclose(self) -> None:
        return None

    async def stream(self, request: LLMRequest) -> AsyncIterator[StreamEvent]:
        tools = {t["function"]["name"] for t in request.tools}
        messages = list(request.messages)
        last = messages[-1]
        if last.role == "user" and len(messages) > 1 and messages[-2].role == "tool":
            messages.pop()  # the customer's yes to a confirmed call: report what the call did
            last = messages[-1]
        if last.role == "tool" and (last.name or "").startswith("transfer_to_"):
            # A new flow, new tools: act on the customer's question again.
            question = next((m.content or "" for m in reversed(messages) if m.role == "user"), "")
            call = self._choose_call(question, tools - {t for t in tools if t.startswith("transfer_to_")})
            if call is not None:
                yield _calling(request, call)
                return
        if last.role == "tool":
            text = LABEL + _describe_results(messages)
        else:
            call = self._choose_call(last.content or "", tools)
            if call is not None:
                yield _calling(request, call)
                return
            text = LABEL + _offer(tools)
        for word in re.findall(r"\S+\s*", text):
            yield TextChunk(text=word)
        yield Completion(
            message=ChatMessage(role="assistant", content=text),
            finish_reason="stop",
            usage=_usage(request, text),
            model="demo",
        )

    def _choose_call(self, text: str, tools: set[str]) -> ToolCall | None:
        name: str | None = None
        args: dict[str, Any] = {}
        order = _ORDER.search(text)
        if _HUMAN.search(text) and "handoff_to_human" in tools:
            name, args = "handoff_to_human", {"reason": text[:200]}
        elif _TICKET.search(text) and "create_ticket" in tools:
            name, args = "create_ticket", {"subject": text[:80], "description": text}
        elif _RETURN.search(text) and "transfer_to_returns" in tools:
            name, args = "transfer_to_returns", {"reason": text[:200]}
        elif order and "lookup_order" in tools:
            name, args = "lookup_order", {"order_id": order.group(1).upper()}
        elif _ORDER_WORDS.search(text) and "transfer_to_order_status" in tools:
            name, args = "transfer_to_order_status", {"reason": text[:200]}
        if name is None:
            return None
        self._calls += 1
        return ToolCall(id=f"demo_{self._calls}", name=name, arguments=json.dumps(args))


def _calling(request: LLMRequest, call: ToolCall) -> Completion:
    message = ChatMessage(role="assistant", tool_calls=(call,))
    return Completion(message=message, finish_reason="tool_calls", usage=_usage(request, ""), model="demo")


def _describe_results(messages: Any) -> str:
    results = []
    for m in reversed(messages):
        if m.role != "tool":
            break
        results.append(m)
    parts = [_describe(m.name or "", m.content or "") for m in reversed(results)]
    return " ".join(parts)


def _describe(name: str, content: str) -> str:
    try:
        data = json.loads(content)
    except ValueError:
        data = content
    if name == "handoff_to_human":
        ticket = re.search(r"#(\d+)", content)
        where = f" (ticket #{ticket.group(1)})" if ticket else ""
        return f"I've passed your request to a colleague{where}; a person will reply here."
    if name.startswith("transfer_to_"):
        return f"I've moved you to our {name.removeprefix('transfer_to_').replace('_', ' ')} assistant. How can I help?"
    if not isinstance(data, dict):
        return str(data)
    if name == "lookup_order" and "status" in data:
        bits = [f"Order {data.get('order_id', '')} is {data['status']}."]
        if data.get("eta"):
            bits.append(f"Expected delivery: {data['eta']}.")
        if data.get("carrier"):
            bits.append(f"Carrier: {data['carrier']}.")
        if data.get("tracking_url"):
            bits.append(f"Tracking: {data['tracking_url']}")
        return " ".join(bits)
    if "ticket_id" in data:
        return f"I've opened ticket #{data['ticket_id']} for you; our team will follow up."
    return json.dumps(data)


def _offer(tools: set[str]) -> str:
    offers = []
    if "lookup_order" in tools:
        offers.append("check an order if you give me its number (like A1001)")
    if "create_ticket" in tools:
        offers.append("open a support ticket (say 'ticket')")
    if "handoff_to_human" in tools:
        offers.append("pass you to a person (say 'human')")
    for name in sorted(t for t in tools if t.startswith("transfer_to_")):
        offers.append(f"bring in our {name.removeprefix('transfer_to_').replace('_', ' ')} assistant")
    if not offers:
        return "I'm the offline demo; connect a model to get real answers."
    return "I'm the offline demo, not a real model. I can " + ", ".join(offers) + "."


def _usage(request: LLMRequest, text: str) -> Usage:
    chars = sum(len(m.content or "") for m in request.messages)
    return Usage(input_tokens=chars // 4, output_tokens=len(text) // 4)
