"""The flow-test file format (``tests/*.yaml``), as pydantic models with a description on every key.

``TestFile`` is the root: ``supportbot test`` validates each file with it, and ``supportbot schema
test`` prints its JSON Schema for editors. Several keys take a short form and a long form
(``called: [lookup_order]`` or ``called: [{tool: lookup_order, args: {...}}]``, ``reply_contains:
TEXT`` or a list); validators turn the short form into the long one, so the runner meets one shape.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from supportbot.flowtest._forms import (
    CUSTOMER_SCHEMA,
    EMPTY,
    Model,
    Texts,
    as_moment,
    as_text,
    as_texts,
    kind_of,
    one_kind_schema,
    one_or_list,
    quote_fix,
)
from supportbot.hints import DemoHint, check_pattern

__all__ = [
    "CallStep",
    "CalledCheck",
    "Case",
    "CustomerSpec",
    "Expect",
    "Fixtures",
    "ModelStep",
    "Order",
    "TestFile",
    "TicketFields",
    "TokenUsage",
    "Turn",
]


class CustomerSpec(Model):
    """A customer: the one who writes in a case, or another one stored as a fixture."""

    email: str | None = Field(None, description="The customer's email address.", examples=["ana@example.com"])
    name: str | None = Field(None, description="The customer's full name.", examples=["Ana Lima"])
    verified: bool = Field(
        False,
        description=(
            "Whether the channel proved who the customer is (a signed-in widget user, a Slack user, a DMARC-passing "
            "mail). Tools like lookup_order only answer a verified customer."
        ),
    )
    external_id: str | None = Field(
        None, description="The customer's id at the channel (a Slack user id, the shop's user id)."
    )


class Order(BaseModel):
    """One order, as the orders file has it: order_id and customer_email, and any other fields of the shop."""

    model_config = ConfigDict(extra="allow", frozen=True)

    order_id: Annotated[str, WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]})] = (
        Field(min_length=1, description="The order number, e.g. A1001 (a number is read as text).", examples=["A1001"])
    )
    customer_email: str | None = Field(
        None, description="Whose order it is: lookup_order shows it only to a verified customer with this email."
    )
    status: str | None = Field(None, description="The order's status.", examples=["shipped"])
    eta: str | date | None = Field(None, description="The expected delivery date.", examples=["2026-11-25"])

    @field_validator("order_id", mode="before")
    @classmethod
    def _number_is_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Fixtures(Model):
    """The data the project's real tools find while a case runs."""

    orders: list[Order] | None = Field(
        None,
        description=(
            "The order source for these cases, in the orders-file format; besides the keys shown, any of items, "
            "carrier, tracking_url, placed_at, shipped_at, delivered_at, total, currency and the shop's own. "
            "Without it: the project's orders file when orders.source is file, else no orders at all."
        ),
    )
    customers: list[CustomerSpec] | None = Field(
        None, description="Customers stored before each case (others a tool may look up)."
    )


class TokenUsage(Model):
    """Tokens a scripted model response is counted as (for cost and max_tokens); a count left out is estimated."""

    input_tokens: int | None = Field(
        None, ge=0, description="Prompt tokens (default: the characters of the request / 4)."
    )
    output_tokens: int | None = Field(
        None, ge=0, description="Completion tokens (default: the characters of the response / 4)."
    )


class CallStep(Model):
    """One tool call of a scripted response with parallel calls."""

    call: str = Field(min_length=1, description="The tool to call (one the flow lists, or transfer_to_<flow>).")
    args: dict[str, Any] = Field({}, description="The call's arguments, as the model would send them.")


class ModelStep(Model):
    """One scripted model response: exactly one of reply, call, calls and error."""

    model_config = ConfigDict(json_schema_extra=one_kind_schema)

    reply: str | None = Field(None, description="The model answers with this text.")
    call: str | None = Field(
        None, min_length=1, description="The model calls this tool (one the flow lists, or transfer_to_<flow>)."
    )
    args: dict[str, Any] = Field({}, description="The arguments of call.")
    calls: list[CallStep] | None = Field(
        None, min_length=1, description="The model calls several tools at once (parallel tool calls)."
    )
    error: str | None = Field(
        None,
        description="The model fails with this message: the customer gets the fallback and an escalation ticket opens.",
    )
    usage: TokenUsage | None = Field(None, description="The tokens this response counts as (default: an estimate).")

    @model_validator(mode="after")
    def _one_kind(self) -> ModelStep:
        given = [key for key in ("reply", "call", "calls", "error") if getattr(self, key) is not None]
        if len(given) != 1:
            found = f"; found {', '.join(given)}" if given else ""
            raise ValueError(f"give exactly one of reply:, call:, calls: and error:{found}")
        if self.args and self.call is None:
            raise ValueError("args: goes with call:; remove it or add call:")
        return self


class CalledCheck(Model):
    """A tool call the bot must have made: a tool name, or a mapping with the arguments to check."""

    tool: str = Field(min_length=1, description="The tool's name.", examples=["lookup_order"])
    args: dict[str, Any] = Field(
        {}, description="Arguments the call must have, with equal values; others the call has are not checked."
    )
    ok: bool | None = Field(None, description="true: the result was not an error; false: it was an error.")

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"tool": value}
        if not isinstance(value, dict):
            raise ValueError(f"expected a tool name or {{tool: NAME, args: {{...}}}}, got {kind_of(value)}")
        return value

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        return {"anyOf": [{"type": "string", "description": "A tool name: called, with any arguments."}, schema]}


class TicketFields(Model):
    """Fields one ticket must have; text is compared case-insensitively, as a substring."""

    subject: str | None = Field(None, description="Text the ticket's subject contains.")
    description: str | None = Field(None, description="Text the ticket's description contains.")
    priority: Literal["low", "normal", "high", "urgent"] | None = Field(None, description="The ticket's priority.")
    status: Literal["open", "pending", "solved", "closed"] | None = Field(None, description="The ticket's status.")
    kind: Literal["request", "handoff", "escalation"] | None = Field(
        None,
        description=(
            "request: opened with create_ticket; handoff: the conversation went to a person; escalation: opened "
            "when the model failed or a limit was reached."
        ),
    )


class Expect(Model):
    """Assertions: under a turn they check that turn; under a case, the whole conversation."""

    called: list[CalledCheck] | None = Field(
        None,
        json_schema_extra=one_or_list,
        description=(
            "Each item was called: a tool name, or {tool: NAME, args: {...}} (a subset of the call's arguments, "
            "equal values) with optional ok: true/false (the result was / was not an error)."
        ),
        examples=[["lookup_order"], [{"tool": "lookup_order", "args": {"order_id": "A1001"}}]],
    )
    not_called: Texts | None = Field(None, description="None of these tools was called.")
    reply_contains: Texts | None = Field(
        None,
        description=(
            "The bot's reply contains each text (case-insensitive). The reply of a turn is all the customer got in "
            "it, a confirmation question or fallback too; under a case, the last turn's reply."
        ),
    )
    reply_not_contains: Texts | None = Field(None, description="The bot's reply contains none of these texts.")
    reply_matches: str | None = Field(
        None, description="re.search finds this regular expression in the reply (case-sensitive; use (?i))."
    )
    ticket: bool | TicketFields | None = Field(
        None,
        description="true: a ticket was opened; false: none was; a mapping: one opened ticket has each field.",
    )
    handoff: bool | None = Field(None, description="The conversation was (true) / was not (false) handed to a person.")
    transfer: str | bool | None = Field(
        None,
        description="The conversation was transferred to this flow; false: to no flow; true: to any flow.",
    )
    flow: str | None = Field(
        None, min_length=1, description="After the turn (under a case: at the end) the conversation is in this flow."
    )
    confirmation: str | bool | None = Field(
        None,
        description=(
            "The turn ended asking the customer to approve a call of this tool; true: of any tool; false: it did "
            "not ask. Under a case: some turn did (false: none did)."
        ),
    )
    failed: bool | None = Field(None, description="The model failed and the customer got the fallback (true) or not.")
    max_cost_usd: float | None = Field(None, ge=0, description="The model cost at most this many US dollars.")
    max_tokens: int | None = Field(None, ge=0, description="Input plus output tokens were at most this many.")
    system_prompt_contains: Texts | None = Field(
        None,
        description=(
            "The system prompt sent to the model (for this case's customer, channel, flow and now) contains each "
            "text (case-sensitive). Under a case: the prompt of its first model request, or the prompt rendered "
            "for it when it has no turns."
        ),
    )
    system_prompt_omits: Texts | None = Field(None, description="The system prompt contains none of these texts.")

    # Before-validators pass null on to Model._has_value, which refuses it with the fix.
    @field_validator("not_called", mode="before")
    @classmethod
    def _tools(cls, value: Any) -> Any:
        return value if value is None else as_texts(value, empty="an empty tool name; give the tool's name")

    @field_validator("reply_contains", "reply_not_contains", mode="before")
    @classmethod
    def _reply_texts(cls, value: Any) -> Any:
        return value if value is None else as_texts(value, empty=EMPTY.format(what="reply"))

    @field_validator("system_prompt_contains", "system_prompt_omits", mode="before")
    @classmethod
    def _prompt_texts(cls, value: Any) -> Any:
        return value if value is None else as_texts(value, empty=EMPTY.format(what="system prompt"))

    @field_validator("called", mode="before")
    @classmethod
    def _one_call(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | dict) else value

    @field_validator("ticket", mode="wrap")
    @classmethod
    def _ticket(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if value is None or isinstance(value, bool):
            return handler(value)
        if isinstance(value, dict):
            return TicketFields.model_validate(value)
        raise ValueError(f"expected true, false or a mapping of ticket fields, got {kind_of(value)}")

    @field_validator("transfer", "confirmation", mode="wrap")
    @classmethod
    def _name_or_flag(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if value is None or isinstance(value, bool) or (isinstance(value, str) and value):
            return handler(value)
        raise ValueError(f"expected a name, true or false, got {kind_of(value)}")

    @field_validator("reply_matches", mode="before")
    @classmethod
    def _pattern(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(quote_fix(value))
        value = as_text(value)
        if value == "":
            raise ValueError("an empty pattern matches every reply; give the pattern to look for")
        if isinstance(value, str):
            check_pattern(value)
        return value


class Turn(Model):
    """One message of the customer, what the model answers (scripted or not), and what must hold afterwards."""

    customer: Annotated[str, WithJsonSchema(CUSTOMER_SCHEMA)] = Field(
        description="What the customer writes (yes and no unquoted are the words, not true and false).",
        examples=["Where is my order A1001?"],
    )
    model: list[ModelStep] | None = Field(
        None,
        description=(
            "The model's responses in this turn, one per model request, in order (scripted). Without it the offline "
            "demo model answers, following the rules. Ignored with --live."
        ),
    )
    expect: Expect | None = Field(None, description="What must hold after this turn.")

    @field_validator("customer", mode="before")
    @classmethod
    def _words(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted yes/no (on/off, true/false) as a boolean; a customer typed words.
        if isinstance(value, bool):
            return "yes" if value else "no"
        return as_text(value)


class _Settings(Model):
    """The keys a file sets for its cases and a case may override."""

    _NULLABLE: ClassVar[frozenset[str]] = frozenset({"customer"})

    flow: str | None = Field(
        None, min_length=1, description="The flow the conversation starts in (default: flows.default)."
    )
    channel: str | None = Field(
        None, min_length=1, description="The channel ({{ channel }} in prompts): web, slack, email... (default: web)."
    )
    customer: CustomerSpec | None = Field(
        None, description="The customer who writes; omitted or null: an anonymous, unverified visitor."
    )
    now: datetime | None = Field(
        None,
        description='The time prompts and tools see, e.g. "2026-11-20T10:00:00Z" (default: the real time).',
    )
    fixtures: Fixtures | None = Field(None, description="Orders and customers the tools find.")
    rules: list[DemoHint] = Field(
        [],
        description=(
            "Rules for the offline demo model in turns without model: (the format of a flow's demo:): when the "
            "customer's message matches when:, or right after the tool after: answered, call a tool or reply."
        ),
    )

    @field_validator("now", mode="before")
    @classmethod
    def _moment(cls, value: Any) -> Any:
        return as_moment(value)

    @field_validator("customer", mode="before")
    @classmethod
    def _who(cls, value: Any) -> Any:
        if isinstance(value, bool | str | int | float | list):
            raise ValueError(
                f"expected the customer's keys (email:, name:, verified:) or null (an anonymous visitor), got "
                f"{kind_of(value)}; write e.g. customer: {{email: ana@example.com, verified: true}}"
            )
        return value


class Case(_Settings):
    """One test case: a conversation of turns. flow, channel, customer, now and fixtures override the file's values
    (fixtures key by key); its rules come before the file's."""

    name: str = Field(min_length=1, description="What the case shows; unique in its file (-k selects by it).")
    turns: list[Turn] = Field(
        [], description="The customer's messages in order. A case without turns may check the system prompt."
    )
    expect: Expect | None = Field(None, description="What must hold for the whole conversation, after the last turn.")


class TestFile(_Settings):
    """A flow-test file: defaults for its cases, and the cases."""

    __test__: ClassVar[bool] = False  # not a pytest test class, whatever its name

    cases: list[Case] = Field(min_length=1, description="The test cases.")
