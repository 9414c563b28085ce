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
"""

from __future__ import annotations

import re
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
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_trigger_one_action(self) -> DemoHint:
        if (self.when is None) == (self.after is None):
            raise ValueError("give exactly one of when: (a pattern of the customer's message) and after: (a tool)")
        if (self.call is None) == (self.reply is None):
            raise ValueError("give exactly one of call: (a tool to call) and reply: (text to answer)")
        if self.args and self.call is None:
            raise ValueError("args: goes with call:; remove it or add call:")
        return self

    def pattern(self) -> re.Pattern[str] | None:
        """``when`` compiled (case-insensitive), or None for an ``after`` rule."""
        return re.compile(self.when, re.IGNORECASE) if self.when is not None else None
