"""Flows: one YAML file each, loaded and checked once, then frozen.

A flow names what the model may do (``tools``), what needs the customer's yes (``confirm``),
where the conversation may go (``handoffs``) and what the model is told (``system_prompt``,
a sandboxed Jinja template). ``load_flows`` checks every file of a directory and reports every
problem at once, e.g. ``flows/returns.yaml:7: tools[1]: unknown tool 'lookup_ordr'; did you
mean 'lookup_order'?``, so a running server never meets a bad flow.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol

from jinja2 import Template, TemplateSyntaxError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from supportbot._frozen import fast_init
from supportbot._yaml import (
    Problems,
    YamlDocument,
    YamlPath,
    YamlSyntaxError,
    did_you_mean,
    load_yaml,
    validation_problems,
)
from supportbot.config import EXAMPLE_FLOWS_DIR, FLOW_NAME_PATTERN, MAX_OUTPUT_TOKENS
from supportbot.errors import ConfigError
from supportbot.hints import DemoHint
from supportbot.store.base import Customer
from supportbot.templating import check_template, compile_template, template_line

TRANSFER_PREFIX = "transfer_to_"
"""``handoffs: [returns]`` gives the model a tool ``transfer_to_returns``, described by the target's description."""

CONTEXT_NAMES = ("company", "customer", "channel", "now", "conversation_id", "flow")
"""The variables a flow template may use."""


class TemplateCustomer(Protocol):
    """What a template may read about the customer (``supportbot.store.base.Customer`` fits)."""

    @property
    def name(self) -> str | None: ...
    @property
    def email(self) -> str | None: ...
    @property
    def verified(self) -> bool: ...
    @property
    def display_name(self) -> str: ...
    @property
    def first_name(self) -> str | None: ...


class NamedFlow(Protocol):
    """Anything with a flow's name and description (a ``Flow``, a ``FlowInfo``)."""

    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class FlowInfo:
    """The ``flow`` variable of a template: only data, never the ``Flow`` object and its methods."""

    name: str
    description: str


@fast_init
@dataclass(frozen=True, kw_only=True, slots=True)
class TemplateContext:
    """The data a flow template renders with. Customer text is only ever data here, never template source.

    Attributes:
        company: the config's free-form ``company`` section.
        customer: the customer as the channel verified them.
        channel: ``web``, ``slack``, ``email``, ``terminal`` (``supportbot chat``)...
        now: the current time (timezone-aware).
        conversation_id: the conversation's id.
        flow: the flow (only its name and description reach the template); None means the
            rendering flow itself.
    """

    company: Mapping[str, Any]
    customer: TemplateCustomer
    channel: str
    now: datetime
    conversation_id: str
    flow: NamedFlow | None = None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelOverrides(_Section):
    """Per-flow model settings; None keeps the value of the config's ``llm`` section."""

    model: str | None = Field(
        None, min_length=1, description="Another model of the same endpoint for this flow; null: llm.model."
    )
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature, 0-2; null: llm.temperature.")
    top_p: float | None = Field(None, ge=0, le=1, description="Nucleus sampling, 0-1; null: llm.top_p.")
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_OUTPUT_TOKENS,
        description=f"The longest answer in tokens, 1-{MAX_OUTPUT_TOKENS}; null: llm.max_tokens.",
        examples=[800],
    )
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = Field(
        None, description="Passed through to the model; null: llm.reasoning_effort."
    )
    json_mode: bool = Field(
        False, description='Ask the model for a JSON object (response_format: {"type": "json_object"}).'
    )


class FlowLimits(_Section):
    """Per-conversation caps; reaching one ends the bot's part with a handoff to a human.

    ``max_tool_calls_per_response`` is the exception: it caps the tool calls run from one model
    response (those waiting for the customer's yes count too); each call past it gets an error
    result saying it was not run, and the conversation goes on.
    """

    max_tool_rounds: int = Field(
        6, ge=1, le=50, description="Model responses with tool calls in one turn (1-50); then a person takes over."
    )
    max_tool_calls_per_response: int = Field(
        8,
        ge=1,
        le=128,
        description=(
            "Tool calls run from one model response (1-128; calls waiting for the customer's yes count too); each "
            "call past it gets an error result saying it was not run, and the conversation goes on."
        ),
    )
    max_turns: int = Field(40, ge=1, description="Customer messages in one conversation; then a person takes over.")
    max_cost_usd: float = Field(
        0.50, ge=0, description="The model's cost of one conversation in US dollars; then a person takes over."
    )


class SuggestedPrompt(_Section):
    """A prompt a channel may offer before the customer writes (Slack's assistant threads): a short
    ``title`` on the button and the ``message`` it sends."""

    title: str = Field(
        min_length=1, max_length=75, description="The button's text (1-75 characters).", examples=["Where is my order?"]
    )
    message: str = Field(
        min_length=1,
        max_length=2000,
        description="The message the button sends as the customer's (1-2000 characters).",
        examples=["Where is my order? The number is "],
    )


_TEMPLATE_VARIABLES = (
    "Variables: company (the config's company section), customer (name, email, first_name, display_name, "
    "verified), channel (web, slack, email, terminal), now (a timezone-aware datetime), conversation_id, flow (name, "
    "description)."
)


class _FlowFile(_Section):
    """One flow: what the model is told, which tools it may use, what needs the customer's yes and where the
    conversation may go. One flow per file."""

    name: str = Field(
        pattern=FLOW_NAME_PATTERN,
        description=(
            "The flow's name (lower-case letters, digits and _, starting with a letter), unique among the flows; "
            "handoffs and flows.default name flows by it."
        ),
        examples=["order_status"],
    )
    description: str = Field(
        min_length=1,
        description=(
            "What the flow handles; it routes conversations here: it describes the transfer_to_<name> tool other "
            "flows get, and the template variable flow.description."
        ),
        examples=["Track orders, delivery dates and delivery problems"],
    )
    model: ModelOverrides = Field(
        ModelOverrides(), description="Model settings for this flow; a key left out keeps the config's llm value."
    )
    tools: list[str] = Field(
        [],
        description=(
            "The allowlist of tools the model may call in this flow (built-in or registered @tool functions); "
            "nothing else is offered. transfer_to_<flow> tools come from handoffs, not from here."
        ),
        examples=[["lookup_order", "create_ticket", "handoff_to_human"]],
    )
    confirm: list[str] = Field(
        [],
        description=(
            "Tools of this flow (side effects) that run only after the customer's explicit yes to that exact call."
        ),
        examples=[["create_ticket"]],
    )
    handoffs: list[str] = Field(
        [],
        description="Flows this one may transfer the conversation to; the model gets a transfer_to_<flow> tool each.",
        examples=[["returns", "general"]],
    )
    greeting: str | None = Field(
        None,
        description=(
            "The bot's first message when a conversation opens in this flow on a channel where the bot speaks first "
            "(the web widget; on Slack and email the customer writes first): a sandboxed Jinja template. "
            + _TEMPLATE_VARIABLES
            + " null (or blank once rendered): no greeting."
        ),
        examples=["Hi {{ customer.first_name or 'there' }}! How can I help with your order?"],
    )
    suggested_prompts: list[SuggestedPrompt] = Field(
        [],
        max_length=4,
        description=(
            "At most 4 prompts offered before the customer writes, where a channel can (Slack's assistant threads, "
            "which offer those of flows.default)."
        ),
    )
    system_prompt: str = Field(
        min_length=1,
        description=(
            "What the model is told, rendered for each turn: a sandboxed Jinja template (StrictUndefined, checked at "
            "load); customer text is only ever data. " + _TEMPLATE_VARIABLES
        ),
        examples=["You are the support assistant of {{ company.name }}. Today is {{ now.date() }}."],
    )
    limits: FlowLimits = Field(
        FlowLimits(), description="Per-conversation caps; reaching one hands the conversation to a person."
    )
    demo: list[DemoHint] = Field(
        [],
        description=(
            "Rules for the offline demo model (--demo, supportbot test), never sent to a real model: when the "
            "customer's message matches (or after a tool answered), call a tool or reply."
        ),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Flow:
    """One loaded flow: frozen data plus its compiled templates.

    Constructing one directly compiles the templates (a syntax error raises ``ConfigError``);
    ``load_flows`` / ``Flow.from_dict`` check everything else first.

    Attributes:
        source: the file it came from, as shown in messages (None when built in code).
        template_lines: line of each template's first line in ``source`` (for error messages).
    """

    name: str
    description: str
    system_prompt: str
    model: ModelOverrides = field(default_factory=ModelOverrides)
    tools: tuple[str, ...] = ()
    confirm: tuple[str, ...] = ()
    handoffs: tuple[str, ...] = ()
    greeting: str | None = None
    suggested_prompts: tuple[SuggestedPrompt, ...] = ()
    limits: FlowLimits = field(default_factory=FlowLimits)
    demo: tuple[DemoHint, ...] = ()
    source: str | None = None
    template_lines: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)
    _system_template: Template = field(init=False, repr=False, compare=False)
    _greeting_template: Template | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        templates: dict[str, Template | None] = {"system_prompt": None, "greeting": None}
        for key, text in (("system_prompt", self.system_prompt), ("greeting", self.greeting)):
            if text is None:
                continue
            try:
                templates[key] = compile_template(text)
            except TemplateSyntaxError as exc:
                raise ConfigError(
                    f"{self._where(key, exc.lineno)}: {key}: {(exc.message or '').rstrip('.')}; fix the Jinja markup"
                ) from None
        object.__setattr__(self, "_system_template", templates["system_prompt"])
        object.__setattr__(self, "_greeting_template", templates["greeting"])

    @property
    def transfer_tools(self) -> tuple[str, ...]:
        """The generated tool names for ``handoffs`` (``transfer_to_returns``...)."""
        return tuple(TRANSFER_PREFIX + target for target in self.handoffs)

    def render_system_prompt(self, ctx: TemplateContext) -> str:
        """Render the system prompt for one turn.

        Raises:
            ConfigError: the template failed for this context (e.g. an undefined value in a branch
                the load-time trial render did not take); the message names file and line.
        """
        return self._render(self._system_template, "system_prompt", ctx)

    def render_greeting(self, ctx: TemplateContext) -> str | None:
        """Render the greeting, or None when the flow has none (or it renders to blank)."""
        if self._greeting_template is None:
            return None
        text = self._render(self._greeting_template, "greeting", ctx).strip()
        return text or None

    def variables(self, ctx: TemplateContext) -> dict[str, Any]:
        """The template variables for ``ctx`` (exactly ``CONTEXT_NAMES``)."""
        return {
            "company": ctx.company,
            "customer": ctx.customer,
            "channel": ctx.channel,
            "now": ctx.now,
            "conversation_id": ctx.conversation_id,
            "flow": FlowInfo(name=(ctx.flow or self).name, description=(ctx.flow or self).description),
        }

    def _render(self, template: Template, key: str, ctx: TemplateContext) -> str:
        try:
            return template.render(self.variables(ctx))
        except Exception as exc:
            raise ConfigError(f"{self._where(key, template_line(exc))}: {key}: cannot render: {exc}") from exc

    def _where(self, key: str, line: int | None) -> str:
        start = self.template_lines.get(key)
        where = self.source or f"flow {self.name!r}"
        return f"{where}:{start + (line or 1) - 1}" if start is not None else where

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        tool_names: Collection[str] | None = None,
        company: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> Flow:
        """Validate one flow given as data (handoff targets are not checked: they live in other files).

        Args:
            data: the flow's keys, as in a flow file.
            tool_names: the registered tools; None skips the tool checks.
            company: the config's ``company`` for the trial render; None uses placeholder values.
            source: the name to show in error messages.

        Raises:
            ConfigError: every problem, one per line.
        """
        problems = Problems()
        flow = _check(dict(data), None, source or "<flow>", tool_names, company, problems)
        problems.raise_if_any()
        if flow is None:  # only when problems were found, which raised above
            raise ConfigError(f"{source or '<flow>'}: the flow is invalid")
        return flow


class Flows(Mapping[str, Flow]):
    """The loaded flows by name, frozen, with the default flow that new conversations start in.

    ``flows["returns"]`` raises ``KeyError`` for an unknown name; ``flows.get(name)`` falls back
    to the default flow (a conversation stored under a flow that has since been removed
    continues in the default one) instead of returning None.
    """

    __slots__ = ("_by_name", "_default")

    def __init__(self, flows: Iterable[Flow], *, default: str | None = None) -> None:
        by_name: dict[str, Flow] = {}
        for flow in flows:
            if flow.name in by_name:
                raise ConfigError(f"flow {flow.name!r} is defined twice; give each flow a unique name")
            by_name[flow.name] = flow
        if not by_name:
            raise ConfigError("no flows; add at least one flow file")
        missing = [f"{f.name} -> {t}" for f in by_name.values() for t in f.handoffs if t not in by_name]
        if missing:
            raise ConfigError(f"handoffs name flows that do not exist: {', '.join(missing)}; add them or fix the names")
        if default is None:
            default = "general" if "general" in by_name else min(by_name)
        elif default not in by_name:
            raise ConfigError(
                f"flows.default: no flow named {default!r}{did_you_mean(default, by_name)}; "
                f"use one of {', '.join(sorted(by_name))}"
            )
        self._by_name: Mapping[str, Flow] = MappingProxyType(by_name)
        self._default = default

    def __getitem__(self, name: str) -> Flow:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"Flows({sorted(self._by_name)!r}, default={self._default!r})"

    @property
    def default_name(self) -> str:
        """The name of the flow new conversations start in."""
        return self._default

    @property
    def default(self) -> Flow:
        """The flow new conversations start in."""
        return self._by_name[self._default]

    # Unlike Mapping.get this never returns None: every caller needs *a* flow to run.
    def get(self, name: str | None, default: Flow | None = None) -> Flow:  # type: ignore[override]
        """The flow named ``name``; else ``default`` if given; else the default flow."""
        found = self._by_name.get(name) if name is not None else None
        return found or default or self.default


Locate = Callable[[YamlPath], tuple[str, int | None]]
"""Where a config key is written (``Config.locate``): file and line, for messages about ``flows.*``."""


def load_flows(
    directory: Path,
    *,
    tool_names: Collection[str],
    company: Mapping[str, Any] | None = None,
    default: str | None = None,
    include_examples: bool = False,
    locate: Locate | None = None,
) -> Flows:
    """Load and check every ``*.yaml`` / ``*.yml`` flow file in ``directory``.

    Args:
        directory: the flows directory (``config.flows.dir``).
        tool_names: the names of the registered tools (the registry's ``names()``).
        company: the config's ``company``, used for the trial render of the templates.
        default: the flow new conversations start in (``config.flows.default``); None picks
            ``general`` if it exists, else the first name.
        include_examples: load the example flows shipped with supportbot too
            (``flows.include_examples``); a flow in ``directory`` replaces the example of its name.
        locate: where the ``flows`` keys are written (``Config.locate``), so that a wrong
            ``flows.dir`` or ``flows.default`` is reported at its line in the config file.

    Raises:
        ConfigError: listing every problem of every file, one per line, as
            ``flows/returns.yaml:7: tools[1]: unknown tool 'lookup_ordr'; did you mean 'lookup_order'?``.
    """
    problems = Problems()
    flows = check_flows(
        directory,
        tool_names=tool_names,
        company=company,
        default=default,
        include_examples=include_examples,
        locate=locate,
        problems=problems,
    )
    problems.raise_if_any()
    if flows is None:  # only when problems were found, which raised above
        raise ConfigError(f"{_display(Path(directory))}: the flows are invalid")
    return flows


def check_flows(
    directory: Path,
    *,
    tool_names: Collection[str] | None,
    company: Mapping[str, Any] | None = None,
    default: str | None = None,
    include_examples: bool = False,
    locate: Locate | None = None,
    problems: Problems,
) -> Flows | None:
    """Like ``load_flows``, but every problem goes to ``problems`` and the result is None if there was any.

    ``tool_names`` None skips the tool checks (e.g. when a tools module could not be imported).
    """
    directory = Path(directory)
    shown = _display(directory)
    own = directory.resolve() != EXAMPLE_FLOWS_DIR
    examples_note = _examples_note(shown) if own and not include_examples else ""

    before = len(problems.items)
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        if locate is None:
            problems.add(shown, None, "", f"the flows directory {what}; create it or set flows.dir in the config")
        else:
            file, line = locate(("flows", "dir"))
            fix = "create it and add flow files, or remove flows.dir to use the example flows"
            problems.add(file, line, "flows.dir", f"{shown} {what}; {fix}")
        return None
    files = _flow_files(directory)
    if not files and not (own and include_examples):
        problems.add(shown, None, "", "no flow files (*.yaml) here; add one (see the example flows) or set flows.dir")
        return None
    parsed: list[tuple[str, YamlDocument]] = [p for f in files if (p := _parse(f, problems)) is not None]
    if own and include_examples:
        names = {_name(doc) for _, doc in parsed}
        for example in _flow_files(EXAMPLE_FLOWS_DIR):
            found = _parse(example, problems)
            if found is not None and _name(found[1]) not in names:  # a flow of one's own replaces the example
                parsed.append(found)
    checked: list[tuple[str, YamlDocument, Flow | None]] = []
    first_seen: dict[str, str] = {}
    for file, doc in parsed:
        flow = _check(doc.data, doc, file, tool_names, company, problems)
        name = _name(doc)
        if name is not None:
            if name in first_seen:
                problems.add(
                    file,
                    doc.line(("name",)),
                    "name",
                    f"flow {name!r} is already defined in {first_seen[name]}; give each flow a unique name",
                )
            else:
                first_seen[name] = f"{file}:{doc.line(('name',))}"
        checked.append((file, doc, flow))
    for file, doc, _ in checked:
        for index, target in _strings(doc.data, "handoffs"):
            if target != _name(doc) and target not in first_seen:
                hint = did_you_mean(target, first_seen) or f"; flows in {shown}: {', '.join(sorted(first_seen))}"
                note = examples_note if target in _EXAMPLE_NAMES else ""
                problems.add(
                    file, doc.line(("handoffs", index)), f"handoffs[{index}]", f"unknown flow {target!r}{hint}{note}"
                )
    if default is not None and default not in first_seen:
        file, line = locate(("flows", "default")) if locate is not None else (shown, None)
        names_found = ", ".join(sorted(first_seen)) or "none"
        fix = did_you_mean(default, first_seen) or (
            f"; set flows.default to one of them or add {Path(shown) / (default + '.yaml')}"
        )
        note = examples_note if default in _EXAMPLE_NAMES else ""
        problems.add(
            file, line, "flows.default", f"no flow named {default!r} in {shown} (found: {names_found}){fix}{note}"
        )
    if len(problems.items) > before:
        return None
    return Flows([flow for _, _, flow in checked if flow is not None], default=default)


def _flow_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )


def _parse(path: Path, problems: Problems) -> tuple[str, YamlDocument] | None:
    file = _display(path)
    try:
        return file, load_yaml(path.read_text(encoding="utf-8"))
    except YamlSyntaxError as exc:
        problems.add(file, exc.line, "", f"invalid YAML: {exc.problem}; check indentation and quoting")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(file, None, "", f"cannot read the flow file ({exc}); check the file and its permissions")
    return None


def _name(doc: YamlDocument) -> str | None:
    name = doc.data.get("name") if isinstance(doc.data, dict) else None
    return name if isinstance(name, str) else None


_EXAMPLE_NAMES = frozenset(p.stem for p in EXAMPLE_FLOWS_DIR.glob("*.yaml"))
"""The example flows' names (each file is named after its flow)."""


def _examples_note(shown: str) -> str:
    return (
        f" (the example flows are not loaded once flows.dir is set: set flows.include_examples: true to keep them "
        f"beside yours, or copy them into {shown} from {EXAMPLE_FLOWS_DIR})"
    )


# Why a limit exists, shown after "70000 is more than 65536".
_REASONS: dict[YamlPath, str] = {("model", "max_tokens"): "the model's output limit"}


def _check(
    data: Any,
    doc: YamlDocument | None,
    file: str,
    tool_names: Collection[str] | None,
    company: Mapping[str, Any] | None,
    problems: Problems,
) -> Flow | None:
    """Every check of one flow that needs no other file; the Flow, or None if anything is wrong."""

    def line(path: tuple[str | int, ...]) -> int | None:
        return doc.line(path) if doc is not None else None

    if not isinstance(data, dict):
        problems.add(file, line(()), "", "a flow file must be a mapping with name:, description:, system_prompt:")
        return None
    before = len(problems.items)
    spec: _FlowFile | None = None
    try:
        spec = _FlowFile.model_validate(data)
    except ValidationError as exc:
        validation_problems(exc, _FlowFile, file=file, doc=doc, problems=problems, reasons=_REASONS)

    def add(path: tuple[str | int, ...], key: str, message: str) -> None:
        problems.add(file, line(path), key, message)

    tools = _strings(data, "tools")
    listed = {name for _, name in tools}
    known = set(tool_names) if tool_names is not None else None
    seen: set[str] = set()
    for index, name in tools:
        if name.startswith(TRANSFER_PREFIX):
            target = name.removeprefix(TRANSFER_PREFIX)
            message = f"{name!r} is generated from handoffs; remove it here and list {target!r} under handoffs"
            add(("tools", index), f"tools[{index}]", message)
        elif known is not None and name not in known:
            hint = did_you_mean(name, known) or f"; registered tools: {', '.join(sorted(known)) or 'none'}"
            add(("tools", index), f"tools[{index}]", f"unknown tool {name!r}{hint}")
        if name in seen:
            add(("tools", index), f"tools[{index}]", f"{name!r} is listed twice; keep one")
        seen.add(name)
    for index, name in _strings(data, "confirm"):
        if name not in listed:
            add(("confirm", index), f"confirm[{index}]", f"{name!r} is not in tools; add it to tools or remove it here")
    for index, target in _strings(data, "handoffs"):
        if target == data.get("name"):
            add(("handoffs", index), f"handoffs[{index}]", "a flow cannot hand off to itself; remove it")
    hints = data.get("demo")
    offered_tools = listed | {TRANSFER_PREFIX + t for _, t in _strings(data, "handoffs")}
    for index, hint in enumerate(hints if isinstance(hints, list) else []):
        for key in ("call", "after"):
            called = hint.get(key) if isinstance(hint, dict) else None
            if isinstance(called, str) and called not in offered_tools:
                offered = ", ".join(sorted(offered_tools)) or "none"
                add(
                    ("demo", index, key),
                    f"demo[{index}].{key}",
                    f"{called!r} is not a tool of this flow (its tools: {offered}); "
                    "list it under tools (or its flow under handoffs)",
                )
    samples = _samples(company, data)
    for key in ("system_prompt", "greeting"):
        source = data.get(key)
        if isinstance(source, str):
            start = doc.value_line((key,)) if doc is not None else None
            for offset, message in check_template(source, samples)[1]:
                problems.add(file, start + offset - 1 if start is not None else None, key, message)
    if spec is None or len(problems.items) > before:
        return None
    return Flow(
        name=spec.name,
        description=spec.description.strip(),
        system_prompt=spec.system_prompt,
        model=spec.model,
        tools=tuple(spec.tools),
        confirm=tuple(spec.confirm),
        handoffs=tuple(spec.handoffs),
        greeting=spec.greeting,
        suggested_prompts=tuple(spec.suggested_prompts),
        limits=spec.limits,
        demo=tuple(spec.demo),
        source=file,
        template_lines={
            k: doc.value_line((k,)) for k in ("system_prompt", "greeting") if k in data and doc is not None
        },
    )


def _strings(data: Any, key: str) -> list[tuple[int, str]]:
    """The string items of the list ``data[key]`` with their indexes (wrong types are pydantic's to report)."""
    items = data.get(key) if isinstance(data, dict) else None
    return [(i, v) for i, v in enumerate(items) if isinstance(v, str)] if isinstance(items, list) else []


class _AnyCompany(dict[str, Any]):
    """Trial-render stand-in when no company section is known: every key has a value."""

    def __missing__(self, key: str) -> str:
        return "Example"


def _samples(company: Mapping[str, Any] | None, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Variables for trial renders: a verified and an anonymous customer on each channel."""
    name, description = data.get("name"), data.get("description")
    flow = FlowInfo(name=name if isinstance(name, str) else "flow", description=str(description or ""))
    customers = [
        Customer(id="sample-verified", name="Ana Example", email="ana@example.com", verified=True),
        Customer(id="sample-anonymous"),
    ]
    now = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
    return [
        {
            "company": company if company is not None else _AnyCompany(),
            "customer": customer,
            "channel": channel,
            "now": now,
            "conversation_id": "sample-conversation",
            "flow": flow,
        }
        for customer in customers
        for channel in ("web", "slack", "email", "terminal")
    ]


def _display(path: Path) -> str:
    """A path as short as possible for messages: relative to the working directory when inside it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
