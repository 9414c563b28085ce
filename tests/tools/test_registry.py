from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from supportbot.errors import ConfigError, ToolRetry
from supportbot.messages import ToolCall
from supportbot.store.base import Customer
from supportbot.tools import Handoff, Tool, ToolContext, ToolRegistry, ToolResult, default_registry, tool

MakeContext = Callable[..., ToolContext]


def call(name: str, arguments: str = "{}") -> ToolCall:
    return ToolCall(id="call_7", name=name, arguments=arguments)


@tool
async def lookup(ctx: ToolContext, order_id: str, qty: int = 1) -> dict[str, Any]:
    """Look something up."""
    return {"order_id": order_id, "qty": qty, "call": ctx.tool_call_id}


@tool
def kinds(kind: Literal["a", "b"], items: list[int]) -> str:
    return f"{kind}{sum(items)}"


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry([lookup, kinds])


# -- registration ------------------------------------------------------------------------------


def test_register_plain_function_and_lookup() -> None:
    def ping() -> str:
        """Ping."""
        return "pong"

    registry = ToolRegistry()
    made = registry.register(ping)

    assert isinstance(made, Tool)
    assert registry.names() == ["ping"]
    assert registry.get("ping") is made
    assert registry.get("nope") is None
    assert "ping" in registry
    assert len(registry) == 1


def test_same_tool_twice_is_a_no_op_but_another_with_the_name_is_refused(registry: ToolRegistry) -> None:
    registry.register(lookup)

    @tool(name="lookup")
    def other(x: int) -> int:
        return x

    with pytest.raises(ConfigError, match=r"the name 'lookup' is already used by test_registry:lookup; rename"):
        registry.register(other)
    assert registry.names() == ["lookup", "kinds"]


def test_schemas_follow_the_allowlist_order_and_are_cached(registry: ToolRegistry) -> None:
    first = registry.schemas(["kinds", "lookup"])

    assert [s["function"]["name"] for s in first] == ["kinds", "lookup"]
    assert registry.schemas(("kinds", "lookup"))[0] is first[0]
    assert registry.schemas([]) == []


def test_tools_needing_a_verified_customer_are_left_out_for_an_unverified_one(registry: ToolRegistry) -> None:
    @tool(requires_verified=True)
    def account_balance() -> str:
        """The customer's store credit."""
        return "12 EUR"

    registry.register(account_balance)
    names = ["lookup", "account_balance", "kinds"]

    assert [s["function"]["name"] for s in registry.schemas(names)] == names
    assert [s["function"]["name"] for s in registry.schemas(names, verified=False)] == ["lookup", "kinds"]
    assert [s["function"]["name"] for s in registry.schemas(names, verified=True)] == names


async def test_a_call_needing_a_verified_customer_is_refused_for_an_unverified_one_before_it_runs(
    registry: ToolRegistry, make_ctx: MakeContext
) -> None:
    ran: list[str] = []

    @tool(requires_verified=True)
    def account_balance(currency: str) -> str:
        """The customer's store credit.

        Args:
            currency: the currency to show it in.
        """
        ran.append(currency)
        return "12 " + currency

    registry.register(account_balance)
    stranger = Customer(id="c9", email="someone@example.com", verified=False)

    refused = await registry.call(call("account_balance", "not json"), make_ctx(customer=stranger))
    allowed = await registry.call(call("account_balance", '{"currency": "EUR"}'), make_ctx())

    assert refused.is_error and refused.content == (
        "'account_balance' was not run: the customer's identity is not verified, and this tool is only for "
        "verified customers; ask them to sign in, or offer to create a ticket for the team"
    )
    assert (allowed.is_error, allowed.content, ran) == (False, "12 EUR", ["EUR"])


def test_schemas_refuse_unknown_names(registry: ToolRegistry) -> None:
    with pytest.raises(ConfigError, match=r"unknown tool 'lookup_ordr'; registered: lookup, kinds"):
        registry.schemas(["lookup_ordr"])


def test_schema_cache_is_dropped_when_a_tool_is_added(registry: ToolRegistry) -> None:
    registry.schemas(["lookup"])

    @tool
    def late() -> None:
        return None

    registry.register(late)
    assert [s["function"]["name"] for s in registry.schemas(["lookup", "late"])] == ["lookup", "late"]


def test_default_registry_has_the_builtins() -> None:
    registry = default_registry()

    assert registry.names() == ["lookup_order", "create_ticket", "handoff_to_human"]
    assert default_registry().get("lookup_order") is registry.get("lookup_order")


# -- calling -----------------------------------------------------------------------------------


async def test_async_tool_gets_validated_arguments_and_context(registry: ToolRegistry, make_ctx: MakeContext) -> None:
    result = await registry.call(call("lookup", '{"order_id": "A1", "qty": "2"}'), make_ctx(tool_call_id="call_7"))

    assert result == ToolResult(
        content='{"order_id":"A1","qty":2,"call":"call_7"}',
        data={"order_id": "A1", "qty": 2, "call": "call_7"},
        duration_ms=result.duration_ms,
    )
    assert result.duration_ms >= 0


async def test_sync_tool_runs_in_a_worker_thread(make_ctx: MakeContext) -> None:
    @tool
    def where() -> int:
        return threading.get_ident()

    result = await ToolRegistry([where]).call(call("where"), make_ctx())

    assert not result.is_error
    assert result.data != threading.get_ident()


async def test_empty_arguments_mean_no_arguments(make_ctx: MakeContext) -> None:
    @tool
    def ping() -> str:
        return "pong"

    result = await ToolRegistry([ping]).call(call("ping", ""), make_ctx())
    assert (result.content, result.is_error) == ("pong", False)


@pytest.mark.parametrize(
    ("name", "arguments", "allowed", "message"),
    [
        ("lookup_ordr", "{}", None, "unknown tool 'lookup_ordr'; available: lookup, kinds"),
        ("kinds", "{}", ["lookup"], "unknown tool 'kinds'; available: lookup"),
        (
            "lookup",
            '{"order_id": "A1"',
            None,
            "the arguments for 'lookup' are not valid JSON (Expecting ',' delimiter at position 17); "
            "call the tool again with a JSON object of its parameters",
        ),
        ("lookup", '["A1"]', None, "the arguments for 'lookup' must be a JSON object of its parameters, not a list"),
        ("lookup", "{}", None, "invalid arguments for 'lookup': order_id: field required"),
        (
            "lookup",
            '{"order_id": "A1", "qty": "many", "customer_email": "x@y"}',
            None,
            "invalid arguments for 'lookup': qty: input should be a valid integer, unable to parse string as an "
            "integer; customer_email: unexpected argument",
        ),
        (
            "kinds",
            '{"kind": "c", "items": [1, "x"]}',
            None,
            "invalid arguments for 'kinds': kind: input should be 'a' or 'b'; items.1: input should be a valid "
            "integer, unable to parse string as an integer",
        ),
    ],
)
async def test_bad_calls_become_error_results(
    registry: ToolRegistry,
    make_ctx: MakeContext,
    name: str,
    arguments: str,
    allowed: list[str] | None,
    message: str,
) -> None:
    result = await registry.call(call(name, arguments), make_ctx(), allowed=allowed)

    assert (result.content, result.is_error, result.data, result.handoff) == (message, True, None, None)


async def test_async_tool_timeout_of_its_own(make_ctx: MakeContext) -> None:
    @tool(timeout=0.05)
    async def stuck() -> None:
        await asyncio.Event().wait()

    result = await ToolRegistry([stuck]).call(call("stuck"), make_ctx(), timeout=30)

    assert (result.content, result.is_error) == ("'stuck' timed out after 0.05 s", True)


async def test_caller_timeout_then_registry_default(make_ctx: MakeContext) -> None:
    @tool
    async def stuck() -> None:
        await asyncio.Event().wait()

    by_caller = await ToolRegistry([stuck]).call(call("stuck"), make_ctx(), timeout=0.05)
    by_default = await ToolRegistry([stuck], default_timeout=0.04).call(call("stuck"), make_ctx())

    assert by_caller.content == "'stuck' timed out after 0.05 s"
    assert by_default.content == "'stuck' timed out after 0.04 s"


async def test_sync_tool_timeout_does_not_block_the_turn(make_ctx: MakeContext) -> None:
    release = threading.Event()

    @tool(timeout=0.05)
    def blocking() -> str:
        release.wait(timeout=10)
        return "late"

    try:
        result = await ToolRegistry([blocking]).call(call("blocking"), make_ctx())
    finally:
        release.set()  # let the worker thread finish
    assert (result.content, result.is_error) == ("'blocking' timed out after 0.05 s", True)


async def test_tool_retry_message_goes_to_the_model(make_ctx: MakeContext) -> None:
    @tool
    def picky(order_id: str) -> str:
        raise ToolRetry("order ids look like A1001")

    result = await ToolRegistry([picky]).call(call("picky", '{"order_id": "x"}'), make_ctx())

    assert (result.content, result.is_error) == ("order ids look like A1001", True)


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_exception_becomes_error_result_and_is_logged(
    make_ctx: MakeContext, caplog: pytest.LogCaptureFixture, is_async: bool
) -> None:
    def broken_sync() -> None:
        raise ValueError("database said no")

    async def broken_async() -> None:
        raise ValueError("database said no")

    made = tool(name="broken")(broken_async if is_async else broken_sync)
    with caplog.at_level(logging.ERROR, logger="supportbot.tools"):
        result = await ToolRegistry([made]).call(call("broken"), make_ctx())

    assert (result.content, result.is_error) == ("tool failed: ValueError: database said no", True)
    [record] = [r for r in caplog.records if r.name == "supportbot.tools"]
    assert record.exc_info is not None and record.exc_info[0] is ValueError


async def test_a_tools_own_timeout_error_is_a_failure_not_our_timeout(make_ctx: MakeContext) -> None:
    @tool(timeout=30)
    async def upstream() -> None:
        raise TimeoutError("shop API did not answer")

    result = await ToolRegistry([upstream]).call(call("upstream"), make_ctx())

    assert result.content == "tool failed: TimeoutError: shop API did not answer"


async def test_cancelled_error_raised_by_a_tool_propagates(make_ctx: MakeContext) -> None:
    @tool
    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await ToolRegistry([cancelled]).call(call("cancelled"), make_ctx())


async def test_cancelling_the_turn_cancels_the_call(make_ctx: MakeContext) -> None:
    started = asyncio.Event()
    finished = asyncio.Event()

    @tool
    async def waits() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            finished.set()

    task = asyncio.create_task(ToolRegistry([waits]).call(call("waits"), make_ctx()))
    await started.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


@dataclasses.dataclass
class Parcel:
    weight: Decimal
    sent: datetime


class Reply(BaseModel):
    ok: bool
    note: str | None = None


@pytest.mark.parametrize(
    ("value", "content"),
    [
        ("plain text", "plain text"),
        ({"a": 1, "b": [1, 2]}, '{"a":1,"b":[1,2]}'),
        ([1, "zwei"], '[1,"zwei"]'),
        (None, "null"),
        (3, "3"),
        ({"city": "Zürich"}, '{"city":"Zürich"}'),
        (Reply(ok=True), '{"ok":true,"note":null}'),
        (
            Parcel(weight=Decimal("1.50"), sent=datetime(2026, 1, 2, 3, 4, tzinfo=UTC)),
            '{"weight":"1.50","sent":"2026-01-02T03:04:00Z"}',
        ),
    ],
    ids=["str", "dict", "list", "none", "int", "unicode", "pydantic", "dataclass-decimal-datetime"],
)
async def test_return_values_are_serialised_compactly(make_ctx: MakeContext, value: Any, content: str) -> None:
    @tool
    def give() -> Any:
        return value

    result = await ToolRegistry([give]).call(call("give"), make_ctx())

    assert (result.content, result.is_error, result.data) == (content, False, value)


async def test_unserialisable_return_value_is_an_error(make_ctx: MakeContext) -> None:
    @tool
    def give() -> Any:
        return {"lock": threading.Lock()}

    result = await ToolRegistry([give]).call(call("give"), make_ctx())

    assert result.is_error
    assert result.content.startswith("tool failed: TypeError: the tool returned a dict that can't be turned into JSON")


async def test_handoff_return_value_sets_handoff(make_ctx: MakeContext) -> None:
    @tool
    def escalate() -> Handoff:
        return Handoff(target="human", message="A person will reply.", data={"ticket_id": 4})

    result = await ToolRegistry([escalate]).call(call("escalate"), make_ctx())

    assert (result.content, result.handoff, result.data, result.is_error) == (
        "A person will reply.",
        "human",
        {"ticket_id": 4},
        False,
    )


async def test_tool_may_return_a_tool_result(make_ctx: MakeContext) -> None:
    @tool
    async def explicit() -> ToolResult:
        return ToolResult(content="nothing to do", is_error=True, data=1)

    result = await ToolRegistry([explicit]).call(call("explicit"), make_ctx())

    assert (result.content, result.is_error, result.data) == ("nothing to do", True, 1)


# -- loading -----------------------------------------------------------------------------------


@pytest.fixture
def clean_modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """tmp_path on sys.path (restored afterwards); modules imported by the test are forgotten again."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


TOOLS_MODULE = '''
from __future__ import annotations

from supportbot.tools import ToolContext, tool
from supportbot.tools.builtin import lookup_order  # a tool imported from elsewhere is registered once


@tool
async def check_stock(ctx: ToolContext, sku: str) -> dict:
    """Check whether an item is in stock.

    Args:
        sku: The article number.
    """
    return {"sku": sku, "in_stock": True}


def helper() -> int:  # not a tool
    return 1
'''


def test_load_modules_registers_module_level_tools(clean_modules: Path) -> None:
    name = f"acme_tools_{uuid.uuid4().hex}"
    (clean_modules / f"{name}.py").write_text(TOOLS_MODULE)
    registry = default_registry()

    added = registry.load_modules([name])

    assert added == ["check_stock"]
    assert registry.names() == ["lookup_order", "create_ticket", "handoff_to_human", "check_stock"]
    assert registry.schemas(["check_stock"])[0]["function"]["parameters"]["properties"] == {
        "sku": {"type": "string", "description": "The article number."}
    }


def test_load_modules_puts_the_working_directory_on_the_path(
    clean_modules: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("workdir")
    name = f"acme_tools_{uuid.uuid4().hex}"
    (workdir / f"{name}.py").write_text(TOOLS_MODULE)
    monkeypatch.chdir(workdir)

    assert ToolRegistry().load_modules([name]) == ["lookup_order", "check_stock"]


def test_load_modules_missing_module_is_a_config_error(clean_modules: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        ToolRegistry().load_modules(["acme_tools_that_do_not_exist"], path=clean_modules)

    message = str(caught.value)
    assert message.startswith(
        "tools.modules: cannot import 'acme_tools_that_do_not_exist': ModuleNotFoundError: "
        "No module named 'acme_tools_that_do_not_exist'; is it on the path / is the working directory right?"
    )


def test_load_modules_broken_module_names_the_error(clean_modules: Path) -> None:
    name = f"broken_{uuid.uuid4().hex}"
    (clean_modules / f"{name}.py").write_text("x = 1 / 0\n")

    with pytest.raises(ConfigError, match=rf"cannot import '{name}': ZeroDivisionError: division by zero; fix"):
        ToolRegistry().load_modules([name])


def test_load_modules_bad_tool_signature_keeps_its_message(clean_modules: Path) -> None:
    name = f"bad_{uuid.uuid4().hex}"
    (clean_modules / f"{name}.py").write_text(
        "from supportbot.tools import tool\n\n@tool\ndef refund(amount):\n    return amount\n"
    )

    with pytest.raises(ConfigError, match=rf"tool {name}:refund: parameter 'amount' has no type hint"):
        ToolRegistry().load_modules([name])


def test_load_modules_duplicate_names_are_refused(clean_modules: Path) -> None:
    name = f"dup_{uuid.uuid4().hex}"
    (clean_modules / f"{name}.py").write_text(
        "from supportbot.tools import tool\n\n@tool\ndef lookup_order(order_id: str) -> str:\n    return order_id\n"
    )

    with pytest.raises(ConfigError, match=r"the name 'lookup_order' is already used by supportbot.tools.builtin"):
        default_registry().load_modules([name])


def test_load_directory_registers_tools_of_each_file(tmp_path: Path) -> None:
    tools_dir = tmp_path / "tools"
    tools_dir.mkdir()
    (tools_dir / "stock.py").write_text(TOOLS_MODULE)
    (tools_dir / "weather.py").write_text(
        textwrap.dedent(
            """
            from __future__ import annotations

            import dataclasses

            from supportbot.tools import tool


            @dataclasses.dataclass
            class Place:
                city: str


            @tool
            def forecast(place: Place) -> str:
                '''Tell the weather.'''
                return f"sunny in {place.city}"
            """
        )
    )
    (tools_dir / "_private.py").write_text("raise RuntimeError('must not be imported')\n")
    registry = ToolRegistry()

    assert registry.load_directory(tools_dir) == ["lookup_order", "check_stock", "forecast"]
    assert registry.load_directory(tmp_path / "missing") == []


async def test_tool_from_directory_runs_and_may_import_a_sibling(tmp_path: Path, make_ctx: MakeContext) -> None:
    (tmp_path / "_words.py").write_text("HELLO = 'hi'\n")
    (tmp_path / "greeting.py").write_text(
        "from supportbot.tools import tool\n\nfrom ._words import HELLO\n\n"
        "@tool\ndef greet(name: str) -> str:\n    return f'{HELLO} {name}'\n"
    )
    registry = ToolRegistry()
    registry.load_directory(tmp_path)

    result = await registry.call(call("greet", '{"name": "Ann"}'), make_ctx())
    assert result.content == "hi Ann"


def test_load_directory_broken_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "oops.py").write_text("import not_a_module_anywhere_xyz\n")

    with pytest.raises(ConfigError, match=r"oops.py: cannot import this tools file: ModuleNotFoundError"):
        ToolRegistry().load_directory(tmp_path)
