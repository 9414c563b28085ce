"""How the demo model picks a custom tool for a customer's message and fills its arguments.

A tool is a candidate when its name words (``warranty_status`` → warranty, status) or the content
words of its description overlap the customer's words: at least one name word, or two
description words. Words are compared lowercased, with plurals and ``-ing``/``-ed`` folded and
stopwords left out. The best-scoring tool wins (ties go to the name that sorts first), and it is
called only when each *required* argument of its JSON schema can be read from the message:

- ``enum``: a value the message mentions (a one-value ``enum`` needs no mention);
- ``integer``/``number``: a number in the message, within ``minimum``/``maximum``;
- a string with a ``pattern``: the first match of it; with ``format: email``: an email address;
- a string named like ``order_id``, ``tracking_number``, ``promo_code``, ``serial``, ``sku``: a
  word with a digit in it (``SN-12345``);
- a string named like ``question``, ``query``, ``text``, ``description``, ``reason``, ``subject``…:
  the message itself, shortened.

Anything else (a required boolean, a name, a list) can't be guessed, so the tool is not called.
An optional argument is sent only when the message clearly has it (an ``enum`` value, a ``pattern``
match, an email address).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TRANSFER_PREFIX = "transfer_to_"

_STOPWORDS = frozenset(
    """
    a about above after again all also am an and any are as at be because been before being below between both
    but by can could did do does doing done down during each either else etc few for from further had has have
    having he her here hers him his how i if in into is it its itself just me more most much my no nor not now
    of off on once one only or other our ours out over own same she should so some such than that the their
    them then there these they this those through to too under until up upon very via was we were what when
    where which while who whom whose why will with would you your yours yourself
    hi hello hey thanks thank please pls ok okay yes yeah sure may might must shall let lets like want wants
    need needs know tell help get got give make use used using call find look show check fetch see say ask
    tool function customer user given eg ie specific something anything thing someone
    hand conversation specialist transfer
    """.split()
)
"""Words that say nothing about which tool fits: function words, chat filler, and the generic verbs
tool descriptions start with ("Look up...", "Get..."), which customers use for anything."""

_WORD = re.compile(r"[^\W\d_]{2,}")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")
_TOKEN = re.compile(r"[^\W_](?:[\w-]*[^\W_])?")
# An address starts where no character of one stands before it: without the lookbehind, a long run
# like "a.a.a…" with no "@" is tried from every position, each to its end (quadratic).
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)", re.DOTALL)

_CODE_NAMES = frozenset({"id", "number", "code", "serial", "sku", "reference", "ref"})
_FREE_TEXT_NAMES = frozenset(
    {"question", "query", "text", "message", "description", "details", "detail", "reason", "subject", "topic",
     "issue", "problem", "comment", "summary", "request", "feedback"}
)  # fmt: skip
_SHORT_TEXT_NAMES = frozenset({"subject", "topic", "summary"})
_SHORT_TEXT = 80
_LONG_TEXT = 500


def fold(word: str) -> str:
    """A word reduced to a rough stem, the same way on both sides: ``warranties`` → ``warranty``,
    ``tracking``/``tracked`` → ``track``, ``shipping`` → ``ship``, ``charges`` → ``charg``."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if word[-1] == word[-2] and word[-1] not in "lsz":  # shipp → ship, but fill stays fill
                word = word[:-1]
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


_FOLDED_STOPWORDS = frozenset(fold(w) for w in _STOPWORDS)


def words(text: str) -> set[str]:
    """The content words of ``text``, folded; no stopwords, no numbers."""
    found = set()
    for word in _WORD.findall(text.casefold()):
        if word in _STOPWORDS:
            continue
        folded = fold(word)
        if folded not in _FOLDED_STOPWORDS:
            found.add(folded)
    return found


@dataclass(frozen=True, kw_only=True, slots=True)
class Match:
    """The tool that fits a message best.

    Attributes:
        name: the tool's name.
        arguments: the arguments to call it with; None when a required one could not be filled.
        missing: the required arguments that could not be filled.
        by_name: whether a word of the tool's name is in the message (not only words of its description).
    """

    name: str
    arguments: dict[str, Any] | None
    missing: tuple[str, ...] = field(default=())
    by_name: bool = False


def best_tool(text: str, tools: Iterable[Mapping[str, Any]]) -> Match | None:
    """The offered tool whose name and description best fit ``text``, with its arguments; None without a signal."""
    said = words(text)
    if not said:
        return None
    scored: list[tuple[int, str, bool, Mapping[str, Any]]] = []
    for tool in tools:
        function = tool.get("function") or {}
        name = str(function.get("name") or "")
        named, described = _tool_words(name, str(function.get("description") or ""))
        by_name, by_description = len(named & said), len(described & said)
        if by_name or by_description >= 2:
            scored.append((-(3 * by_name + by_description), name, by_name > 0, function))
    if not scored:
        return None
    _, name, by_words, function = min(scored, key=lambda item: item[:2])
    if name.startswith(TRANSFER_PREFIX):
        return Match(name=name, arguments={"reason": text[:200]}, by_name=by_words)
    arguments, missing = fill_arguments(function.get("parameters") or {}, text)
    return Match(name=name, arguments=None if missing else arguments, missing=missing, by_name=by_words)


def _tool_words(name: str, description: str) -> tuple[set[str], set[str]]:
    if name.startswith(TRANSFER_PREFIX):
        name = name.removeprefix(TRANSFER_PREFIX)
        # "Hand the conversation to the 'returns' specialist: <the flow's description>"
        description = description.partition(": ")[2] or description
    named = words(name.replace("_", " ").replace("-", " "))
    return named, words(description) - named


def purpose(tool: Mapping[str, Any], limit: int = 80) -> str:
    """What a tool does, for a sentence: its description's first sentence, lowercased and shortened."""
    function = tool.get("function") or {}
    description = " ".join(str(function.get("description") or "").split())
    first = _FIRST_SENTENCE.match(description)
    sentence = (first.group(1) if first else description).rstrip(".!?").strip()
    if not sentence:
        return str(function.get("name") or "").replace("_", " ")
    sentence = sentence[0].lower() + sentence[1:]
    return shorten(sentence, limit)


def shorten(text: str, limit: int) -> str:
    """``text`` with its whitespace collapsed, cut at a word boundary to at most ``limit`` characters."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


# -- arguments ---------------------------------------------------------------------------------------


class _Missing:
    """No value could be read for an argument."""


_MISSING = _Missing()


def fill_arguments(parameters: Mapping[str, Any], text: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The arguments of a tool read from ``text``, and the required ones that could not be.

    Required arguments are filled first, so a number or code in the message goes to them before an
    optional one; the result keeps the schema's order.
    """
    properties: Mapping[str, Any] = parameters.get("properties") or {}
    required = [name for name in parameters.get("required") or () if isinstance(name, str)]
    taken: list[tuple[int, int]] = []  # the spans of the message already given to an argument
    found: dict[str, Any] = {}
    missing: list[str] = []
    for name in required:
        schema = properties.get(name)
        value = _value(name, _plain_schema(schema), text, taken, required=True) if schema is not None else _MISSING
        if value is _MISSING:
            missing.append(name)
        else:
            found[name] = value
    for name, schema in properties.items():
        if name not in found and name not in required:
            value = _value(name, _plain_schema(schema), text, taken, required=False)
            if value is not _MISSING:
                found[name] = value
    return {name: found[name] for name in properties if name in found}, tuple(missing)


def _plain_schema(schema: Any) -> Mapping[str, Any]:
    """The schema of an argument without its ``null`` alternative (``str | None`` → ``str``)."""
    if not isinstance(schema, Mapping):
        return {}
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key) or () if isinstance(o, Mapping) and o.get("type") != "null"]
        if options:
            return {**{k: v for k, v in schema.items() if k != key}, **options[0]}
    kind = schema.get("type")
    if isinstance(kind, list):
        return {**schema, "type": next((k for k in kind if k != "null"), None)}
    return schema


def _value(name: str, schema: Mapping[str, Any], text: str, taken: list[tuple[int, int]], *, required: bool) -> Any:
    if "enum" in schema:
        return _enum(list(schema["enum"]), text, required=required)
    kind = schema.get("type")
    if kind in ("integer", "number") and required:
        return _number(schema, text, taken, integer=kind == "integer")
    if kind != "string":
        return _MISSING  # a boolean, a list, an object: nothing to read from words
    if isinstance(schema.get("pattern"), str):
        value = _pattern(schema["pattern"], text, taken)
    elif schema.get("format") == "email":
        value = _span(_EMAIL.finditer(text), taken)
    elif not required:
        return _MISSING
    elif _is_named(name, _CODE_NAMES) or name.casefold().startswith("order"):
        value = _code(text, taken)
    elif _is_named(name, _FREE_TEXT_NAMES):
        limit = _SHORT_TEXT if _is_named(name, _SHORT_TEXT_NAMES) else _LONG_TEXT
        value = shorten(text, min(limit, int(schema.get("maxLength") or limit)))
    else:
        return _MISSING
    if isinstance(value, _Missing) or not _fits_length(value, schema):
        return _MISSING
    return value


def _is_named(name: str, kinds: frozenset[str]) -> bool:
    """Whether ``name`` is one of ``kinds``, or ends in one (``tracking_number``, ``issue_description``)."""
    lowered = name.casefold()
    return lowered in kinds or lowered.rsplit("_", 1)[-1] in kinds


def _fits_length(value: str, schema: Mapping[str, Any]) -> bool:
    low, high = schema.get("minLength"), schema.get("maxLength")
    return (not isinstance(low, int) or len(value) >= low) and (not isinstance(high, int) or len(value) <= high)


def _enum(values: Sequence[Any], text: str, *, required: bool) -> Any:
    if len(values) == 1 and required:
        return values[0]  # a constant: there is nothing to choose
    best: tuple[int, int] | None = None
    for index, value in enumerate(values):
        if value is None or isinstance(value, bool):
            continue
        spelled = r"[\s_-]?".join(re.escape(part) for part in re.split(r"[\s_-]+", str(value)) if part)
        if not spelled:
            continue
        found = re.search(rf"(?<!\w){spelled}(?!\w)", text, re.IGNORECASE)
        if found and (best is None or (found.start(), index) < best):
            best = (found.start(), index)
    return values[best[1]] if best is not None else _MISSING


def _number(schema: Mapping[str, Any], text: str, taken: list[tuple[int, int]], *, integer: bool) -> Any:
    for found in _NUMBER.finditer(text):
        if _overlaps(found.span(), taken) or (integer and "." in found.group()):
            continue
        value: int | float = int(found.group()) if integer else float(found.group())
        if _in_bounds(value, schema):
            taken.append(found.span())
            return value
    return _MISSING


def _in_bounds(value: float, schema: Mapping[str, Any]) -> bool:
    def bound(key: str) -> float | None:
        given = schema.get(key)
        return float(given) if isinstance(given, int | float) and not isinstance(given, bool) else None

    low, high = bound("minimum"), bound("maximum")
    above, below = bound("exclusiveMinimum"), bound("exclusiveMaximum")
    return (
        (low is None or value >= low)
        and (high is None or value <= high)
        and (above is None or value > above)
        and (below is None or value < below)
    )


def _pattern(pattern: str, text: str, taken: list[tuple[int, int]]) -> str | _Missing:
    try:
        compiled = re.compile(pattern)
    except re.error:
        return _MISSING
    value = _span((m for m in compiled.finditer(text) if m.group()), taken)
    if not isinstance(value, _Missing):
        return value
    # An anchored pattern (^SN-\d+$) matches a word of the message rather than the whole of it.
    for token in _TOKEN.finditer(text):
        if not _overlaps(token.span(), taken) and compiled.search(token.group()):
            taken.append(token.span())
            return token.group()
    return _MISSING


def _code(text: str, taken: list[tuple[int, int]]) -> str | _Missing:
    """A word with a digit in it; one of three characters or more first (an order number before "2 items")."""
    tokens = [t for t in _TOKEN.finditer(text) if any(c.isdigit() for c in t.group())]
    return _span(sorted(tokens, key=lambda t: len(t.group()) < 3), taken)


def _span(matches: Iterable[re.Match[str]], taken: list[tuple[int, int]]) -> str | _Missing:
    """The first match not yet given to another argument (it is then taken)."""
    for found in matches:
        if not _overlaps(found.span(), taken):
            taken.append(found.span())
            return found.group()
    return _MISSING


def _overlaps(span: tuple[int, int], taken: list[tuple[int, int]]) -> bool:
    return any(span[0] < end and start < span[1] for start, end in taken)
