from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from supportbot.config import EXAMPLE_FLOWS_DIR
from supportbot.errors import ConfigError
from supportbot.flows import Flow, FlowInfo, Flows, TemplateContext, load_flows
from supportbot.store.base import Customer

TOOLS = ("lookup_order", "create_ticket", "handoff_to_human")
COMPANY = {"name": "Acme Outdoor", "website": "https://acme.example", "support_email": "help@acme.example"}
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)

MINIMAL = """\
name: {name}
description: The {name} flow
system_prompt: You help with {name}.
"""


@pytest.fixture
def flows_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Messages show paths relative to the working directory: flows/returns.yaml:7.
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "flows"
    directory.mkdir()
    return directory


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(directory: Path, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_flows(directory, tool_names=TOOLS, **kwargs)  # type: ignore[arg-type]
    return str(info.value).splitlines()


def context(customer: Customer | None = None, **changes: object) -> TemplateContext:
    values: dict[str, object] = {
        "company": COMPANY,
        "customer": customer or Customer(id="c1", name="Ana Example", email="ana@example.com", verified=True),
        "channel": "web",
        "now": NOW,
        "conversation_id": "conv-1",
    }
    values.update(changes)
    return TemplateContext(**values)  # type: ignore[arg-type]


# --- the example flows --------------------------------------------------------------------------


def test_the_example_flows_load() -> None:
    flows = load_flows(EXAMPLE_FLOWS_DIR, tool_names=TOOLS, company=COMPANY)
    assert sorted(flows) == ["general", "order_status", "returns"]
    assert flows.default_name == "general"
    order_status = flows["order_status"]
    assert order_status.tools == ("lookup_order", "create_ticket", "handoff_to_human")
    assert order_status.confirm == ("create_ticket",)
    assert order_status.handoffs == ("returns", "general")
    assert order_status.transfer_tools == ("transfer_to_returns", "transfer_to_general")
    assert set(flows["general"].handoffs) == {"order_status", "returns"}
    assert flows["returns"].handoffs == ("order_status", "general")
    assert all(flow.description and flow.limits.max_tool_rounds >= 1 for flow in flows.values())


def test_the_example_flows_render_for_every_kind_of_customer() -> None:
    flows = load_flows(EXAMPLE_FLOWS_DIR, tool_names=TOOLS, company={"name": "Acme Outdoor"})
    for flow in flows.values():
        for customer in (Customer(id="a", name="Ana Example", verified=True), Customer(id="b")):
            for channel in ("web", "slack", "email"):
                ctx = context(customer, channel=channel, company={"name": "Acme Outdoor"})
                prompt = flow.render_system_prompt(ctx)
                assert "Acme Outdoor" in prompt and "Tuesday, 24 November 2026" in prompt
                assert ("not verified" in prompt) is (not customer.verified) or flow.name == "general"
                greeting = flow.render_greeting(ctx)
                assert greeting is not None and greeting.startswith("Hi Ana!" if customer.name else "Hi there!")
    assert "lookup_order" in flows["order_status"].render_system_prompt(context())


def test_the_flows_symlink_points_at_the_examples() -> None:
    root = Path(__file__).resolve().parent.parent / "flows"
    assert root.is_symlink() and root.resolve() == EXAMPLE_FLOWS_DIR


# --- templates ------------------------------------------------------------------------------------


def test_customer_text_is_data_never_template_source() -> None:
    flow = Flow(name="f", description="d", system_prompt="Customer: {{ customer.name }} / {{ company.name }}")
    customer = Customer(id="c", name="{{ 7*7 }} {% raw %}", verified=True)
    text = flow.render_system_prompt(context(customer, company={"name": "{{ config }}"}))
    assert text == "Customer: {{ 7*7 }} {% raw %} / {{ config }}"


def test_flow_variable_is_name_and_description_only() -> None:
    flow = Flow(name="f", description="Helps", system_prompt="{{ flow.name }}: {{ flow.description }}")
    assert flow.render_system_prompt(context()) == "f: Helps"
    other = context(flow=FlowInfo(name="g", description="Other"))
    assert flow.render_system_prompt(other) == "g: Other"
    passed_flow = context(flow=flow)  # the engine may pass the Flow; the template still sees only data
    assert flow.render_system_prompt(passed_flow) == "f: Helps"


def test_sandbox_refuses_dunder_access_at_load(flows_dir: Path) -> None:
    write(
        flows_dir,
        "general.yaml",
        """\
        name: general
        description: d
        system_prompt: |
          Hello.
          {{ ''.__class__.__mro__ }}
          {% if customer.verified and channel == 'never' %}{{ now.__class__ }}{% endif %}
        """,
    )
    lines = problems(flows_dir)
    assert lines[0] == (
        "flows/general.yaml:5: system_prompt: '__class__' is not allowed in the sandbox; "
        "templates may not use names starting with '_'"
    )
    assert lines[1].startswith("flows/general.yaml:5: system_prompt: '__mro__' is not allowed")
    assert lines[2].startswith("flows/general.yaml:6: system_prompt: '__class__' is not allowed")


def test_sandbox_refuses_at_render_time_too() -> None:
    # A template built in code skips the load checks; the sandbox itself still refuses.
    flow = Flow(name="f", description="d", system_prompt="x\n{{ customer.__class__.__mro__ }}")
    with pytest.raises(ConfigError, match=r"flow 'f': system_prompt: cannot render: access to attribute '__class__'"):
        flow.render_system_prompt(context())


def test_huge_repetition_is_refused(flows_dir: Path) -> None:
    write(flows_dir, "general.yaml", "name: general\ndescription: d\nsystem_prompt: \"{{ 'ab' * 10**7 }}\"\n")
    [line] = problems(flows_dir)
    assert line.startswith("flows/general.yaml:3: system_prompt: refused by the sandbox:")


def test_strict_undefined_catches_misspelt_attributes(flows_dir: Path) -> None:
    write(
        flows_dir,
        "general.yaml",
        """\
        name: general
        description: d
        greeting: "Hi {{ customer.frist_name }}"
        system_prompt: |
          Line one.
          {% if customer.verified %}
          Hello {{ customer.display_nam }}.
          {% endif %}
        """,
    )
    lines = problems(flows_dir)
    assert len(lines) == 2
    assert lines[0].startswith("flows/general.yaml:3: greeting: ")
    assert "has no attribute 'frist_name'; did you mean 'first_name'?" in lines[0]
    assert lines[1].startswith("flows/general.yaml:7: system_prompt: ")
    assert "did you mean 'display_name'?" in lines[1]


def test_unknown_variables_are_named(flows_dir: Path) -> None:
    write(flows_dir, "general.yaml", "name: general\ndescription: d\nsystem_prompt: |\n  A\n  {{ custmer.name }}\n")
    assert problems(flows_dir) == [
        "flows/general.yaml:5: system_prompt: unknown variable 'custmer'; did you mean 'customer'?"
    ]


def test_company_keys_are_checked_against_the_config(flows_dir: Path) -> None:
    write(flows_dir, "general.yaml", "name: general\ndescription: d\nsystem_prompt: Call {{ company.phone }}\n")
    [line] = problems(flows_dir, company={"name": "Acme"})
    assert line.startswith("flows/general.yaml:3: system_prompt: 'dict object' has no attribute 'phone'")
    # Without a company section to check against, any key is accepted at load time...
    flows = load_flows(flows_dir, tool_names=TOOLS)
    # ...and a missing one fails when rendering, naming the file and line.
    with pytest.raises(ConfigError, match=r"^flows/general\.yaml:3: system_prompt: cannot render: .*'phone'"):
        flows["general"].render_system_prompt(context(company={"name": "Acme"}))


def test_template_syntax_error_line_is_the_file_line(flows_dir: Path) -> None:
    write(
        flows_dir,
        "general.yaml",
        """\
        name: general
        description: d
        greeting: "Hi {{ customer.name }"
        system_prompt: |
          One.
          Two.
          {% if customer.verified %}
          Three.
        """,
    )
    lines = problems(flows_dir)
    assert lines[0].startswith("flows/general.yaml:3: greeting: template syntax error: unexpected '}'")
    # Jinja places "unexpected end" on the line where the unclosed block's last text starts.
    assert lines[1].startswith("flows/general.yaml:7: system_prompt: template syntax error: Unexpected end")
    assert lines[1].endswith("'if'; fix the Jinja markup")


def test_direct_construction_compiles_templates() -> None:
    with pytest.raises(ConfigError, match=r"flow 'f': system_prompt: unexpected '}'"):
        Flow(name="f", description="d", system_prompt="{{ x }")
    assert Flow(name="f", description="d", system_prompt="s").render_greeting(context()) is None


# --- structure ------------------------------------------------------------------------------------


def test_unknown_tool_with_did_you_mean(flows_dir: Path) -> None:
    write(
        flows_dir,
        "returns.yaml",
        """\
        name: returns
        description: Returns and refunds
        system_prompt: You handle returns.
        model: {temperature: 0.3}
        handoffs: []
        tools:
          - create_ticket
          - lookup_ordr
          - send_money
        """,
    )
    assert problems(flows_dir) == [
        "flows/returns.yaml:8: tools[1]: unknown tool 'lookup_ordr'; did you mean 'lookup_order'?",
        "flows/returns.yaml:9: tools[2]: unknown tool 'send_money'; registered tools: create_ticket, "
        "handoff_to_human, lookup_order",
    ]


def test_all_problems_of_all_files_at_once(flows_dir: Path) -> None:
    write(flows_dir, "a.yaml", "name: general\ndescription: d\nsystem_prompt: s\nmodel: {temprature: 1}\n")
    write(flows_dir, "b.yaml", "name: billing\ndescription: d\nsystem_prompt: [s\n")
    write(
        flows_dir,
        "c.yaml",
        """\
        name: Orders
        system_prompt: s
        tools: [lookup_order, transfer_to_general, lookup_order]
        confirm: [create_ticket]
        handoffs: [genral, Orders, zzz]
        limits: {max_tool_rounds: 0}
        """,
    )
    write(flows_dir, "d.yml", "name: general\ndescription: again\nsystem_prompt: s\n")
    write(flows_dir, "e.yaml", "- not\n- a mapping\n")
    write(flows_dir, "f.yaml", MINIMAL.format(name="shipping") + "model: {max_tokens: 70000}\n")
    assert problems(flows_dir) == [
        "flows/a.yaml:4: model.temprature: unknown key 'temprature'; did you mean 'temperature'?",
        "flows/b.yaml:4: invalid YAML: while parsing a flow sequence expected ',' or ']', but got '<stream end>'; "
        "check indentation and quoting",
        "flows/c.yaml:1: description: missing required key 'description'; add it",
        "flows/c.yaml:1: name: 'Orders' does not match the pattern ^[a-z][a-z0-9_]*$; write it like 'order_status'",
        "flows/c.yaml:3: tools[1]: 'transfer_to_general' is generated from handoffs; remove it here and list "
        "'general' under handoffs",
        "flows/c.yaml:3: tools[2]: 'lookup_order' is listed twice; keep one",
        "flows/c.yaml:4: confirm[0]: 'create_ticket' is not in tools; add it to tools or remove it here",
        "flows/c.yaml:5: handoffs[0]: unknown flow 'genral'; did you mean 'general'?",
        "flows/c.yaml:5: handoffs[1]: a flow cannot hand off to itself; remove it",
        "flows/c.yaml:5: handoffs[2]: unknown flow 'zzz'; flows in flows: Orders, general, shipping",
        "flows/c.yaml:6: limits.max_tool_rounds: 0 is less than 1; use at least 1",
        "flows/d.yml:1: name: flow 'general' is already defined in flows/a.yaml:1; give each flow a unique name",
        "flows/e.yaml:1: a flow file must be a mapping with name:, description:, system_prompt:",
        "flows/f.yaml:4: model.max_tokens: 70000 is more than 65536, the model's output limit; use at most 65536",
    ]


def test_missing_directory_and_empty_directory(flows_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^nowhere: the flows directory does not exist"):
        load_flows(Path("nowhere"), tool_names=TOOLS)
    with pytest.raises(ConfigError, match=r"^flows: no flow files \(\*\.yaml\) here"):
        load_flows(flows_dir, tool_names=TOOLS)


def test_model_overrides_and_limits(flows_dir: Path) -> None:
    write(
        flows_dir,
        "general.yaml",
        MINIMAL.format(name="general")
        + "model: {model: other-model, temperature: 0.2, top_p: 0.5, max_tokens: 300, reasoning_effort: low, "
        "json_mode: true}\nlimits: {max_tool_rounds: 2, max_turns: 5, max_cost_usd: 0.1}\n",
    )
    flow = load_flows(flows_dir, tool_names=TOOLS)["general"]
    assert (flow.model.model, flow.model.temperature, flow.model.top_p) == ("other-model", 0.2, 0.5)
    assert (flow.model.max_tokens, flow.model.reasoning_effort, flow.model.json_mode) == (300, "low", True)
    assert (flow.limits.max_tool_rounds, flow.limits.max_turns, flow.limits.max_cost_usd) == (2, 5, 0.1)
    assert flow.limits.max_tool_calls_per_response == 8
    default = Flow(name="x", description="d", system_prompt="s")
    assert (default.model.model, default.model.json_mode, default.limits.max_tool_rounds) == (None, False, 6)
    assert (default.limits.max_turns, default.limits.max_cost_usd) == (40, 0.50)
    assert default.limits.max_tool_calls_per_response == 8


def test_tool_calls_per_response_limit_is_read_and_checked(flows_dir: Path) -> None:
    write(flows_dir, "general.yaml", MINIMAL.format(name="general") + "limits: {max_tool_calls_per_response: 2}\n")
    assert load_flows(flows_dir, tool_names=TOOLS)["general"].limits.max_tool_calls_per_response == 2
    write(flows_dir, "a.yaml", MINIMAL.format(name="a") + "limits:\n  max_tool_calls_per_response: 0\n")
    write(flows_dir, "b.yaml", MINIMAL.format(name="b") + "limits: {max_tool_calls_per_response: 1000}\n")
    write(flows_dir, "c.yaml", MINIMAL.format(name="c") + "limits: {max_tool_calls_per_response: many}\n")
    assert problems(flows_dir) == [
        "flows/a.yaml:5: limits.max_tool_calls_per_response: 0 is less than 1; use at least 1",
        "flows/b.yaml:4: limits.max_tool_calls_per_response: 1000 is more than 128; use at most 128",
        "flows/c.yaml:4: limits.max_tool_calls_per_response: expected a whole number, got 'many'",
    ]


# --- the Flows mapping ------------------------------------------------------------------------------


def test_default_flow_and_lookup(flows_dir: Path) -> None:
    for name in ("general", "returns"):
        write(flows_dir, f"{name}.yaml", MINIMAL.format(name=name))
    flows = load_flows(flows_dir, tool_names=TOOLS, default="returns")
    assert flows.default.name == "returns"
    assert flows.get("general").name == "general"
    assert flows.get("removed_long_ago").name == "returns"
    assert flows.get(None).name == "returns"
    assert "general" in flows and len(flows) == 2
    with pytest.raises(KeyError):
        flows["removed_long_ago"]
    assert load_flows(flows_dir, tool_names=TOOLS).default_name == "general"
    assert problems(flows_dir, default="sales") == [
        "flows: flows.default: no flow named 'sales' in flows (found: general, returns); "
        "set flows.default to one of them or add flows/sales.yaml"
    ]


def test_flows_built_in_code_are_checked() -> None:
    a = Flow(name="a", description="d", system_prompt="s", handoffs=("b",))
    with pytest.raises(ConfigError, match=r"handoffs name flows that do not exist: a -> b"):
        Flows([a])
    with pytest.raises(ConfigError, match="defined twice"):
        Flows([Flow(name="b", description="d", system_prompt="s")] * 2)
    assert Flows([a, Flow(name="b", description="d", system_prompt="s")]).default_name == "a"


def test_from_dict_checks_one_flow() -> None:
    flow = Flow.from_dict(
        {"name": "x", "description": "d", "system_prompt": "Hi {{ customer.display_name }}", "tools": ["lookup_order"]},
        tool_names=TOOLS,
    )
    assert flow.render_system_prompt(context()) == "Hi Ana Example"
    with pytest.raises(ConfigError) as info:
        Flow.from_dict({"name": "x", "system_prompt": "s", "tools": ["nope"]}, tool_names=TOOLS, source="x.yaml")
    assert str(info.value).splitlines() == [
        "x.yaml: description: missing required key 'description'; add it",
        "x.yaml: tools[0]: unknown tool 'nope'; registered tools: create_ticket, handoff_to_human, lookup_order",
    ]


# --- a flows directory of one's own -----------------------------------------------------------------


def at_line(line: int) -> object:
    """A stand-in for ``Config.locate``: every flows key is written at ``line`` of config.yaml."""
    return lambda path: ("config.yaml", line)


def test_own_directory_replaces_the_examples_and_says_so(flows_dir: Path) -> None:
    write(flows_dir, "a.yaml", MINIMAL.format(name="a") + "handoffs: [returns]\n")
    write(flows_dir, "b.yaml", MINIMAL.format(name="b"))
    note = (
        " (the example flows are not loaded once flows.dir is set: set flows.include_examples: true to keep them "
        f"beside yours, or copy them into flows from {EXAMPLE_FLOWS_DIR})"
    )
    assert problems(flows_dir, default="general", locate=at_line(7)) == [
        "config.yaml:7: flows.default: no flow named 'general' in flows (found: a, b); "
        "set flows.default to one of them or add flows/general.yaml" + note,
        "flows/a.yaml:4: handoffs[0]: unknown flow 'returns'; flows in flows: a, b" + note,
    ]
    # A name no example has gets no word about the examples.
    assert problems(flows_dir, default="sales", locate=at_line(7))[0].endswith("or add flows/sales.yaml")


def test_include_examples_keeps_them_and_an_own_flow_replaces_one(flows_dir: Path) -> None:
    write(flows_dir, "general.yaml", "name: general\ndescription: Ours\nsystem_prompt: s\nhandoffs: [shipping]\n")
    write(flows_dir, "shipping.yaml", MINIMAL.format(name="shipping") + "handoffs: [returns]\n")
    flows = load_flows(flows_dir, tool_names=TOOLS, company=COMPANY, default="general", include_examples=True)
    assert sorted(flows) == ["general", "order_status", "returns", "shipping"]
    assert flows["general"].description == "Ours" and flows["general"].source == "flows/general.yaml"
    assert flows["returns"].source == str(EXAMPLE_FLOWS_DIR / "returns.yaml")
    assert flows.default_name == "general"


def test_a_missing_flows_dir_is_reported_at_its_config_line(flows_dir: Path) -> None:
    assert problems(Path("nowhere"), locate=at_line(3)) == [
        "config.yaml:3: flows.dir: nowhere does not exist; create it and add flow files, or remove flows.dir "
        "to use the example flows"
    ]


def test_suggested_prompts_are_checked_with_their_line(flows_dir: Path) -> None:
    write(flows_dir, "help.yaml", """\
        name: help
        description: Anything
        system_prompt: Help.
        suggested_prompts:
          - {title: "Where is my order?", message: "Where is my order?"}
          - {title: "", message: Hi}
        """)  # fmt: skip
    [line] = problems(flows_dir)
    assert line.startswith("flows/help.yaml:6: suggested_prompts[1].title:")
    write(flows_dir, "help.yaml", """\
        name: help
        description: Anything
        system_prompt: Help.
        suggested_prompts:
          - {title: "Where is my order?", message: "Where is my order?"}
        """)  # fmt: skip
    flows = load_flows(flows_dir, tool_names=TOOLS)
    assert [(p.title, p.message) for p in flows["help"].suggested_prompts] == [("Where is my order?",) * 2]
    assert len(load_flows(EXAMPLE_FLOWS_DIR, tool_names=TOOLS, company=COMPANY)["general"].suggested_prompts) == 3


# --- demo hints -----------------------------------------------------------------------------------


def test_demo_hints_are_loaded_and_checked(flows_dir: Path) -> None:
    write(
        flows_dir,
        "general.yaml",
        """\
        name: general
        description: Everything
        system_prompt: You help.
        tools: [lookup_order]
        handoffs: [returns]
        demo:
          - {when: "where is (?P<id>A\\\\d+)", call: lookup_order, args: {order_id: "{id}"}}
          - {after: lookup_order, reply: "It is {status}."}
          - {when: refund, call: transfer_to_returns}
        """,
    )
    write(flows_dir, "returns.yaml", MINIMAL.format(name="returns"))
    flows = load_flows(flows_dir, tool_names=TOOLS)
    hints = flows["general"].demo
    assert [(h.when, h.after, h.call, h.reply) for h in hints] == [
        ("where is (?P<id>A\\d+)", None, "lookup_order", None),
        (None, "lookup_order", None, "It is {status}."),
        ("refund", None, "transfer_to_returns", None),
    ]
    pattern = hints[0].pattern()
    assert pattern is not None
    match = pattern.search("WHERE IS A1001?")
    assert match is not None and match["id"] == "A1001"


def test_demo_hints_problems_name_file_line_and_fix(flows_dir: Path) -> None:
    write(
        flows_dir,
        "general.yaml",
        """\
        name: general
        description: Everything
        system_prompt: You help.
        tools: [lookup_order]
        demo:
          - {when: "warranty", call: warranty_status}
          - {when: "(", reply: x}
          - {when: x, after: lookup_order, reply: y}
          - {when: x, reply: y, args: {a: 1}}
        """,
    )
    assert problems(flows_dir) == [
        "flows/general.yaml:6: demo[0].call: 'warranty_status' is not a tool of this flow (its tools: lookup_order); "
        "list it under tools (or its flow under handoffs)",
        "flows/general.yaml:7: demo[1].when: not a valid regular expression: missing ), unterminated subpattern at "
        "position 0",
        "flows/general.yaml:8: demo[2]: give exactly one of when: (a pattern of the customer's message) and after: "
        "(a tool)",
        "flows/general.yaml:9: demo[3]: args: goes with call:; remove it or add call:",
    ]


def test_demo_hint_placeholders_must_name_groups_of_when(flows_dir: Path) -> None:
    write(
        flows_dir,
        "general.yaml",
        """\
        name: general
        description: Everything
        system_prompt: You help.
        tools: [lookup_order]
        demo:
          - {when: "where is (?P<id>A\\\\d+)", call: lookup_order, args: {order_id: "{id}"}}
          - {when: "warranty (?P<sn>SN-\\\\d+)", call: lookup_order, args: {order_id: "{serial}"}}
          - {when: "hours", reply: "Open {hours}."}
          - {after: lookup_order, reply: "It is {status}."}
        """,
    )
    assert problems(flows_dir) == [
        "flows/general.yaml:7: demo[1]: '{serial}' in args.order_id is not a named group of when (its groups: sn); "
        "name a group (?P<serial>...) or fix the placeholder",
        "flows/general.yaml:8: demo[2]: '{hours}' in reply is not a named group of when (it has no named groups); "
        "name a group (?P<hours>...) or fix the placeholder",
    ]


def test_demo_hint_dates_are_iso_text(flows_dir: Path) -> None:
    write(
        flows_dir,
        "general.yaml",
        """\
        name: general
        description: Everything
        system_prompt: You help.
        tools: [lookup_order]
        demo:
          - {when: "since", call: lookup_order, args: {order_id: 2026-01-01, at: [2026-01-01 09:30:00]}}
        """,
    )
    (hint,) = load_flows(flows_dir, tool_names=TOOLS)["general"].demo
    assert hint.args == {"order_id": "2026-01-01", "at": ["2026-01-01T09:30:00"]}
