"""An offline, deterministic stand-in for a model, for ``--demo`` and ``supportbot test``: no key, no network.

It shows the whole path (streaming, tool calls, confirmations, tickets) without an LLM. On a
customer message it tries, in this order:

1. the ``demo:`` hints (``supportbot.hints``; its own, e.g. a test script's, then the flow's): the
   first rule whose ``when`` pattern is found in the message calls its tool (when the flow offers
   it) or replies, ``{name}`` filled from the pattern's named groups;
2. its own rules for the built-in tools: it opens a ticket or hands over to a person when asked,
   transfers to the ``returns`` flow on its keywords, looks up an order when the customer names
   one (``A1001``) and transfers to the ``order_status`` flow on its keywords; a custom tool that
   a word of its *name* fits, and whose required arguments are in the message, comes before the
   order rules (``warranty for SN-12345`` is not an order);
3. the flow's other tools (``supportbot.llm.demo_match``): the one whose name or description fits
   the customer's words, when its required arguments can be read from the message; and
   ``transfer_to_<flow>`` by the words of that flow's description;

and otherwise says what it can do, or which argument it still needs. Right after a tool answered,
the first ``after`` hint for that tool whose every ``{key}`` is a top-level key of the result
applies; without one the result is described in plain words (a tool's error as a problem it
reported). After the customer's yes to a held call it reports what the call did; after anything
else (the call was declined) it acts on that message. After a transfer it acts on the customer's
question again with the new flow's tools. Its replies are labelled as the demo's. It is never used
unless asked for.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from supportbot.confirm import DECLINED
from supportbot.hints import DemoHint, fill_arguments, pairs, placeholders, plain, render
from supportbot.llm.base import Completion, LLMRequest, StreamEvent, TextChunk
from supportbot.llm.demo_match import TRANSFER_PREFIX, Match, best_tool, purpose, shorten
from supportbot.messages import ChatMessage, ToolCall, Usage

_ORDER = re.compile(r"\b([A-Z]{1,3}-?\d{3,8})\b", re.IGNORECASE)
_TICKET = re.compile(r"\b(ticket|complain|complaint)s?\b", re.IGNORECASE)
_HUMAN = re.compile(r"\b(human|person|agent|representative|operator)s?\b", re.IGNORECASE)
_RETURN = re.compile(r"\b(return|refund|exchange|send back)\b", re.IGNORECASE)
_ORDER_WORDS = re.compile(r"\b(order|delivery|shipping|parcel|package|track)\b", re.IGNORECASE)
# What the registry (supportbot/tools/registry.py) and the engine put in a tool message instead of
# a result; a tool message carries no error flag. This repeats their wording: the test
# test_errors_of_the_real_registry_are_reported_as_problems (tests/llm/test_demo_model.py) drives
# the real registry and fails when the two drift apart.
_ERROR = re.compile(
    r"^(?:tool failed: |invalid arguments for '|the arguments for '|unknown tool '|not run: at most "
    r"|tool '[^']*' is not available in this conversation|transfer to '[^']*' is not possible"
    r"|this call was already run once|'[^']*' (?:timed out after|was not run: ))"
)
LABEL = "[demo model] "
_RULED = frozenset({"lookup_order", "create_ticket", "handoff_to_human"})
"""Built-in tools the demo has rules of its own for; any other tool is matched by its words."""
_RESULT_LIMIT = 600
_SUBJECT_LIMIT = 80
_DECLINED_LINE = "All right, I haven't done that."

Tools = Mapping[str, Mapping[str, Any]]
"""The offered tool definitions by name."""


class DemoLLM:
    """Implements ``supportbot.llm.base.LLM`` with fixed rules (see the module docstring).

    Args:
        hints: rules of its own, followed before each request's hints (e.g. a test script's).
    """

    def __init__(self, *, hints: Sequence[DemoHint] = ()) -> None:
        self._calls = 0
        self._hints = tuple(hints)

    async def aclose(self) -> None:
        return None

    async def stream(self, request: LLMRequest) -> AsyncIterator[StreamEvent]:
        offered: dict[str, Mapping[str, Any]] = {t["function"]["name"]: t for t in request.tools}
        hints = (*self._hints, *request.hints)
        messages = list(request.messages)
        last = messages[-1]
        declined = False
        if last.role == "user" and len(messages) > 1 and messages[-2].role == "tool":
            if all(r.content == DECLINED for r in _trailing_results(messages[:-1])):
                declined = True  # the customer wrote something other than yes: act on it
            else:
                messages.pop()  # the customer's yes ran the held calls: report what they did
                last = messages[-1]
        if last.role == "tool":
            answer = self._after_results(messages, offered, hints)
        else:
            answer = self._answer(last.content or "", offered, hints, declined=declined)
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

    def _answer(self, text: str, offered: Tools, hints: Sequence[DemoHint], *, declined: bool) -> ToolCall | str:
        """A call or a reply for the customer's message; what the demo can do when no rule applies.

        ``declined``: the message answered a confirmation with something other than yes; the reply
        says the held call was not made, and the demo's offer is left out.
        """
        match = best_tool(text, _matchable(offered).values())
        reaction = self._react(text, offered, hints, match)
        if isinstance(reaction, ToolCall):
            return reaction
        if reaction is None and match is not None and match.missing:
            reaction = _asking(offered[match.name], match.missing)
        if declined:
            return f"{_DECLINED_LINE} {reaction}" if reaction is not None else _DECLINED_LINE
        return reaction if reaction is not None else _offer(offered)

    def _react(
        self, text: str, offered: Tools, hints: Sequence[DemoHint], match: Match | None
    ) -> ToolCall | str | None:
        """The hints' call or reply, else a built-in rule's call, else a fitting tool's call; None if none applies.

        ``match`` is ``best_tool`` for ``text`` and the offered tools without rules of their own.
        """
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
        # A custom tool named by the customer's words, with its arguments at hand, beats the order rules.
        named = (
            match is not None
            and match.by_name
            and match.arguments is not None
            and not match.name.startswith(TRANSFER_PREFIX)
        )
        builtin = _builtin_call(text, offered, orders=not named)
        if builtin is not None:
            return self._call(*builtin)
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
            if any(name not in values for _, text in hint.templates() for name in placeholders(text)):
                continue  # not the result it was written for (a ToolRetry's words, an error object)
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
            reaction = self._react(question, tools, hints, best_tool(question, _matchable(tools).values()))
            if reaction is not None:
                return reaction
        return " ".join(_describe(r.name or "", r.content or "") for r in results)

    def _call(self, name: str, arguments: Mapping[str, Any]) -> ToolCall:
        self._calls += 1
        # default=str: a value JSON has no type for (a date a hint was built with in code) goes as text.
        return ToolCall(id=f"demo_{self._calls}", name=name, arguments=json.dumps(arguments, default=str))


def _builtin_call(text: str, offered: Tools, *, orders: bool = True) -> tuple[str, dict[str, Any]] | None:
    """The demo's own rules for the built-in tools and the example flows' transfers.

    ``orders``: whether the order rules (an order number, the order words) may apply.
    """
    order = _ORDER.search(text) if orders else None
    if _HUMAN.search(text) and "handoff_to_human" in offered:
        return "handoff_to_human", {"reason": text[:200]}
    if _TICKET.search(text) and "create_ticket" in offered:
        ticket = offered["create_ticket"]
        return "create_ticket", {
            "subject": _text_for(ticket, "subject", text, _SUBJECT_LIMIT),
            "description": _text_for(ticket, "description", text),
        }
    if _RETURN.search(text) and "transfer_to_returns" in offered:
        return "transfer_to_returns", {"reason": text[:200]}
    if order and "lookup_order" in offered:
        return "lookup_order", {"order_id": order.group(1).upper()}
    if orders and _ORDER_WORDS.search(text) and "transfer_to_order_status" in offered:
        return "transfer_to_order_status", {"reason": text[:200]}
    return None


def _text_for(tool: Mapping[str, Any], argument: str, text: str, limit: int | None = None) -> str:
    """``text`` for a string argument: whole when it fits ``limit`` and the schema's ``maxLength``, else shortened."""
    schema = ((tool.get("function") or {}).get("parameters") or {}).get("properties", {}).get(argument) or {}
    most = schema.get("maxLength")
    bounds = [n for n in (limit, most) if isinstance(n, int) and not isinstance(n, bool)]
    if not bounds or len(text) <= min(bounds):
        return text
    return shorten(text, min(bounds))


def _matchable(offered: Tools) -> Tools:
    """The offered tools matched by their words: all but the built-in tools with rules of their own."""
    return {name: tool for name, tool in offered.items() if name not in _RULED}


# -- hints -------------------------------------------------------------------------------------------


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
        return _DECLINED_LINE
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
        return f"Here is what {name} returned: {pairs(data, '; ')}."
    if isinstance(data, list):
        if not data:
            return f"{name} found nothing."
        items = "; ".join(pairs(item, ", ") if isinstance(item, dict) else plain(item) for item in data)
        return f"Here is what {name} found: {items}."
    return plain(data)


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
    name = (tool.get("function") or {}).get("name", "")
    return f"I could call {name} ({purpose(tool)}), but I need {listed} for that; please include it in your message."


def _usage(request: LLMRequest, text: str) -> Usage:
    chars = sum(len(m.content or "") for m in request.messages)
    return Usage(input_tokens=chars // 4, output_tokens=len(text) // 4)
