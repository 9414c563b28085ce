"""The test-file format: its JSON Schema, the short forms, and the settings a case takes from its file."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from supportbot._yaml import load_yaml
from supportbot.flowtest import TestFile
from supportbot.flowtest.run import case_settings
from supportbot.flowtest.spec import CalledCheck, TicketFields


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every property of every object in the schema, by model and name."""
    found = []
    for model, body in [("TestFile", schema), *schema["$defs"].items()]:
        for options in [body, *body.get("anyOf", [])]:
            for name, prop in options.get("properties", {}).items():
                found.append((f"{model}.{name}", prop))
    return found


def test_the_schema_describes_every_key() -> None:
    schema = TestFile.model_json_schema()
    properties = _properties(schema)
    assert len(properties) > 50
    assert [name for name, prop in properties if not prop.get("description")] == []
    assert schema["required"] == ["cases"]
    assert {"Expect", "Turn", "Case", "ModelStep", "DemoHint", "Fixtures", "Order"} <= set(schema["$defs"])


def test_the_schema_gives_the_short_forms_and_the_enums() -> None:
    defs = TestFile.model_json_schema()["$defs"]
    expect = defs["Expect"]["properties"]
    assert {"type": "string", "minLength": 1} in expect["reply_contains"]["anyOf"]
    assert {"type": "boolean"} in expect["ticket"]["anyOf"]
    called = defs["CalledCheck"]["anyOf"]
    assert called[0]["type"] == "string" and "tool" in called[1]["properties"]
    assert defs["TicketFields"]["properties"]["kind"]["enum"] == ["request", "handoff", "escalation"]


def _file(text: str) -> TestFile:
    return TestFile.model_validate(load_yaml(text).data)


def test_the_short_forms_become_the_long_ones() -> None:
    spec = _file(
        """\
cases:
  - name: a
    turns:
      - customer: yes
        expect: {called: lookup_order, not_called: create_ticket, reply_contains: shipped, ticket: {kind: request}}
      - customer: 42
"""
    )
    first, second = spec.cases[0].turns
    assert (first.customer, second.customer) == ("yes", "42")
    assert first.expect is not None
    assert first.expect.called == [CalledCheck(tool="lookup_order")]
    assert first.expect.not_called == ["create_ticket"] and first.expect.reply_contains == ["shipped"]
    assert first.expect.ticket == TicketFields(kind="request")


@pytest.mark.parametrize(
    ("written", "moment"),
    [
        ('"2026-11-20T10:00:00Z"', datetime(2026, 11, 20, 10, tzinfo=UTC)),
        ("2026-11-20T10:00:00Z", datetime(2026, 11, 20, 10, tzinfo=UTC)),
        ("2026-11-20 10:00:00", datetime(2026, 11, 20, 10, tzinfo=UTC)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        ('"2026-11-20T12:00:00+02:00"', datetime(2026, 11, 20, 10, tzinfo=UTC)),
    ],
)
def test_now_is_an_aware_time(written: str, moment: datetime) -> None:
    assert _file(f"now: {written}\ncases: [{{name: a}}]").now == moment


def test_a_model_step_is_one_kind() -> None:
    with pytest.raises(
        ValidationError, match="give exactly one of reply:, call:, calls: and error:; found reply, call"
    ):
        _file("cases: [{name: a, turns: [{customer: hi, model: [{reply: x, call: y}]}]}]")
    with pytest.raises(ValidationError, match="args: goes with call:"):
        _file("cases: [{name: a, turns: [{customer: hi, model: [{reply: x, args: {a: 1}}]}]}]")


def test_a_case_takes_the_file_settings_it_does_not_override() -> None:
    spec = _file(
        """\
flow: order_status
channel: email
customer: {email: ana@example.com, verified: true}
now: 2026-11-20T10:00:00Z
fixtures:
  orders: [{order_id: A1, customer_email: ana@example.com}]
  customers: [{email: ben@example.com}]
rules: [{when: file, reply: from the file}]
cases:
  - name: inherits
  - name: overrides
    flow: returns
    channel: slack
    customer: null
    now: 2026-12-01T08:00:00Z
    fixtures: {customers: []}
    rules: [{when: case, reply: from the case}]
"""
    )
    inherits, overrides = (case_settings(spec, case) for case in spec.cases)
    assert (inherits.flow, inherits.channel, inherits.now) == ("order_status", "email", spec.now)
    assert inherits.customer is not None and inherits.customer.email == "ana@example.com"
    assert [o.order_id for o in inherits.orders or []] == ["A1"] and len(inherits.customers) == 1
    assert [r.reply for r in inherits.rules] == ["from the file"]
    assert (overrides.flow, overrides.channel, overrides.customer) == ("returns", "slack", None)
    assert overrides.now == datetime(2026, 12, 1, 8, tzinfo=UTC)
    # Fixtures key by key: the case's customers, the file's orders.
    assert overrides.customers == [] and [o.order_id for o in overrides.orders or []] == ["A1"]
    # The case's rules come first, then the file's.
    assert [r.reply for r in overrides.rules] == ["from the case", "from the file"]


def test_defaults_without_settings() -> None:
    settings = case_settings(spec := _file("cases: [{name: a}]"), spec.cases[0])
    assert (settings.flow, settings.channel, settings.customer, settings.now) == (None, "web", None, None)
    assert (settings.orders, settings.customers, settings.rules) == (None, [], ())


def test_an_order_number_may_be_a_number() -> None:
    spec = _file("fixtures: {orders: [{order_id: 1001, total: 9.5}]}\ncases: [{name: a}]")
    assert spec.fixtures is not None and spec.fixtures.orders is not None
    order = spec.fixtures.orders[0]
    assert order.order_id == "1001" and order.model_dump(exclude_none=True) == {"order_id": "1001", "total": 9.5}
