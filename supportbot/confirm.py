"""Asking the customer to approve a side-effecting tool call, and reading their answer.

A flow lists such tools under ``confirm``. The engine does not run the call the model made;
it asks the customer in words what would happen and runs that same call, with the same
arguments, only after a clear yes. Anything else declines it, and the model hears so.

The words are the tool's own sentence, ``@tool(confirm="Shall I open a ticket “{subject}” for
the team?")``, filled with the call's validated arguments; a tool without one (or a call whose
arguments do not fit it) gets a sentence made from its description.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pydantic import ValidationError

from supportbot.messages import ToolCall
from supportbot.tools.decorator import Tool

_YES = frozenset(
    {
        "yes",
        "y",
        "yeah",
        "yep",
        "yup",
        "sure",
        "ok",
        "okay",
        "confirm",
        "confirmed",
        "correct",
        "go ahead",
        "please do",
        "do it",
        "yes please",
        "please",
        "yes go ahead",
        "sounds good",
        "ja",
        "oui",
        "si",
        "sí",
        "da",
    }
)
_WORDS = re.compile(r"[^\w\s]+")


def is_yes(reply: str) -> bool:
    """True only for a short, unambiguous yes ("Yes!", "ok", "yes please"); "yes but..." is not."""
    words = " ".join(_WORDS.sub(" ", unicodedata.normalize("NFKC", reply).casefold()).split())
    return words in _YES


class Tools(Protocol):
    """Where the prompt finds a call's tool (a ``ToolRegistry``)."""

    def get(self, name: str) -> Tool[..., Any] | None: ...


_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)", re.DOTALL)


def fill(template: str, values: Mapping[str, Any]) -> str | None:
    """``template`` with each ``{name}`` replaced by ``values[name]``; None when a name is missing or empty.

    Only plain names are looked up: no attribute or index access and no format spec is ever
    evaluated (``{subject.__class__}`` gives None), so a template cannot reach past the values.
    """
    parts: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return None
    for literal, field, spec, conversion in parsed:
        parts.append(literal)
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            return None
        value = values.get(field)
        if value is None or value == "":
            return None
        parts.append(str(value))
    return "".join(parts)


def generic_sentence(tool: Tool[..., Any] | None) -> str:
    """ "Shall I go ahead and <the description's first sentence>?", or a plain question without one."""
    description = " ".join((tool.description if tool else "").split())
    match = _FIRST_SENTENCE.match(description)
    first = (match.group(1) if match else description).rstrip(".!?").strip()
    if not first:
        return "Shall I go ahead with that?"
    return f"Shall I go ahead and {first[0].lower()}{first[1:]}?"


def _sentence(call: ToolCall, tools: Tools | None) -> str:
    tool = tools.get(call.name) if tools is not None else None
    if tool is None or tool.confirm is None:
        return generic_sentence(tool)
    try:
        arguments = json.loads(call.arguments or "{}")
        values = tool.arguments.model.model_validate(arguments)
    except (ValueError, ValidationError):  # the call would fail anyway; it is asked about in general words
        return generic_sentence(tool)
    named = {p.name: getattr(values, p.field) for p in tool.arguments.params if not p.context}
    return fill(tool.confirm, named) or generic_sentence(tool)


def confirmation_prompt(calls: Sequence[ToolCall], tools: Tools | None = None) -> str:
    """What the customer reads before anything with side effects runs: a question per call, in words.

    Args:
        calls: the held calls, in the model's order.
        tools: where each call's tool (its ``confirm`` sentence and description) is found.
    """
    sentences = [_sentence(call, tools) for call in calls]
    answer = 'Reply "yes" to go ahead, or tell me what to change.'
    if len(sentences) == 1:
        return f"{sentences[0]} {answer}"
    questions = "\n".join(f"• {sentence}" for sentence in sentences)
    return f"Before I go ahead, please confirm:\n{questions}\n{answer}"


DECLINED = "Not run: the customer did not confirm this call. Their reply follows; do not call it again unless they ask."
