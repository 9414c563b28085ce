"""An offline, deterministic stand-in for a model, for ``--demo`` and ``supportbot test``: no key, no network.

It shows the whole path (streaming, tool calls, confirmations, tickets) without an LLM. On a
customer message it tries, in this order:

1. the flow's ``demo:`` hints (``supportbot.hints``): the first rule whose ``when`` pattern is found
   in the message calls its tool (when the flow offers it) or replies;
2. its own rules for the built-in tools: it looks up an order when the customer names one
   (``A1001``), opens a ticket or hands over to a person when asked, and transfers to the
   ``returns`` and ``order_status`` flows on their keywords;
3. the flow's other tools (``supportbot.llm.demo_match``): the one whose name or description fits
   the customer's words, when its required arguments can be read from the message; and
   ``transfer_to_<flow>`` by the words of that flow's description;

and otherwise says what it can do, or which argument it still needs. Right after a tool answered,
the first ``after`` hint for that tool applies; without one the result is described in plain
words (a tool's error as a problem it reported). After a transfer it acts on the customer's
question again with the new flow's tools. Its replies are labelled as the demo's. It is never
used unless asked for.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from supportbot.confirm import DECLINED
from supportbot.hints import DemoHint
from supportbot.llm.base import Completion, LLMRequest, StreamEvent, TextChunk
from supportbot.llm.demo_match import TRANSFER_PREFIX, best_tool, purpose, shorten
from supportbot.messages import ChatMessage, ToolCall, Usage

_ORDER = re.compile(r"\b([A-Z]{1,3}-?\d{3,8})\b", re.IGNORECASE)
_TICKET = re.compile(r"\b(ticket|complain|complaint|report)\b", re.IGNORECASE)
_HUMAN = re.compile(r"\b(human|person|agent|someone|real)\b", re.IGNORECASE)
_RETURN = re.compile(r"\b(return|refund|exchange|send back)\b", re.IGNORECASE)
_ORDER_WORDS = re.compile(r"\b(order|delivery|shipping|parcel|package|track)\b", re.IGNORECASE)
# What the registry (supportbot/tools/registry.py) and the engine put in a tool message instead of
# a result; a tool message carries no error flag. tests/llm/test_demo.py drives the real registry.
_ERROR = re.compile(
    r"^(?:tool failed: |invalid arguments for '|the arguments for '|unknown tool '|not run: at most "
    r"|tool '[^']*' is not available in this conversation|transfer to '[^']*' is not possible"
    r"|this call was already run once|'[^']*' (?:timed out after|was not run: ))"
)
LABEL = "[demo model] "
_RULED = frozenset({"lookup_order", "create_ticket", "handoff_to_human"})
"""Built-in tools the demo has rules of its own for; any other tool is matched by its words."""
_RESULT_LIMIT = 600

Tools = Mapping[str, Mapping[str, Any]]
"""The offered tool definitions by name."""


class DemoLLM:
    """Implements ``supportbot.llm.base.LLM`` with fixed rules (see the module docstring)."""

    def __init__(self) -> None:
        self._calls = 0

    async def aclose(self) -> None:
        return None

    async def stream(self, request: LLMRequest) -> AsyncIterator[StreamEvent]:
        offered: dict[str, Mapping[str, Any]] = {t["function"]["name"]: t for t in request.tools}
        messages = list(request.messages)
        last = messages[-1]
        if last.role == "user" and len(messages) > 1 and messages[-2].role == "tool":
            messages.pop()  # the customer's yes to a confirmed call: report what the call did
            last = messages[-1]
        if last.role == "tool":
            answer = self._after_results(messages, offered, request.hints)
        else:
            answer = self._answer(last.content or "", offered, request.hints)
        if isinstance(answer, ToolCall):
            yield _calling(request, answer)
            return
        text = LABEL + answer
        for word in re.findall(r"\S+\s*", text):
            yield TextChunk(text=word)
        yield Completion(
            message=ChatMessage(role="assistant", content=text),
            finish_reason="stop",
            usage=_usage(request, text),
            model="demo",
        )

    def _answer(self, text: str, offered: Tools, hints: Sequence[DemoHint]) -> ToolCall | str:
        """A call or a reply for the customer's message; what the demo can do when no rule applies."""
        reaction = self._react(text, offered, hints)
        if reaction is not None:
            return reaction
        match = best_tool(text, _matchable(offered).values())
        if match is not None and match.missing:
            return _asking(offered[match.name], match.missing)
        return _offer(offered)

    def _react(self, text: str, offered: Tools, hints: Sequence[DemoHint]) -> ToolCall | str | None:
        """The hints' call or reply, else a built-in rule's call, else a fitting tool's call; None if none applies."""
        for hint in hints:
            pattern = hint.pattern()
            found = pattern.search(text) if pattern is not None else None
            if found is None:
                continue
            groups = {name: value for name, value in found.groupdict().items() if value is not None}
            if hint.reply is not None:
                return render(hint.reply, groups)
            if hint.call is not None and hint.call in offered:
                return self._call(hint.call, fill_arguments(hint.args, groups))
        builtin = _builtin_call(text, set(offered))
        if builtin is not None:
            return self._call(*builtin)
        match = best_tool(text, _matchable(offered).values())
        if match is not None and match.arguments is not None:
            return self._call(match.name, match.arguments)
        return None

    def _after_results(self, messages: list[ChatMessage], offered: Tools, hints: Sequence[DemoHint]) -> ToolCall | str:
        """After the tool results ending ``messages``: an ``after`` hint, the next step, or their description."""
        results = _trailing_results(messages)
        for hint in hints:
            result = next((r for r in results if hint.after is not None and r.name == hint.after), None)
            if result is None or not _ran(result.content or ""):
                continue
            values = _result_values(result.content or "")
            if hint.reply is not None:
                return render(hint.reply, values)
            if hint.call is not None and hint.call in offered:
                arguments = fill_arguments(hint.args, values)
                if not _called_since_customer(messages, hint.call, arguments):  # no loop of after rules
                    return self._call(hint.call, arguments)
        if any((r.name or "").startswith(TRANSFER_PREFIX) and _ran(r.content or "") for r in results):
            # A new flow, new tools: act on the customer's question again (no transfer back and forth).
            question = next((m.content or "" for m in reversed(messages) if m.role == "user"), "")
            tools = {name: t for name, t in offered.items() if not name.startswith(TRANSFER_PREFIX)}
            reaction = self._react(question, tools, hints)
            if reaction is not None:
                return reaction
        return " ".join(_describe(r.name or "", r.content or "") for r in results)

    def _call(self, name: str, arguments: Mapping[str, Any]) -> ToolCall:
        self._calls += 1
        return ToolCall(id=f"demo_{self._calls}", name=name, arguments=json.dumps(arguments))


def _builtin_call(text: str, tools: set[str]) -> tuple[str, dict[str, Any]] | None:
    """The demo's own rules for the built-in tools and the example flows' transfers."""
    order = _ORDER.search(text)
    if _HUMAN.search(text) and "handoff_to_human" in tools:
        return "handoff_to_human", {"reason": text[:200]}
    if _TICKET.search(text) and "create_ticket" in tools:
        return "create_ticket", {"subject": text[:80], "description": text}
    if _RETURN.search(text) and "transfer_to_returns" in tools:
        return "transfer_to_returns", {"reason": text[:200]}
    if order and "lookup_order" in tools:
        return "lookup_order", {"order_id": order.group(1).upper()}
    if _ORDER_WORDS.search(text) and "transfer_to_order_status" in tools:
        return "transfer_to_order_status", {"reason": text[:200]}
    return None


def _matchable(offered: Tools) -> Tools:
    """The offered tools matched by their words: all but the built-in tools with rules of their own."""
    return {name: tool for name, tool in offered.items() if name not in _RULED}


# -- hints -------------------------------------------------------------------------------------------


def render(template: str, values: Mapping[str, Any]) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]`` in plain words.

    Only plain names are looked up: ``{name.attr}``, ``{name[0]}``, ``{name!r}``, ``{name:>9}`` and
    unknown names stay in the text as written, and a value is never formatted again, so text from
    the customer or a tool is just data. A template that is not valid format text stays as it is.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return template
    parts: list[str] = []
    for literal, name, spec, conversion in parsed:
        parts.append(literal)
        if name is None:
            continue
        if name.isidentifier() and not spec and not conversion and name in values:
            parts.append(_plain(values[name]))
        else:
            parts.append("{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
    return "".join(parts)


def fill_arguments(arguments: Any, values: Mapping[str, Any]) -> Any:
    """A hint's ``args`` with ``{name}`` filled in every string, also inside lists and objects.

    A string that is exactly ``"{name}"`` takes the value itself (a result's number stays a number);
    strings without braces and other values are kept as they are.
    """
    if isinstance(arguments, dict):
        return {key: fill_arguments(value, values) for key, value in arguments.items()}
    if isinstance(arguments, list):
        return [fill_arguments(value, values) for value in arguments]
    if not isinstance(arguments, str) or ("{" not in arguments and "}" not in arguments):
        return arguments
    whole = re.fullmatch(r"\{(\w+)\}", arguments)
    if whole and whole.group(1) in values:
        return values[whole.group(1)]
    return render(arguments, values)


def _result_values(content: str) -> dict[str, Any]:
    """The top-level keys of a tool result that is a JSON object, for an ``after`` hint."""
    try:
        data = json.loads(content)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _called_since_customer(messages: Sequence[ChatMessage], name: str, arguments: Any) -> bool:
    for message in reversed(messages):
        if message.role == "user":
            return False
        for call in message.tool_calls:
            if call.name == name and _parsed(call.arguments) == arguments:
                return True
    return False


def _parsed(arguments: str) -> Any:
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return None


# -- results -----------------------------------------------------------------------------------------


def _calling(request: LLMRequest, call: ToolCall) -> Completion:
    message = ChatMessage(role="assistant", tool_calls=(call,))
    return Completion(message=message, finish_reason="tool_calls", usage=_usage(request, ""), model="demo")


def _trailing_results(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    results = []
    for m in reversed(messages):
        if m.role != "tool":
            break
        results.append(m)
    return results[::-1]


def _ran(content: str) -> bool:
    """Whether a tool message holds a result: not an error and not a declined confirmation."""
    return content != DECLINED and not _ERROR.match(content)


def _describe(name: str, content: str) -> str:
    if content == DECLINED:
        return "All right, I haven't done that."
    if _ERROR.match(content):
        return f"The {name} tool reported a problem: “{shorten(content, 300)}”"
    try:
        data = json.loads(content)
    except ValueError:
        data = content
    if name == "handoff_to_human":
        ticket = re.search(r"#(\d+)", content)
        where = f" (ticket #{ticket.group(1)})" if ticket else ""
        return f"I've passed your request to a colleague{where}; a person will reply here."
    if name.startswith(TRANSFER_PREFIX):
        return (
            f"I've moved you to our {name.removeprefix(TRANSFER_PREFIX).replace('_', ' ')} assistant. How can I help?"
        )
    if name == "lookup_order" and isinstance(data, dict) and "status" in data:
        bits = [f"Order {data.get('order_id', '')} is {data['status']}."]
        if data.get("eta"):
            bits.append(f"Expected delivery: {data['eta']}.")
        if data.get("carrier"):
            bits.append(f"Carrier: {data['carrier']}.")
        if data.get("tracking_url"):
            bits.append(f"Tracking: {data['tracking_url']}")
        return " ".join(bits)
    if name == "create_ticket" and isinstance(data, dict) and "ticket_id" in data:
        return f"I've opened ticket #{data['ticket_id']} for you; our team will follow up."
    return shorten(_described_value(name, data), _RESULT_LIMIT)


def _described_value(name: str, data: Any) -> str:
    """Any tool's result in words: an object's ``key: value`` pairs, a list's items, a text as it is."""
    if isinstance(data, dict):
        if not data:
            return f"{name} returned nothing."
        return f"Here is what {name} returned: {_pairs(data, '; ')}."
    if isinstance(data, list):
        if not data:
            return f"{name} found nothing."
        items = "; ".join(_pairs(item, ", ") if isinstance(item, dict) else _plain(item) for item in data)
        return f"Here is what {name} found: {items}."
    return _plain(data)


def _pairs(data: Mapping[str, Any], separator: str) -> str:
    return separator.join(f"{key}: {_plain(value)}" for key, value in data.items())


def _plain(value: Any) -> str:
    """A JSON value in words: yes/no for booleans, lists joined with commas, objects in brackets."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(_plain(item) for item in value)
    if isinstance(value, dict):
        return f"({_pairs(value, ', ')})"
    return str(value)


# -- what the demo can do ------------------------------------------------------------------------------


def _offer(offered: Tools) -> str:
    offers = []
    if "lookup_order" in offered:
        offers.append("check an order if you give me its number (like A1001)")
    if "create_ticket" in offered:
        offers.append("open a support ticket (say 'ticket')")
    if "handoff_to_human" in offered:
        offers.append("pass you to a person (say 'human')")
    for name in sorted(t for t in offered if t.startswith(TRANSFER_PREFIX)):
        offers.append(f"bring in our {name.removeprefix(TRANSFER_PREFIX).replace('_', ' ')} assistant")
    custom = sorted(name for name in _matchable(offered) if not name.startswith(TRANSFER_PREFIX))
    if not offers and not custom:
        return "I'm the offline demo; connect a model to get real answers."
    sentences = ["I'm the offline demo, not a real model."]
    if offers:
        sentences.append("I can " + ", ".join(offers) + ".")
    if custom:
        # A description need not read as "I can <it>": each tool is named, its purpose in brackets.
        tools = ", ".join(f"{name} ({purpose(offered[name], limit=60)})" for name in custom)
        sentences.append(f"I {'also ' if offers else ''}call this flow's tools when your words fit them: {tools}.")
    return " ".join(sentences)


def _asking(tool: Mapping[str, Any], missing: Sequence[str]) -> str:
    """The demo found the tool for the message but not all of its required arguments: say which."""
    properties = (tool.get("function") or {}).get("parameters", {}).get("properties") or {}
    needs = []
    for name in missing:
        described = str((properties.get(name) or {}).get("description") or "").strip().rstrip(".")
        label = name.replace("_", " ")
        needs.append(
            f"the {label} ({shorten(described[:1].lower() + described[1:], 60)})" if described else f"the {label}"
        )
    listed = needs[0] if len(needs) == 1 else ", ".join(needs[:-1]) + " and " + needs[-1]
    return f"I can {purpose(tool)}, but I need {listed} for that; please include it in your message."


def _usage(request: LLMRequest, text: str) -> Usage:
    chars = sum(len(m.content or "") for m in request.messages)
    return Usage(input_tokens=chars // 4, output_tokens=len(text) // 4)
