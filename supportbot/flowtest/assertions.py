"""The assertions of ``expect:``, checked against what a turn (or a whole case) did.

Each check that does not hold gives a ``Failure`` naming the assertion's ``file:line``, what was
expected (``- ...`` lines) and what happened (``+ ...`` lines).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from datetime import date
from typing import Any

from supportbot._yaml import YamlPath
from supportbot.flowtest.records import CallRecord, Failure, Outcome, TicketRecord, show_value
from supportbot.flowtest.spec import CalledCheck, Expect, TicketFields
from supportbot.pricing import format_usd

PROMPT_SHOWN = 2000
"""Characters of a system prompt shown in a failure."""

Locate = Callable[[YamlPath], str]
"""``file:line`` of a key of the test file."""


def check(expect: Expect, outcome: Outcome, *, label: str, base: YamlPath, at: Locate) -> list[Failure]:
    """Every assertion of ``expect`` that does not hold for ``outcome``.

    Args:
        expect: the assertions.
        outcome: what the turn (or the case) did.
        label: ``turn 2`` or ``case``, to say which ``expect:`` failed.
        base: the path of ``expect`` in the test file.
        at: where a path of the test file is written.
    """

    def fail(key: YamlPath, message: str, expected: tuple[str, ...] = (), actual: tuple[str, ...] = ()) -> Failure:
        name = str(key[0])
        return Failure(where=at((*base, *key)), what=f"{label}: {name}", message=message, expected=expected,
                       actual=actual)  # fmt: skip

    return list(_failures(expect, outcome, fail))


_Fail = Callable[..., Failure]


def _failures(expect: Expect, outcome: Outcome, fail: _Fail) -> Iterator[Failure]:
    calls = outcome.calls
    made = tuple(_call_line(call) for call in calls) or ("(no tool calls)",)
    for index, wanted in enumerate(expect.called or ()):
        if not any(_matches(wanted, call) for call in calls):
            same = [call for call in calls if call.name == wanted.tool]
            why = "it was not called" if not same else "no call of it had these arguments and result"
            yield fail(("called", index), f"expected a call of {wanted.tool}; {why}", (_wanted_line(wanted),), made)
    for index, name in enumerate(expect.not_called or ()):
        found = tuple(_call_line(call) for call in calls if call.name == name)
        if found:
            yield fail(("not_called", index), f"{name} was called", (f"no call of {name}",), found)
    reply = outcome.reply
    shown_reply = (f"reply: {reply}",) if reply else ("reply: (nothing)",)
    for index, text in enumerate(expect.reply_contains or ()):
        if text.casefold() not in reply.casefold():
            yield fail(("reply_contains", index), f"the reply does not contain {text!r}", (f"contains: {text}",),
                       shown_reply)  # fmt: skip
    for index, text in enumerate(expect.reply_not_contains or ()):
        if text.casefold() in reply.casefold():
            yield fail(("reply_not_contains", index), f"the reply contains {text!r}", (f"does not contain: {text}",),
                       shown_reply)  # fmt: skip
    if expect.reply_matches is not None and re.search(expect.reply_matches, reply) is None:
        yield fail(("reply_matches",), f"the reply does not match /{expect.reply_matches}/",
                   (f"matches: /{expect.reply_matches}/",), shown_reply)  # fmt: skip
    yield from _ticket(expect.ticket, outcome.tickets, fail)
    yield from _flags(expect, outcome, fail)
    yield from _budget(expect, outcome, fail)
    prompt = outcome.system_prompt
    shown_prompt = ("system prompt:", *_shorten(prompt, PROMPT_SHOWN).splitlines())
    for index, text in enumerate(expect.system_prompt_contains or ()):
        if text not in prompt:
            yield fail(("system_prompt_contains", index), f"the system prompt does not contain {text!r}",
                       (f"contains: {text}",), shown_prompt)  # fmt: skip
    for index, text in enumerate(expect.system_prompt_omits or ()):
        if text in prompt:
            yield fail(("system_prompt_omits", index), f"the system prompt contains {text!r}",
                       (f"omits: {text}",), shown_prompt)  # fmt: skip


def _ticket(wanted: bool | TicketFields | None, tickets: tuple[TicketRecord, ...], fail: _Fail) -> Iterator[Failure]:
    opened = tuple(ticket.shown() for ticket in tickets) or ("(no tickets)",)
    if wanted is True and not tickets:
        yield fail(("ticket",), "no ticket was opened", ("a ticket",), opened)
    elif wanted is False and tickets:
        yield fail(("ticket",), "a ticket was opened", ("no ticket",), opened)
    elif isinstance(wanted, TicketFields):
        fields = wanted.model_dump(exclude_none=True)
        if not any(_ticket_has(ticket, fields) for ticket in tickets):
            what = ", ".join(f"{key} {value!r}" for key, value in fields.items()) or "any fields"
            why = "no ticket was opened" if not tickets else f"no ticket has {what}"
            yield fail(("ticket",), why, ("ticket " + show_value(fields),), opened)


def _ticket_has(ticket: TicketRecord, fields: Mapping[str, Any]) -> bool:
    return all(str(value).casefold() in str(getattr(ticket, key)).casefold() for key, value in fields.items())


def _flags(expect: Expect, outcome: Outcome, fail: _Fail) -> Iterator[Failure]:
    if expect.handoff is not None and expect.handoff != outcome.handoff:
        said = ("handed to a person",) if outcome.handoff else ("not handed to a person",)
        wanted = ("handed to a person",) if expect.handoff else ("not handed to a person",)
        yield fail(("handoff",), f"the conversation was{'' if outcome.handoff else ' not'} handed to a person",
                   wanted, said)  # fmt: skip
    moved = tuple(f"transferred to {flow}" for flow in outcome.transfers) or ("no transfer",)
    transfer = expect.transfer
    if transfer is True and not outcome.transfers:
        yield fail(("transfer",), "the conversation was not transferred", ("transferred to a flow",), moved)
    elif transfer is False and outcome.transfers:
        yield fail(
            ("transfer",), f"the conversation was transferred to {outcome.transfers[0]}", ("no transfer",), moved
        )
    elif isinstance(transfer, str) and transfer not in outcome.transfers:
        yield fail(("transfer",), f"the conversation was not transferred to {transfer}",
                   (f"transferred to {transfer}",), moved)  # fmt: skip
    if expect.flow is not None and expect.flow != outcome.flow:
        yield fail(("flow",), f"the conversation is in flow {outcome.flow}, not {expect.flow}",
                   (f"flow {expect.flow}",), (f"flow {outcome.flow}",))  # fmt: skip
    yield from _confirmation(expect.confirmation, outcome, fail)
    if expect.failed is not None and expect.failed != (outcome.failure is not None):
        said = (f"failed: {outcome.failure}",) if outcome.failure else ("answered",)
        message = f"the model failed: {outcome.failure}" if outcome.failure else "the model did not fail"
        yield fail(("failed",), message, ("failed" if expect.failed else "answered",), said)


def _confirmation(wanted: str | bool | None, outcome: Outcome, fail: _Fail) -> Iterator[Failure]:
    asked = tuple(f"asked to confirm {name}" for name in outcome.confirmations) or ("no confirmation asked",)
    if wanted is True and not outcome.asked:
        yield fail(("confirmation",), "the customer was not asked to confirm a call", ("a confirmation",), asked)
    elif wanted is False and outcome.asked:
        yield fail(("confirmation",), "the customer was asked to confirm a call", ("no confirmation",), asked)
    elif isinstance(wanted, str) and wanted not in outcome.confirmations:
        yield fail(("confirmation",), f"the customer was not asked to confirm a call of {wanted}",
                   (f"asked to confirm {wanted}",), asked)  # fmt: skip


def _budget(expect: Expect, outcome: Outcome, fail: _Fail) -> Iterator[Failure]:
    if expect.max_cost_usd is not None and outcome.cost_usd > expect.max_cost_usd:
        yield fail(("max_cost_usd",), f"the model cost {format_usd(outcome.cost_usd)}, more than "
                   f"{format_usd(expect.max_cost_usd)}", (f"at most {format_usd(expect.max_cost_usd)}",),
                   (format_usd(outcome.cost_usd),))  # fmt: skip
    if expect.max_tokens is not None and outcome.tokens > expect.max_tokens:
        yield fail(("max_tokens",), f"{outcome.tokens} tokens, more than {expect.max_tokens}",
                   (f"at most {expect.max_tokens} tokens",), (f"{outcome.tokens} tokens",))  # fmt: skip


def _matches(wanted: CalledCheck, call: CallRecord) -> bool:
    if call.name != wanted.tool or (wanted.ok is not None and wanted.ok == call.is_error):
        return False
    if not wanted.args:
        return True
    return _equal(call.arguments, wanted.args)


def _equal(actual: Any, expected: Any) -> bool:
    """Whether the argument the model sent is the one expected, as JSON compares values.

    A boolean equals only a boolean (Python's ``True == 1`` does not hold here), numbers compare as
    numbers (``1 == 1.0``), text exactly; a YAML date (``eta: 2026-11-25``) equals the text the model
    sent. A mapping expects a subset of the keys, each equal; a list the same items in order.
    """
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and actual is expected
    if isinstance(expected, int | float):
        return isinstance(actual, int | float) and actual == expected
    if isinstance(expected, date) and isinstance(actual, str):
        return actual == expected.isoformat()
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and _equal(actual[key], value) for key, value in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(_equal(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return type(actual) is type(expected) and bool(actual == expected)


def _wanted_line(wanted: CalledCheck) -> str:
    line = wanted.tool + (f" {show_value(wanted.args)}" if wanted.args else "")
    if wanted.ok is not None:
        line += " → ok" if wanted.ok else " → error"
    return line


def _call_line(call: CallRecord) -> str:
    return f"{call.shown()} → {'error' if call.is_error else 'ok'}"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"
