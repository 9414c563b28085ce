from __future__ import annotations

import dataclasses
import enum
import inspect
import json
from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal, Optional

import pytest
from pydantic import BaseModel, Field, ValidationError
from typing_extensions import TypedDict

from supportbot.errors import ConfigError
from supportbot.tools import Tool, ToolContext, tool
from supportbot.tools.schema import format_validation_error

EMPTY = inspect.Parameter.empty


class Address(BaseModel):
    """A postal address."""

    street: str = Field(description="Street and number")
    zip: str | None = None


@dataclasses.dataclass
class Item:
    sku: str
    qty: int = 1


class Window(TypedDict):
    start: date
    end: date


class Color(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Shipment(BaseModel):
    to: Address
    items: list[Item]


class Opaque:
    """A class pydantic knows nothing about."""


class Node(BaseModel):
    name: str
    children: list[Node] = []


def tool_with(annotation: Any, default: Any = EMPTY) -> Tool[..., Any]:
    """A tool whose only argument ``x`` has this annotation and default."""

    def fn(x):  # type: ignore[no-untyped-def]  # annotations are set below, per case
        return x

    fn.__annotations__ = {"x": annotation, "return": Any}
    if default is not EMPTY:
        fn.__defaults__ = (default,)
    return tool(fn)


ADDRESS = {
    "type": "object",
    "description": "A postal address.",
    "properties": {
        "street": {"type": "string", "description": "Street and number"},
        "zip": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
    },
    "required": ["street"],
    "additionalProperties": False,
}
ITEM = {
    "type": "object",
    "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "default": 1}},
    "required": ["sku"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("annotation", "default", "expected", "required"),
    [
        pytest.param(str, EMPTY, {"type": "string"}, True, id="str"),
        pytest.param(int, EMPTY, {"type": "integer"}, True, id="int"),
        pytest.param(float, EMPTY, {"type": "number"}, True, id="float"),
        pytest.param(bool, EMPTY, {"type": "boolean"}, True, id="bool"),
        pytest.param(int, 3, {"type": "integer", "default": 3}, False, id="int-default"),
        pytest.param(Literal["a", "b"], EMPTY, {"type": "string", "enum": ["a", "b"]}, True, id="literal-str"),
        pytest.param(Literal[1, 2], 1, {"type": "integer", "enum": [1, 2], "default": 1}, False, id="literal-int"),
        pytest.param(Literal["only"], EMPTY, {"type": "string", "enum": ["only"]}, True, id="literal-single-no-const"),
        pytest.param(Color, EMPTY, {"type": "string", "enum": ["red", "blue"]}, True, id="enum-class"),
        pytest.param(list[str], EMPTY, {"type": "array", "items": {"type": "string"}}, True, id="list"),
        pytest.param(tuple[int, ...], EMPTY, {"type": "array", "items": {"type": "integer"}}, True, id="tuple-var"),
        pytest.param(
            tuple[int, str],
            EMPTY,
            {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "maxItems": 2},
            True,
            id="tuple-fixed",
        ),
        pytest.param(
            str | None, None, {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}, False, id="optional"
        ),
        pytest.param(
            Optional[int],  # noqa: UP045 - the old spelling must work too
            EMPTY,
            {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            True,
            id="optional-without-default-is-required",
        ),
        pytest.param(
            Annotated[str, Field(description="The reason", max_length=5)],
            EMPTY,
            {"type": "string", "description": "The reason", "maxLength": 5},
            True,
            id="annotated-field",
        ),
        pytest.param(date, EMPTY, {"type": "string", "format": "date"}, True, id="date"),
        pytest.param(
            dict[str, int], EMPTY, {"type": "object", "additionalProperties": {"type": "integer"}}, True, id="dict"
        ),
        pytest.param(Address, EMPTY, ADDRESS, True, id="nested-model-inlined"),
        pytest.param(Item, EMPTY, ITEM, True, id="dataclass-inlined"),
        pytest.param(list[Item], EMPTY, {"type": "array", "items": ITEM}, True, id="list-of-dataclass"),
        pytest.param(
            Window,
            EMPTY,
            {
                "type": "object",
                "properties": {
                    "start": {"type": "string", "format": "date"},
                    "end": {"type": "string", "format": "date"},
                },
                "required": ["start", "end"],
                "additionalProperties": False,
            },
            True,
            id="typeddict-inlined",
        ),
        pytest.param(
            Shipment,
            EMPTY,
            {
                "type": "object",
                "properties": {"to": ADDRESS, "items": {"type": "array", "items": ITEM}},
                "required": ["to", "items"],
                "additionalProperties": False,
            },
            True,
            id="model-in-model-inlined",
        ),
    ],
)
def test_parameter_schema(annotation: Any, default: Any, expected: dict[str, Any], required: bool) -> None:
    parameters = tool_with(annotation, default).parameters

    assert parameters["type"] == "object"
    assert parameters["additionalProperties"] is False
    assert parameters["properties"] == {"x": expected}
    assert ("x" in parameters.get("required", [])) is required
    assert_provider_friendly(parameters)


def assert_provider_friendly(schema: dict[str, Any]) -> None:
    """No pydantic titles, no references (Gemini), no const; properties named 'title' are fine."""
    text = json.dumps(schema)
    assert "$ref" not in text
    assert "$defs" not in text
    assert '"const"' not in text

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            assert "title" not in node or isinstance(node["title"], dict), node
            for key, value in node.items():
                if key == "properties":
                    for sub in value.values():
                        walk(sub)
                elif key not in ("default", "enum"):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)


def test_definition_is_openai_function_with_docstring_docs() -> None:
    @tool
    async def lookup(ctx: ToolContext, order_id: str, title: str = "") -> dict[str, Any]:
        """Look up an order.

        Args:
            order_id: The order number, e.g. A1001.
            title: A property that happens to be called title.

        Returns:
            The order.
        """
        return {}

    assert lookup.definition == {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up an order.",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": {"type": "string", "description": "The order number, e.g. A1001."},
                    "title": {
                        "type": "string",
                        "default": "",
                        "description": "A property that happens to be called title.",
                    },
                },
                "required": ["order_id"],
                "additionalProperties": False,
            },
        },
    }


@pytest.mark.parametrize(
    "annotation",
    [ToolContext, Annotated[ToolContext, "injected"]],
    ids=["plain", "annotated"],
)
def test_tool_context_is_hidden_under_any_name(annotation: Any) -> None:
    def fn(session, order_id):  # type: ignore[no-untyped-def]
        return order_id

    fn.__annotations__ = {"session": annotation, "order_id": str}
    made = tool(fn)

    assert list(made.parameters["properties"]) == ["order_id"]
    assert made.arguments.context_param == "session"


def test_argument_without_doc_gets_no_description() -> None:
    @tool
    def fn(documented: int, undocumented: int) -> int:
        """Add.

        Args:
            documented: the first one.
        """
        return documented + undocumented

    assert fn.parameters["properties"]["documented"] == {"type": "integer", "description": "the first one."}
    assert fn.parameters["properties"]["undocumented"] == {"type": "integer"}


def test_annotated_description_wins_over_docstring() -> None:
    @tool
    def fn(x: Annotated[int, Field(description="from Field")], y: int = Field(2, description="from default")) -> int:
        """Do.

        Args:
            x: from docstring
            y: from docstring too
        """
        return x

    assert fn.parameters["properties"]["x"]["description"] == "from Field"
    assert fn.parameters["properties"]["y"] == {"type": "integer", "default": 2, "description": "from default"}


def test_no_parameters_gives_empty_object() -> None:
    @tool
    def ping() -> str:
        """Check the service."""
        return "pong"

    assert ping.parameters == {"type": "object", "properties": {}, "additionalProperties": False}


def test_parameter_names_that_shadow_pydantic_attributes_work() -> None:
    @tool
    def fn(json: str, schema: int, model_config: bool = False, copy: str = "") -> str:
        return json

    assert list(fn.parameters["properties"]) == ["json", "schema", "model_config", "copy"]
    args, kwargs = fn.arguments.bind({"json": "j", "schema": 1}, None)
    assert (args, kwargs) == ([], {"json": "j", "schema": 1, "model_config": False, "copy": ""})


def test_positional_only_parameters_are_passed_positionally() -> None:
    @tool
    def fn(ctx: ToolContext | None, a: int, /, b: int) -> int:
        return a - b

    args, kwargs = fn.arguments.bind({"a": 5, "b": 2}, None)
    assert (args, kwargs) == ([None, 5], {"b": 2})
    assert fn(*args, **kwargs) == 3


def test_unserialisable_default_is_left_out_of_the_schema() -> None:
    sentinel = object()

    def fn(x):  # type: ignore[no-untyped-def]
        return x

    fn.__annotations__ = {"x": Any}
    fn.__defaults__ = (sentinel,)
    assert tool(fn).parameters["properties"]["x"] == {}


def test_recursive_type_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"test_schema:.*'Node' refers to itself"):
        tool_with(Node)


@pytest.mark.parametrize(
    ("annotation", "match"),
    [
        (Callable[[int], int], "parameter 'x' has type"),
        (type(Ellipsis), "parameter 'x' has type"),
        (Opaque, "parameter 'x' has type Opaque, which has no JSON schema"),
    ],
)
def test_type_without_json_schema_is_refused(annotation: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=r"tool ([\w.]+\.)?test_schema:tool_with\.<locals>\.fn: " + match):
        tool_with(annotation)


def test_validation_errors_read_plainly() -> None:
    @tool
    def fn(order_id: str, qty: int, items: list[Item]) -> None:
        return None

    with pytest.raises(ValidationError) as caught:
        fn.arguments.bind({"qty": "many", "items": [{"qty": 2}], "color": "red"}, None)

    assert format_validation_error(caught.value) == [
        "order_id: field required",
        "qty: input should be a valid integer, unable to parse string as an integer",
        "items.0.sku: field required",
        "color: unexpected argument",
    ]
