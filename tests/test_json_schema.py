"""The JSON Schemas for editors (``supportbot schema``): complete, described, and as strict as the loaders.

Each document is checked twice: against the schema with ``jsonschema`` (what an editor does) and by
supportbot's own loader, and the two must agree, so the schema neither flags a file that loads nor
passes one that does not (for the mistakes a schema can see).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from pydantic import ValidationError

import supportbot.schema
from supportbot._yaml import load_yaml
from supportbot.cli import main
from supportbot.cli.schema import _KINDS
from supportbot.config import CONNECTOR_GROUP, EXAMPLES_DIR, read_config
from supportbot.errors import ConfigError
from supportbot.flows import Flow
from supportbot.flowtest.spec import TestFile
from supportbot.schema import DIALECT, KINDS, json_schema, json_text

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_FLOWS = sorted((REPO / "supportbot" / "examples" / "flows").glob("*.yaml"))
FLOW = """\
name: warranty
description: Warranty questions
system_prompt: You help with warranties.
"""


def validator(kind: supportbot.schema.Kind) -> Draft202012Validator:
    return Draft202012Validator(json_schema(kind))


def schema_errors(kind: supportbot.schema.Kind, data: Any) -> list[str]:
    return [error.message for error in validator(kind).iter_errors(data)]


def loader_problems(tmp_path: Path, kind: str, text: str, env: dict[str, str] | None = None) -> list[str]:
    """What supportbot's own loader says of ``text`` (a flow, a config or a flow-test file)."""
    if kind == "test":
        try:
            TestFile.model_validate(load_yaml(text).data)
        except ValidationError as exc:
            return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        return []
    if kind == "flow":
        try:
            Flow.from_dict(load_yaml(text).data, tool_names=None)
        except ConfigError as exc:
            return str(exc).splitlines()
        return []
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return [str(problem) for problem in read_config(path, env=env or {}).problems.items]


def described_properties(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, schema) under a ``properties`` anywhere in ``node``, $defs and subschemas included."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from described_properties(item, f"{path}[{index}]")
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in ("default", "examples", "enum", "const"):
                continue
            if key == "properties":
                for name, sub in value.items():
                    yield f"{path}.{name}", sub
            yield from described_properties(value, f"{path}/{key}")


def lookup(schema: dict[str, Any], dotted: str) -> list[dict[str, Any]]:
    """The schemas a key path may have (following $ref and every branch of anyOf/oneOf)."""

    def expand(node: dict[str, Any]) -> list[dict[str, Any]]:
        if "$ref" in node:
            node = {
                **schema["$defs"][node["$ref"].rpartition("/")[2]],
                **{k: v for k, v in node.items() if k != "$ref"},
            }
        branches = [node]
        for key in ("anyOf", "oneOf"):
            for member in node.get(key, []):
                branches += expand(member)
        return branches

    nodes = expand(schema)
    for part in dotted.split("."):
        nodes = [
            found for node in nodes if part in node.get("properties", {}) for found in expand(node["properties"][part])
        ]
    return nodes


def choices(schema: dict[str, Any], dotted: str) -> set[str]:
    found: set[str] = set()
    for node in lookup(schema, dotted):
        found.update(node.get("enum", []))
        if "const" in node:
            found.add(node["const"])
    return found


# --- complete and described ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_schema_is_a_valid_draft_2020_12_schema(kind: supportbot.schema.Kind) -> None:
    schema = json_schema(kind)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DIALECT
    assert list(schema)[:3] == ["$schema", "title", "description"] and list(schema)[-1] == "$defs"
    assert schema["title"] and schema["description"] and schema["additionalProperties"] is False


@pytest.mark.parametrize("kind", KINDS)
def test_every_property_at_every_level_has_a_description(kind: supportbot.schema.Kind) -> None:
    found = list(described_properties(json_schema(kind)))
    assert len(found) > {"flow": 20, "config": 120, "test": 50}[kind]
    missing = [path for path, sub in found if not str(sub.get("description", "")).strip()]
    assert missing == []


@pytest.mark.parametrize("kind", KINDS)
def test_every_section_is_described_and_refuses_unknown_keys(kind: supportbot.schema.Kind) -> None:
    defs = json_schema(kind)["$defs"]
    models = {name: d for name, d in defs.items() if "properties" in d}
    assert {name for name, d in models.items() if not d.get("description")} == set()
    open_sections = {name for name, d in models.items() if d.get("additionalProperties") is not False}
    # An order has the shop's own fields besides those shown.
    assert open_sections == {"config": {"ConnectorSettings"}, "flow": set(), "test": {"Order"}}[kind]


def test_descriptions_read_as_prose() -> None:
    text = json_text("config") + json_text("flow")
    assert "``" not in text  # reST literals became Markdown's
    assert json_schema("config")["$defs"]["LLMSettings"]["description"].startswith(
        "The model: any OpenAI-compatible chat-completions endpoint (Google's own `.../v1beta/openai`, OpenAI,"
    )


@pytest.mark.parametrize(
    ("kind", "key", "expected"),
    [
        ("config", "llm.reasoning_effort", {"minimal", "low", "medium", "high"}),
        ("config", "logging.format", {"text", "json"}),
        ("config", "logging.level", {"DEBUG", "INFO", "WARNING", "ERROR"}),
        ("config", "orders.source", {"file", "sql", "http"}),
        ("config", "connectors.web.position", {"right", "left"}),
        ("config", "connectors.slack.streaming", {"auto", "native", "update", "off"}),
        ("config", "connectors.slack.dm_replies", {"top", "thread"}),
        ("flow", "model.reasoning_effort", {"minimal", "low", "medium", "high"}),
    ],
)
def test_choices_are_enums(kind: supportbot.schema.Kind, key: str, expected: set[str]) -> None:
    assert choices(json_schema(kind), key) == expected


@pytest.mark.parametrize(
    ("kind", "key", "default"),
    [
        ("config", "llm.temperature", 1.0),
        ("config", "llm.model", "gemini-3.1-flash-live-preview"),
        ("config", "server.port", 8080),
        ("config", "flows.dir", None),
        ("config", "connectors.email.imap.mailbox", "INBOX"),
        ("flow", "limits.max_tool_rounds", 6),
    ],
)
def test_defaults_are_shown(kind: supportbot.schema.Kind, key: str, default: object) -> None:
    (node,) = [n for n in lookup(json_schema(kind), key) if "default" in n]
    assert node["default"] == default


def test_no_default_names_a_path_of_this_machine() -> None:
    # flows.dir and orders.path default to files inside the installed package; the schema says null instead.
    text = json_text("config")
    assert str(EXAMPLES_DIR) not in text
    assert json.loads(text)["$defs"]["FileOrders"]["properties"]["path"]["default"] is None


def test_the_output_is_the_same_every_time_in_a_stable_order() -> None:
    first = json_text("config")
    assert json_text("config") == first
    schema = json.loads(first)
    assert list(schema["$defs"]) == sorted(schema["$defs"])
    assert list(schema["properties"])[:3] == ["company", "llm", "database"]  # the models' order, as in the example
    assert list(schema["$defs"]["LLMSettings"]["properties"]["temperature"]) == ["anyOf", "default", "description"]


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown schema 'flows'; use one of flow, config, test"):
        json_schema("flows")  # type: ignore[arg-type]


# --- connectors ---------------------------------------------------------------------------------


def test_each_installed_connector_section_is_its_own_settings_model() -> None:
    schema = json_schema("config")
    sections = schema["$defs"]["ConnectorSettings"]["properties"]
    assert set(sections) == {entry.name for entry in entry_points(group=CONNECTOR_GROUP)}
    for name, entry in ((e.name, e) for e in entry_points(group=CONNECTOR_GROUP)):
        model = entry.load().settings
        definition = lookup(schema, f"connectors.{name}")[0]
        assert list(definition["properties"]) == list(model.model_fields), name
        assert sections[name]["description"]


# --- the examples validate; mistakes do not ------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLE_FLOWS, ids=lambda p: p.name)
def test_the_example_flows_validate(path: Path) -> None:
    assert schema_errors("flow", load_yaml(path.read_text(encoding="utf-8")).data) == []


def test_the_example_config_validates() -> None:
    text = (REPO / "config.example.yaml").read_text(encoding="utf-8")
    assert schema_errors("config", load_yaml(text).data) == []


BAD_FLOWS = {
    "unknown key": FLOW + "tool: [lookup_order]\n",
    "wrong enum": FLOW + "model: {reasoning_effort: extreme}\n",
    "out of range": FLOW + "limits: {max_tool_rounds: 0}\n",
    "too long": FLOW + "model: {max_tokens: 70000}\n",
    "missing key": "name: warranty\ndescription: Warranty questions\n",
    "bad name": FLOW.replace("name: warranty", "name: Warranty"),
    "unknown key in a section": FLOW + "limits: {max_turn: 3}\n",
    "five prompts": FLOW + "suggested_prompts: [" + ", ".join(["{title: a, message: b}"] * 5) + "]\n",
    "hint with two triggers": FLOW + "demo: [{when: hi, after: x, reply: hello}]\n",
    "hint with no action": FLOW + "demo: [{when: hi}]\n",
    "hint with args but no call": FLOW + "demo: [{when: hi, reply: hello, args: {a: 1}}]\n",
}

BAD_CONFIGS = {
    "unknown key": "llm: {modle: gpt-4o}\n",
    "unknown section": "lim: {max_message_chars: 10}\n",
    "wrong enum": "logging: {format: xml}\n",
    "out of range": "llm: {temperature: 3}\n",
    "port out of range": "server: {port: 70000}\n",
    "not a number": "server: {port: eighty}\n",
    "bad pattern": "flows: {default: General}\n",
    "unknown order source": "orders: {source: ftp}\n",
    "http orders without url": "orders: {source: http}\n",
    "file orders key in sql orders": "orders: {source: sql, path: orders.csv}\n",
    "a key only the loader sets": "source: elsewhere.yaml\n",
    "unknown connector key": "connectors: {web: {colour: '#000000'}}\n",
    "wrong connector enum": "connectors: {web: {position: middle}}\n",
    "connector out of range": "connectors: {email: {imap: {port: 0}}}\n",
    "connector pattern": "connectors: {web: {color: red}}\n",
    "connector section not a mapping": "connectors: {slack: [enabled]}\n",
}


@pytest.mark.parametrize("text", BAD_FLOWS.values(), ids=BAD_FLOWS.keys())
def test_a_bad_flow_fails_the_schema_and_the_loader(text: str) -> None:
    assert schema_errors("flow", load_yaml(text).data)
    assert loader_problems(Path(), "flow", text)


@pytest.mark.parametrize("text", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_a_bad_config_fails_the_schema_and_the_loader(tmp_path: Path, text: str) -> None:
    assert schema_errors("config", load_yaml(text).data)
    assert loader_problems(tmp_path, "config", text)


TEST = "cases:\n  - name: a\n    turns:\n      - customer: Where is my order?\n"
BAD_TESTS = {
    "no cases": "flow: general\n",
    "unknown key": TEST + "        expct: {called: lookup_order}\n",
    "unknown assertion": TEST + "        expect: {caled: lookup_order}\n",
    "empty model step": TEST + "        model: [{}]\n",
    "model step with two kinds": TEST + "        model: [{reply: hi, call: lookup_order}]\n",
    "model step args without call": TEST + "        model: [{reply: hi, args: {a: 1}}]\n",
    "empty reply_contains": TEST + "        expect: {reply_contains: ''}\n",
    "empty item of reply_contains": TEST + "        expect: {reply_contains: [a, '']}\n",
    "assertion without a value": TEST + "        expect: {reply_contains: }\n",
    "ticket without a value": TEST + "        expect: {ticket: }\n",
    "model without a value": TEST + "        model:\n",
    "flow without a value": "flow:\ncases: [{name: a}]\n",
    "wrong enum": TEST + "        expect: {ticket: {priority: hgh}}\n",
    "negative budget": TEST + "        expect: {max_tokens: -1}\n",
    "called not a name": TEST + "        expect: {called: 42}\n",
    "customer text a mapping": "cases: [{name: a, turns: [{customer: {a: 1}}]}]\n",
    "empty case name": "cases: [{name: ''}]\n",
}
GOOD_TESTS = {
    "the short forms": TEST + "        expect: {called: lookup_order, not_called: create_ticket, reply_contains: a}\n",
    "a single called mapping": TEST + "        expect: {called: {tool: lookup_order, args: {order_id: A1}}}\n",
    "numbers as text": "cases: [{name: a, turns: [{customer: 42, expect: {reply_contains: 249.8}}]}]\n",
    "a list of numbers as text": TEST + "        expect: {reply_contains: [249.8, 12], system_prompt_omits: 7}\n",
    "yes as the customer's words": "cases: [{name: a, turns: [{customer: yes}]}]\n",
    "an anonymous customer": "customer: null\ncases: [{name: a}]\n",
    "an order number as a number": "fixtures: {orders: [{order_id: 1001, total: 9.5}]}\ncases: [{name: a}]\n",
    "each kind of model step": TEST + "        model: [{call: a, args: {x: 1}}, {calls: [{call: b}]}, {error: down}, "
    "{reply: hi}]\n",
}


@pytest.mark.parametrize("text", BAD_TESTS.values(), ids=BAD_TESTS.keys())
def test_a_bad_test_file_fails_the_schema_and_the_loader(text: str) -> None:
    assert schema_errors("test", load_yaml(text).data)
    assert loader_problems(Path(), "test", text)


@pytest.mark.parametrize("text", GOOD_TESTS.values(), ids=GOOD_TESTS.keys())
def test_a_good_test_file_passes_the_schema_and_the_loader(text: str) -> None:
    assert schema_errors("test", load_yaml(text).data) == []
    assert loader_problems(Path(), "test", text) == []


GOOD_CONFIGS = {
    "each order source": "orders: {source: http, url_template: 'https://shop.example/o/{order_id}'}\n",
    "a company key of one's own": "company: {name: Acme, return_days: 14, hotline: '+1 555 0100'}\n",
    "another connector, off": "connectors: {teams: {enabled: false, tenant: x}}\n",
    "null paths": "flows: {dir: null}\norders: {source: file, path: null}\n",
    "nulls": "llm: {reasoning_effort: null}\nserver: {public_url: null}\n",
}


@pytest.mark.parametrize("text", GOOD_CONFIGS.values(), ids=GOOD_CONFIGS.keys())
def test_a_good_config_passes_the_schema_and_the_loader(tmp_path: Path, text: str) -> None:
    assert schema_errors("config", load_yaml(text).data) == []
    assert loader_problems(tmp_path, "config", text) == []


# --- ${VAR} placeholders ------------------------------------------------------------------------

PLACEHOLDERS = textwrap.dedent(
    """\
    llm: {api_key: "${KEY}", temperature: "${TEMPERATURE}", stream: "${STREAM:-true}", reasoning_effort: "${EFFORT}"}
    server: {port: "${PORT:-8080}", trust_forwarded_for: "${BEHIND_PROXY:-false}", public_url: "${PUBLIC_URL}"}
    flows: {default: "${FLOW:-general}"}
    logging: {level: "${LOG_LEVEL:-INFO}"}
    connectors:
      web: {color: "${COLOR}", rate_limits: {requests_per_minute_per_ip: "${RPM}"}}
      email: {imap: {port: "${IMAP_PORT:-993}"}, html: "${HTML}"}
    """
)


def test_placeholders_pass_where_the_loader_expands_them(tmp_path: Path) -> None:
    env = {"TEMPERATURE": "0.3", "EFFORT": "low", "PUBLIC_URL": "https://support.example", "LOG_LEVEL": "DEBUG"}
    env |= {"KEY": "sk-test", "COLOR": "#123456", "RPM": "100", "HTML": "false"}
    assert schema_errors("config", load_yaml(PLACEHOLDERS).data) == []
    assert loader_problems(tmp_path, "config", PLACEHOLDERS, env) == []


@pytest.mark.parametrize(
    "text",
    ["server: {port: '$PORT'}\n", "server: {port: '{PORT}'}\n", "logging: {level: '${1LEVEL}'}\n"],
    ids=["no braces", "no dollar", "not a variable name"],
)
def test_only_a_placeholder_passes_for_a_number_or_a_choice(text: str) -> None:
    assert schema_errors("config", load_yaml(text).data)


def test_a_flow_has_no_placeholders() -> None:
    # Flow files are not expanded: ${...} in a number would reach validation as it is.
    assert schema_errors("flow", load_yaml(FLOW + "limits: {max_turns: '${TURNS}'}\n").data)
    assert "EnvironmentVariable" not in json_text("flow")


# --- the command --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_command_prints_the_schema(kind: supportbot.schema.Kind) -> None:
    result = CliRunner().invoke(main, ["schema", kind])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json_schema(kind)
    assert result.stdout == json_text(kind)


def test_the_command_writes_the_schema_to_a_file(tmp_path: Path) -> None:
    target = tmp_path / ".schemas" / "config.schema.json"
    result = CliRunner().invoke(main, ["schema", "config", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"wrote the config schema to {target}" in result.stderr
    assert target.read_text(encoding="utf-8") == json_text("config")


def test_the_command_refuses_an_unknown_kind() -> None:
    result = CliRunner().invoke(main, ["schema", "flows"])
    assert result.exit_code == 2
    assert "'flows' is not one of 'flow', 'config', 'test'" in result.output


def test_the_command_knows_the_kinds_without_importing_the_schemas() -> None:
    assert _KINDS == KINDS


def test_the_test_schema_comes_from_the_test_model() -> None:
    schema = json_schema("test")
    assert schema["title"] == "supportbot flow tests"
    assert list(schema["properties"]) == list(TestFile.model_fields)
    assert set(schema["$defs"]) == set(TestFile.model_json_schema()["$defs"])
    assert "EnvironmentVariable" not in json.dumps(schema)  # test files are not expanded
