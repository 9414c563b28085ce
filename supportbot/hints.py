"""Rules an offline model follows: a flow's ``demo:`` hints and the rules of a ``supportbot test`` script.

A real model never sees them: the engine passes a flow's hints in ``LLMRequest.hints``, the
OpenAI-compatible client leaves them out of the request, and only the offline demo model (``--demo``,
``supportbot test``) acts on them.

```yaml
demo:
  - when: "warranty .*?(?P<serial>SN-\\d+)"   # searched in the customer's message, case-insensitive
    call: warranty_status
    args: {serial: "{serial}"}                 # {name}: a named group of ``when``
  - after: warranty_status                     # right after that tool's result came back
    reply: "Your warranty runs until {expires}."   # {key}: a top-level key of the tool's result
```

A ``when`` rule's placeholders are checked when it loads; an ``after`` rule applies only to a result
that has each key it names. ``render`` and ``fill_arguments`` fill them, the same way for both.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# What the model validator below checks, for editors: one trigger, one action, args only with call.
_ONE_TRIGGER_ONE_ACTION: dict[str, Any] = {
    "allOf": [
        {"oneOf": [{"required": ["when"]}, {"required": ["after"]}]},
        {"oneOf": [{"required": ["call"]}, {"required": ["reply"]}]},
    ],
    "dependentRequired": {"args": ["call"]},
}


def check_pattern(pattern: str) -> None:
    """Raise ``ValueError`` (for a pydantic validator) when ``pattern`` is not a valid regular expression."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None


class DemoHint(BaseModel):
    """One rule: on a customer message matching ``when`` (or right after the tool ``after`` answered),
    call a tool or reply with text."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_ONE_TRIGGER_ONE_ACTION)

    when: str | None = Field(
        None,
        description=(
            "A regular expression searched (case-insensitive) in the customer's latest message; its named "
            "groups (?P<name>...) fill {name} in args and reply."
        ),
        examples=["warranty .*?(?P<serial>SN-\\d+)"],
    )
    after: str | None = Field(
        None,
        description="The name of a tool: the rule applies right after that tool's result came back.",
        examples=["warranty_status"],
    )
    call: str | None = Field(
        None, description="The tool to call (one the flow lists, or transfer_to_<flow>).", examples=["warranty_status"]
    )
    args: dict[str, Any] = Field(
        {},
        description="The call's arguments; in a string, {name} is replaced by the named group of when.",
        examples=[{"serial": "{serial}"}],
    )
    reply: str | None = Field(
        None,
        description=(
            "Text to answer with instead of calling a tool; {name} is a named group of when, or a top-level key "
            "of the tool result after after:."
        ),
    )

    @field_validator("when")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            check_pattern(value)
        return value

    @field_validator("args")
    @classmethod
    def _json_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        # YAML reads `2026-01-01` as a date: the call's arguments must be JSON, so it becomes ISO text.
        converted: dict[str, Any] = _as_json(value)
        return converted

    @model_validator(mode="after")
    def _one_trigger_one_action(self) -> DemoHint:
        if (self.when is None) == (self.after is None):
            raise ValueError("give exactly one of when: (a pattern of the customer's message) and after: (a tool)")
        if (self.call is None) == (self.reply is None):
            raise ValueError("give exactly one of call: (a tool to call) and reply: (text to answer)")
        if self.args and self.call is None:
            raise ValueError("args: goes with call:; remove it or add call:")
        if self.when is not None:  # an after rule's {key} names a key of a result: nothing to check here
            groups = re.compile(self.when).groupindex
            for place, text in self.templates():
                for name in placeholders(text):
                    if name not in groups:
                        known = f"its groups: {', '.join(groups)}" if groups else "it has no named groups"
                        raise ValueError(
                            f"'{{{name}}}' in {place} is not a named group of when ({known}); "
                            f"name a group (?P<{name}>...) or fix the placeholder"
                        )
        return self

    def templates(self) -> list[tuple[str, str]]:
        """Where ``{name}`` is filled in: every string of ``args`` (``args.tags[0]``), then ``reply``, with its text."""
        return [*_strings(self.args, "args"), *([("reply", self.reply)] if self.reply is not None else [])]

    def pattern(self) -> re.Pattern[str] | None:
        """``when`` compiled (case-insensitive), or None for an ``after`` rule."""
        return re.compile(self.when, re.IGNORECASE) if self.when is not None else None


def placeholders(template: str) -> list[str]:
    """The plain ``{name}`` fields of ``template`` (none when it is not valid format text), as hints fill them."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return []
    return [name for _, name, _, _ in parsed if name is not None and name.isidentifier()]


def _strings(value: Any, place: str) -> Iterator[tuple[str, str]]:
    """Every string in ``value`` (inside lists and objects too), with where it is (``args.tags[0]``)."""
    if isinstance(value, str):
        yield place, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{place}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{place}[{index}]")


def _as_json(value: Any) -> Any:
    """``value`` with what YAML reads but JSON has no type for (dates, times) as ISO text, in lists and objects too."""
    if isinstance(value, dict):
        return {str(key): _as_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_as_json(item) for item in value]
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


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
            parts.append(plain(values[name]))
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


def pairs(data: Mapping[str, Any], separator: str) -> str:
    """An object's ``key: value`` pairs in words, joined with ``separator``."""
    return separator.join(f"{key}: {plain(value)}" for key, value in data.items())


def plain(value: Any) -> str:
    """A JSON value in words: yes/no for booleans, lists joined with commas, objects in brackets."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(plain(item) for item in value)
    if isinstance(value, dict):
        return f"({pairs(value, ', ')})"
    return str(value)
