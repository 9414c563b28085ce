from __future__ import annotations

from typing import Any

import pytest

from supportbot.errors import ConfigError
from supportbot.tools import Tool, ToolContext, tool


def test_bare_decorator_uses_function_name_and_docstring() -> None:
    @tool
    def add(a: int, b: int = 1) -> int:
        """Add two numbers.

        Args:
            a: the first.
        """
        return a + b

    assert isinstance(add, Tool)
    assert add.name == "add"
    assert add.description == "Add two numbers."
    assert add.timeout is None
    assert add.is_async is False


def test_decorator_with_options() -> None:
    @tool(name="sum-it", description="Sums.", timeout=2.5)
    async def add(a: int) -> int:
        """Ignored because a description is given."""
        return a

    assert (add.name, add.description, add.timeout, add.is_async) == ("sum-it", "Sums.", 2.5, True)
    assert add.definition["function"]["name"] == "sum-it"
    assert not add.requires_verified


def test_a_tool_may_require_a_verified_customer() -> None:
    @tool(requires_verified=True)
    async def change_address(street: str) -> str:
        """Change the delivery address of the customer's open orders.

        Args:
            street: the new street and number.
        """
        return street

    assert change_address.requires_verified and change_address.name == "change_address"
    assert "requires_verified" not in str(change_address.definition)  # nothing of it reaches the model


def test_function_without_docstring_has_no_description_key() -> None:
    @tool
    def quiet(a: int) -> int:
        return a

    assert quiet.description == ""
    assert "description" not in quiet.definition["function"]


async def test_tool_is_still_callable_as_the_function() -> None:
    @tool
    def double(a: int) -> int:
        return a * 2

    @tool
    async def triple(ctx: ToolContext | None, a: int) -> int:
        return a * 3

    assert double(4) == 8
    assert await triple(None, 4) == 12


def _no_hint(order_id):  # type: ignore[no-untyped-def]
    return order_id


def _var_args(*order_ids: str) -> None:
    return None


def _var_kwargs(order_id: str, **extra: str) -> None:
    return None


def _unresolvable(order_id: NotDefinedAnywhere) -> None:  # type: ignore[name-defined]  # noqa: F821
    return None


@pytest.mark.parametrize(
    ("function", "options", "message"),
    [
        (_no_hint, {}, "tool test_decorator:_no_hint: parameter 'order_id' has no type hint; annotate it"),
        (_var_args, {}, "tool test_decorator:_var_args: *order_ids is not allowed"),
        (_var_kwargs, {}, "tool test_decorator:_var_kwargs: **extra is not allowed"),
        (_unresolvable, {}, "tool test_decorator:_unresolvable: cannot resolve its type hints (NameError"),
        (_var_args, {"name": "has space"}, "the name 'has space' is not allowed; use 1-64 letters"),
        (_var_args, {"name": "x" * 65}, "is not allowed; use 1-64 letters, digits"),
        (_var_args, {"name": ""}, "the name '' is not allowed"),
        (_var_args, {"name": "dots.not.ok"}, "the name 'dots.not.ok' is not allowed"),
        (_var_args, {"name": "transfer_to_returns"}, "names starting with 'transfer_to_' are reserved"),
        (_no_hint, {"timeout": 0}, "timeout must be a positive number of seconds, got 0"),
    ],
)
def test_bad_tools_are_refused_naming_module_and_function(function: Any, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        tool(**options)(function)

    assert message in str(caught.value).replace("tests.tools.", "")


def test_transfer_prefix_from_function_name_is_refused() -> None:
    def transfer_to_returns() -> None:
        return None

    with pytest.raises(ConfigError, match="reserved for flow handoffs"):
        tool(transfer_to_returns)


def test_applying_twice_is_refused() -> None:
    @tool
    def once() -> None:
        return None

    with pytest.raises(ConfigError, match="applied twice"):
        tool(once)


def test_name_with_dash_and_64_chars_is_accepted() -> None:
    made = tool(name="a-" + "b" * 62)(_no_hint_ok)
    assert len(made.name) == 64


def _no_hint_ok(order_id: str) -> str:
    return order_id


def test_context_imported_only_for_type_checking_still_resolves() -> None:
    namespace: dict[str, Any] = {}
    exec(  # a module that imports ToolContext under TYPE_CHECKING only
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from supportbot.tools import ToolContext\n"
        "def greet(ctx: ToolContext, name: str) -> str:\n"
        "    return name\n",
        namespace,
    )
    made = tool(namespace["greet"])

    assert made.arguments.context_param == "ctx"
    assert list(made.parameters["properties"]) == ["name"]
