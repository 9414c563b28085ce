"""JSON Schemas of supportbot's YAML files, for editors: a flow, ``config.yaml`` and a flow-test file.

``supportbot schema flow|config|test`` prints them; ``supportbot init`` writes them to
``.schemas/*.schema.json`` for YAML language servers, which a file names in its first line:

```yaml
# yaml-language-server: $schema=.schemas/flow.schema.json
```

The schemas come from the pydantic models that validate the files (``_FlowFile``, ``Config`` and
each connector's settings model, ``TestFile``), so they cannot drift from what the loaders accept;
a few edits make them fit what the loaders do before validating (draft 2020-12):

- ``connectors.<name>`` is each installed connector's own settings model, found through the
  ``supportbot.connectors`` entry points as the config loader finds it;
- in the config, a number, a boolean, a choice or a patterned string may also be a
  ``${VAR}`` / ``${VAR:-default}`` placeholder, which the loader expands before validating;
- ``flows.dir`` and ``orders.path`` may be null (the example flows, the demo orders), and no
  default names a path of the machine the schema was made on;
- keys the loader refuses (``source``) are left out, and the texts read as prose (no reST markup).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Literal, get_args

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

from supportbot.config import CONNECTOR_GROUP, Config
from supportbot.flows import _FlowFile

__all__ = ["DIALECT", "KINDS", "Kind", "json_schema", "json_text"]

Kind = Literal["flow", "config", "test"]
KINDS: tuple[Kind, ...] = get_args(Kind)
DIALECT = "https://json-schema.org/draft/2020-12/schema"

PLACEHOLDER = "EnvironmentVariable"
"""The ``$defs`` entry of a ``${VAR}`` placeholder in the config schema."""

_PLACEHOLDER_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
    "description": (
        "An environment variable, ${VAR} or ${VAR:-default} (used when VAR is unset or empty), replaced when the "
        "configuration is loaded; the result must be a valid value here."
    ),
}
_PLACEHOLDER_REF = {"$ref": f"#/$defs/{PLACEHOLDER}"}

_TITLES: dict[Kind, tuple[str, str]] = {
    "flow": (
        "supportbot flow",
        "One flow per file in the flows directory (flows.dir): what the model is told (system_prompt), which tools "
        "it may call (tools), which calls need the customer's yes (confirm) and where the conversation may go "
        "(handoffs). Check it with `supportbot validate`.",
    ),
    "config": (
        "supportbot configuration (config.yaml)",
        "Every key is optional; a key left out takes its default. ${VAR} and ${VAR:-default} are replaced by "
        "environment variables; relative paths are relative to this file. Check it with `supportbot validate`.",
    ),
    "test": (
        "supportbot flow tests",
        "Scripted test cases of flows, run offline by `supportbot test`: customer turns, scripted model replies "
        "and tool calls, and what must happen.",
    ),
}

# Keys whose value is data (a default, an example), not a schema: their insides keep their order and text.
_DATA_KEYS = frozenset({"default", "examples", "enum", "const"})
# Keys whose value maps names to schemas (the names are not schema keywords).
_NAMED_SCHEMAS = frozenset({"properties", "$defs", "patternProperties", "dependentSchemas"})
_ANNOTATIONS = ("title", "description", "default", "examples", "deprecated")
_PLACEHOLDER_TYPES = frozenset({"integer", "number", "boolean"})
# OpenAPI's and pydantic's own words, which JSON Schema does not define: a secret is a string, a path too.
_NOT_JSON_SCHEMA = frozenset({"discriminator", "writeOnly"})
_PYDANTIC_FORMATS = frozenset({"path", "password"})


def json_schema(kind: Kind) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a flow file, of ``config.yaml`` or of a flow-test file.

    Args:
        kind: ``flow``, ``config`` or ``test``.

    Returns:
        The schema as JSON-able data: ``$schema``, ``title`` and ``description`` first, ``$defs``
        last, every property described; the same for the same installation every time.

    Raises:
        ValueError: ``kind`` is none of the three.
    """
    if kind == "flow":
        schema = _generate(_FlowFile)
    elif kind == "config":
        schema = _config_schema()
    elif kind == "test":
        from supportbot.flowtest.spec import TestFile  # imported only when its schema is asked for

        schema = _generate(TestFile)
    else:
        raise ValueError(f"unknown schema {kind!r}; use one of {', '.join(KINDS)}")
    title, description = _TITLES[kind]
    return _finish(schema, title=title, description=description)


def json_text(kind: Kind) -> str:
    """``json_schema(kind)`` as ``supportbot schema`` prints it: JSON indented by two spaces, with a final newline."""
    return json.dumps(json_schema(kind), indent=2, ensure_ascii=False) + "\n"


class _Generator(GenerateJsonSchema):
    """Pydantic's generator without a title on every property (the description says more)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _generate(model: type[BaseModel]) -> dict[str, Any]:
    """One model's schema, with its nested models in ``$defs``."""
    tidied: dict[str, Any] = _tidy(model.model_json_schema(schema_generator=_Generator, mode="validation"))
    return tidied


# --- config -------------------------------------------------------------------------------------


def _installed_settings() -> dict[str, type[BaseModel]]:
    """Each installed connector's settings model by name, found as the config loader finds them."""
    found: dict[str, type[BaseModel]] = {}
    for entry in entry_points(group=CONNECTOR_GROUP):
        model = getattr(entry.load(), "settings", None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            found[entry.name] = model
    return dict(sorted(found.items()))


def _config_schema() -> dict[str, Any]:
    connectors = _installed_settings()
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(Config, "validation")]
    models += [(model, "validation") for model in connectors.values()]
    # One generation for all, so that two models of the same name get distinct $defs entries.
    refs, generated = models_json_schema(models, schema_generator=_Generator)
    defs: dict[str, Any] = generated["$defs"]
    config_name = _ref_name(refs[(Config, "validation")])
    schema: dict[str, Any] = {**defs.pop(config_name), "$defs": defs}

    for key in Config.__hidden_keys__:
        schema["properties"].pop(key, None)
    section = defs[_ref_name(schema["properties"]["connectors"])]
    described = section["properties"]
    section["properties"] = {}
    for name, model in connectors.items():
        entry = {"$ref": refs[(model, "validation")]["$ref"]}
        about = described.get(name, {}).get("description") or _first_paragraph(model.__doc__)
        section["properties"][name] = {**entry, "description": about}
    section["additionalProperties"] = {
        "type": "object",
        "description": "The section of a connector that is not installed: ignored unless it says enabled: true.",
    }
    _nullable(defs, "FlowSettings", "dir")
    _nullable(defs, "FileOrders", "path")
    relaxed: dict[str, Any] = _with_placeholders(_tidy(schema))
    relaxed["$defs"][PLACEHOLDER] = dict(_PLACEHOLDER_SCHEMA)
    return relaxed


def _ref_name(node: dict[str, Any]) -> str:
    return str(node["$ref"]).rpartition("/")[2]


def _nullable(defs: dict[str, Any], model: str, key: str) -> None:
    """A path whose null means "the one shipped with supportbot": null is its default, not a path here."""
    node = defs[model]["properties"][key]
    annotations = {k: node[k] for k in ("description", "examples") if k in node}
    core = {k: v for k, v in node.items() if k not in (*_ANNOTATIONS, "anyOf")}
    defs[model]["properties"][key] = {"anyOf": [core, {"type": "null"}], **annotations, "default": None}


def _first_paragraph(doc: str | None) -> str:
    return (doc or "").strip().split("\n\n")[0]


# --- edits of every schema ----------------------------------------------------------------------


def _tidy(node: Any, key: str | None = None) -> Any:
    """Drop what editors do not need, and make descriptions prose.

    A property that refers to a model loses its default (the whole section, dumped: each of its
    keys has its own default); OpenAPI's ``discriminator`` and ``writeOnly`` and pydantic's formats
    ``path`` and ``password`` go; reST's ``literal`` becomes Markdown's.
    """
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict) or key in _DATA_KEYS:
        return node
    if key in _NAMED_SCHEMAS:
        return {name: _tidy(value) for name, value in node.items()}
    tidied = {k: _tidy(v, k) for k, v in node.items() if k not in _NOT_JSON_SCHEMA}
    if tidied.get("format") in _PYDANTIC_FORMATS:
        del tidied["format"]
    if "$ref" in tidied and isinstance(tidied.get("default"), dict):
        del tidied["default"]
    if isinstance(tidied.get("description"), str):
        tidied["description"] = _prose(tidied["description"])
    return tidied


def _prose(text: str) -> str:
    """A docstring as one line per paragraph, with Markdown's single backticks for reST's double ones."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip())]
    return "\n\n".join(paragraphs).replace("``", "`")


def _needs_placeholder(node: dict[str, Any]) -> bool:
    """A value ``${VAR}`` would not pass: a number, a boolean, a choice, a string with a pattern."""
    kind = node.get("type")
    return kind in _PLACEHOLDER_TYPES or "enum" in node or (kind == "string" and "pattern" in node)


def _with_placeholders(node: Any, key: str | None = None) -> Any:
    """Let every scalar that ``${VAR}`` would not pass be a placeholder too (the loader expands it first).

    A ``const`` (a discriminator's value) stays as it is: the union's branches must stay apart.
    """
    if isinstance(node, list):
        return [_with_placeholders(item) for item in node]
    if not isinstance(node, dict) or key in _DATA_KEYS:
        return node
    if key in _NAMED_SCHEMAS:
        return {name: _with_placeholders(value) for name, value in node.items()}
    relaxed = {k: _with_placeholders(v, k) for k, v in node.items() if k != "anyOf"}
    if "anyOf" in node:  # e.g. an integer or null: one more branch
        members = node["anyOf"]
        extra = [_PLACEHOLDER_REF] if any(_needs_placeholder(m) for m in members) else []
        return {**relaxed, "anyOf": [m if _needs_placeholder(m) else _with_placeholders(m) for m in members] + extra}
    if not _needs_placeholder(relaxed):
        return relaxed
    outer = {k: v for k, v in relaxed.items() if k in _ANNOTATIONS}
    inner = {k: v for k, v in relaxed.items() if k not in _ANNOTATIONS}
    return {"anyOf": [inner, _PLACEHOLDER_REF], **outer}


def _finish(schema: dict[str, Any], *, title: str, description: str) -> dict[str, Any]:
    """The root in reading order: what it is, its properties, then the definitions (sorted)."""
    body = _sorted({k: v for k, v in schema.items() if k not in ("$defs", "title", "description")})
    defs = {name: _sorted(value) for name, value in sorted(schema.get("$defs", {}).items())}
    root: dict[str, Any] = {"$schema": DIALECT, "title": title, "description": description, **body}
    if defs:
        root["$defs"] = defs
    return root


def _sorted(node: Any, key: str | None = None) -> Any:
    """Keywords in alphabetical order; properties in the models' order; data as it is."""
    if isinstance(node, list):
        return [_sorted(item) for item in node]
    if not isinstance(node, dict) or key in _DATA_KEYS:
        return node
    order: Callable[[list[str]], list[str]] = list if key in _NAMED_SCHEMAS else sorted
    return {k: _sorted(node[k], None if key in _NAMED_SCHEMAS else k) for k in order(list(node))}
