"""A project to test flows in (config, the example flows, a custom tools module and flow) and helpers to run tests.

``project`` is a directory like the one ``supportbot init`` makes, and the working directory of
the test. ``flowtests.run(yaml)`` runs one test file in-process and returns the case results;
``flowtests.failures(yaml)`` the failure lines (``tests/t.yaml:7: turn 1: called: ...``).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from supportbot._yaml import Problems
from supportbot.cli import main
from supportbot.config import load_config
from supportbot.flowtest.load import find_files, load_files
from supportbot.flowtest.records import CaseResult
from supportbot.flowtest.run import open_runner
from supportbot.llm.base import LLM
from supportbot.llm.demo import DemoLLM
from supportbot.runtime import load_tools_and_flows

TOOLS_MODULE = "flowtest_shop_tools"

CONFIG = f"""\
company: {{name: Acme Outdoor, website: https://acme.example, support_email: help@acme.example}}
database: {{url: "sqlite+aiosqlite:///bot.db"}}
flows: {{dir: flows, include_examples: true}}
tools: {{modules: [{TOOLS_MODULE}]}}
"""

TOOLS = '''\
"""The shop's own tools."""

from supportbot import ToolContext, tool


@tool
async def order_total(ctx: ToolContext, order_id: str) -> str:
    """Tell what one of the customer's orders cost.

    Args:
        order_id: The order number, e.g. A1001.
    """
    order = await ctx.orders.get(order_id)
    if order is None or not ctx.customer.verified or order.get("customer_email") != ctx.customer.email:
        return f"no order {order_id} found for this customer"
    return f"order {order['order_id']} cost {order['total']} {order['currency']}"


@tool
async def customer_name(ctx: ToolContext, email: str) -> str:
    """Look up the name of a customer by their email address.

    Args:
        email: The email address.
    """
    found = await ctx.store.get_or_create_customer(email=email, verified=True)
    return found.name or "unknown"
'''

BILLING_FLOW = """\
name: billing
description: What orders cost, invoices and payments.
tools: [order_total, customer_name, create_ticket, handoff_to_human]
confirm: [create_ticket]
handoffs: [returns]
greeting: "Hello {{ customer.first_name or 'there' }}, billing here."
system_prompt: |
  You answer billing questions for {{ company.name }}.
  The customer is {{ customer.display_name }} ({{ 'verified' if customer.verified else 'not verified' }}),
  writing via {{ channel }}. Today is {{ now.date() }}.
  {% if not customer.verified %}Ask the customer to sign in before you share any order.{% endif %}
demo:
  - {when: "invoice", reply: "Invoices are in your account (the flow's hint)."}
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory (the working directory of the test) with config.yaml, flows/, a tools module, tests/."""
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / f"{TOOLS_MODULE}.py").write_text(TOOLS)
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "billing.yaml").write_text(BILLING_FLOW)
    (tmp_path / "tests").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in [key for key in os.environ if key.startswith("SUPPORTBOT_")]:
        monkeypatch.delenv(name)
    return tmp_path


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@dataclass
class FlowTests:
    """Runs test files of ``project`` in-process."""

    project: Path

    def write(self, text: str, name: str = "t.yaml") -> Path:
        path = self.project / "tests" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text))
        return path

    async def run(
        self,
        text: str,
        *,
        live: LLM | None = None,
        offline: Callable[[], LLM] = DemoLLM,
        repeat: int = 1,
        min_pass_rate: float = 1.0,
    ) -> list[CaseResult]:
        path = self.write(text)
        config = load_config(self.project / "config.yaml")
        tools, flows = load_tools_and_flows(config)
        problems = Problems()
        found = load_files(
            find_files([path], default=path.parent, problems=problems),
            tools=tools.names(),
            flows=list(flows),
            problems=problems,
        )
        problems.raise_if_any()
        async with open_runner(config, tools=tools, flows=flows, live=live, offline=offline) as runner:
            return await runner.run(found.files, repeat=repeat, min_pass_rate=min_pass_rate)

    async def failures(self, text: str) -> list[str]:
        """The failure lines of every case: ``where: what: message``."""
        results = await self.run(text)
        return [f"{f.where}: {f.what}: {f.message}" for r in results for run in r.runs for f in run.failures]


@pytest.fixture
def flowtests(project: Path) -> FlowTests:
    return FlowTests(project)


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """``supportbot ARGS`` in-process (stderr apart from stdout)."""
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def lines(text: str) -> Sequence[str]:
    return [line.rstrip() for line in text.splitlines()]
