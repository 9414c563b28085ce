"""Asking the customer to approve a side-effecting tool call, and reading their answer.

A flow lists such tools under ``confirm``. The engine does not run the call the model made;
it shows the customer exactly what would happen and runs that same call, with the same
arguments, only after a clear yes. Anything else declines it, and the model hears so.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence

from supportbot.messages import ToolCall

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


def _describe(call: ToolCall) -> str:
    try:
        args = json.loads(call.arguments or "{}")
    except ValueError:
        args = None
    if not isinstance(args, dict) or not args:
        return f"• {call.name}"
    shown = ", ".join(f"{k}: {v}" for k, v in args.items())
    return f"• {call.name} ({shown})"


def confirmation_prompt(calls: Sequence[ToolCall]) -> str:
    """What the customer reads before anything with side effects runs."""
    lines = "\n".join(_describe(c) for c in calls)
    return f'Before I go ahead, please confirm this:\n{lines}\nReply "yes" to confirm, or tell me what to change.'


DECLINED = "Not run: the customer did not confirm this call. Their reply follows; do not call it again unless they ask."
