"""The examples of docs/order-sources.md, docs/deploying.md and docs/operating.md, run or checked.

The order sources' files, SQL and HTTP endpoint are read through ``lookup_order``; the metrics table,
alert rules and log line are compared with what a server exposes and logs; the systemd unit and the
proxy configurations are parsed and checked for what supportbot needs. See ``tests/test_docs.py``
for the block kinds.
"""

from __future__ import annotations

import asyncio
import configparser
import csv
import json
import logging
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from supportbot.cli import main as cli_main
from supportbot.config import LimitSettings, ServerSettings, load_config
from supportbot.events import TurnFinished
from supportbot.logs import JSONFormatter
from supportbot.logview import render
from supportbot.metrics import Metrics
from supportbot.store.base import Customer
from supportbot.tools import ToolRegistry
from supportbot.tools.orders import FileOrderSource, HttpOrderSource, OrderSourceError, SqlOrderSource
from supportbot.webapp import max_message_bytes
from tests.conftest import _pg_dsn, _require_postgres
from tests.docs_blocks import (
    ANA,
    DOCS_DIR,
    ENV_VALUE,
    STRANGER,
    Block,
    all_blocks,
    blocks,
    call,
    check_cli,
    context,
    doc_tools,
    ids,
    invocations,
    of_kind,
)

"""Documented metrics built on another branch of issue 12 (i12-reload)."""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolRegistry]:
    """The built-in tools and those of the guides' python tool blocks (importable while the module runs)."""
    with doc_tools(tmp_path_factory.mktemp("doc_tools")) as tools:
        yield tools


# -- order sources ---------------------------------------------------------------------------------


def owners(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(str(row["order_id"]), str(row["customer_email"])) for row in rows]


@pytest.mark.parametrize("block", of_kind("csv", "orders") + of_kind("yaml", "orders"), ids=ids)
async def test_order_files_are_read_for_their_owners(block: Block, registry: ToolRegistry, tmp_path: Path) -> None:
    file = tmp_path / f"orders.{block.lang}"
    file.write_text(block.text, encoding="utf-8")
    rows = list(csv.DictReader(block.text.splitlines())) if block.lang == "csv" else yaml.safe_load(block.text)
    async with aiohttp.ClientSession() as http:
        source = FileOrderSource(path=file)
        for order_id, email in owners(rows):
            owner = Customer(id="c", email=email, verified=True)
            shown = json.loads(
                await call(registry, context(owner, http, source), "lookup_order", {"order_id": order_id})
            )
            assert shown["order_id"] == order_id and "customer_email" not in shown
            other = await call(registry, context(STRANGER, http, source), "lookup_order", {"order_id": order_id})
            assert other == f"no order {order_id} found for this customer"
        first = json.loads(await call(registry, context(ANA, http, source), "lookup_order", {"order_id": "a2001"}))
        assert first["items"] == [{"name": "Trailhead 2-person tent", "qty": 1}]


def run_sqlite(doc: str, database: Path) -> None:
    connection = sqlite3.connect(database)
    try:
        for block in of_kind("sql", "sqlite", doc=doc):
            connection.executescript(block.text)
        connection.commit()
    finally:
        connection.close()


@pytest.mark.parametrize("doc", sorted({b.doc for b in of_kind("sql", "sqlite")}))
async def test_sql_runs_on_sqlite(doc: str, _sqlite_template: Path, tmp_path: Path, registry: ToolRegistry) -> None:
    database = tmp_path / "supportbot.db"
    shutil.copyfile(_sqlite_template, database)  # supportbot's schema, so queries of its tables run too
    run_sqlite(doc, database)
    if doc != "order-sources.md":
        return
    url = f"sqlite+aiosqlite:///{database}"
    async with aiohttp.ClientSession() as http:
        for table, number in (("support_orders", "a-5001"), ("orders", "A3001")):
            source = SqlOrderSource(url=url, table=table)
            try:
                shown = json.loads(
                    await call(registry, context(ANA, http, source), "lookup_order", {"order_id": number})
                )
                assert shown["status"] == "shipped" and shown["order_id"] == number.upper()
                assert shown["tracking_url"].startswith("https://tracking.example/")
                hidden = await call(registry, context(STRANGER, http, source), "lookup_order", {"order_id": number})
                assert hidden == f"no order {number.upper()} found for this customer"
            finally:
                await source.aclose()


@pytest.mark.postgres
def test_sql_runs_on_postgres() -> None:
    """The guides' PostgreSQL statements, in one transaction that is rolled back: nothing stays behind."""
    import asyncpg

    _require_postgres()
    statements = [b.text for b in all_blocks() if b.lang == "sql" and "postgres" in (b.kind, *b.args)]

    async def run() -> list[Any]:
        connection = await asyncpg.connect(_pg_dsn(), timeout=5)
        try:
            transaction = connection.transaction()
            await transaction.start()
            try:
                for text in statements:
                    await connection.execute(text)
                await connection.execute("SET LOCAL ROLE supportbot_orders")  # the read-only user reads the view
                return list(await connection.fetch("SELECT order_id, customer_email, status FROM support_orders"))
            finally:
                await transaction.rollback()
        finally:
            await connection.close()

    rows = asyncio.run(run())
    assert [tuple(row) for row in rows] == [("A-5001", "Ana@Example.com", "shipped")]


async def test_the_http_adapter_serves_the_http_source(
    registry: ToolRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (adapter,) = of_kind("python", "adapter")
    monkeypatch.setenv("SUPPORT_API_TOKEN", ENV_VALUE)
    namespace: dict[str, Any] = {"__name__": "doc_adapter"}
    exec(compile(adapter.text, adapter.where, "exec"), namespace)
    runner = web.AppRunner(namespace["app"])
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    (settings,) = [b for b in of_kind("yaml", "config", doc="order-sources.md") if "source: http" in b.text]
    (tmp_path / "config.yaml").write_text(settings.text, encoding="utf-8")
    orders = load_config(tmp_path / "config.yaml", env={"SHOP_API_TOKEN": ENV_VALUE}).orders
    local = re.sub(r"^https://[^/]+", f"http://127.0.0.1:{port}", orders.url_template)  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            source = HttpOrderSource(url_template=local, headers=orders.headers, http=http)  # type: ignore[union-attr]
            shown = json.loads(await call(registry, context(ANA, http, source), "lookup_order", {"order_id": "A5001"}))
            assert shown["status"] == "shipped" and shown["items"] == [{"name": "Trailhead 2-person tent", "qty": 1}]
            assert await source.get("A9999") is None
            hidden = await call(registry, context(STRANGER, http, source), "lookup_order", {"order_id": "A5001"})
            assert hidden == "no order A5001 found for this customer"
            with pytest.raises(OrderSourceError, match="answered HTTP 401"):
                await HttpOrderSource(url_template=local, http=http).get("A5001")
    finally:
        await runner.cleanup()


# -- operating: metrics, alerts, logs --------------------------------------------------------------


def exposed_metrics() -> dict[str, str]:
    """Each metric as the guide's table names it (counters with ``_total``) and its type."""
    names: dict[str, str] = {}
    for family in Metrics().registry.collect():
        names[family.name + ("_total" if family.type == "counter" else "")] = family.type
    return names


def sample_names() -> set[str]:
    names = {"up"}
    for name, kind in exposed_metrics().items():
        names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    return names


def test_the_metrics_table_lists_every_metric() -> None:
    documented = set(
        re.findall(r"^\| `(supportbot_[a-z_]+)` \|", (DOCS_DIR / "operating.md").read_text(), re.MULTILINE)
    )
    actual = set(exposed_metrics())
    assert documented == actual


@pytest.mark.parametrize("block", of_kind("yaml", "prometheus-rules"), ids=ids)
def test_alert_rules(block: Block) -> None:
    groups = yaml.safe_load(block.text)["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all(group["name"] for group in groups)
    known = sample_names()
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] and rule["annotations"]["summary"], rule
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), rule["alert"]
        for name in re.findall(r"\b([a-z_]+)(?=\{|\[|\s|\)|$)", expr):
            if name.startswith("supportbot_") or name == "up":
                assert name in known, f"{rule['alert']}: no metric {name}"
        assert re.search(r"\bsupportbot_|\bup\{", expr), rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])


@pytest.mark.parametrize("block", of_kind("yaml", "prometheus-scrape"), ids=ids)
def test_scrape_config(block: Block) -> None:
    (job,) = yaml.safe_load(block.text)["scrape_configs"]
    server = ServerSettings()
    assert job["job_name"] == "supportbot" and job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"{server.host}:{server.port}"]


def real_turn_line() -> dict[str, Any]:
    """A turn line as the dispatcher logs it."""
    from supportbot.channels import InboundMessage
    from supportbot.dispatch import _log_turn, _TurnRecord

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("supportbot.dispatch")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        message = InboundMessage(channel="web", external_id="x", text="hi", conversation_id="c")
        _log_turn(message, "c", 1, TurnFinished(text="ok", message_id=1), _TurnRecord(started=time.perf_counter()))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return dict(json.loads(records[-1]))


@pytest.mark.parametrize("block", of_kind("json", "log"), ids=ids)
def test_the_log_line_has_the_real_fields_and_reads_as_shown(block: Block) -> None:
    shown = json.loads(block.text)
    assert set(shown) == set(real_turn_line())
    found = blocks(block.doc)
    rendered = found[found.index(block) + 1]
    assert render(shown) == rendered.text.splitlines()


# -- deploying: systemd, proxies, command lines ----------------------------------------------------


@pytest.mark.parametrize("block", of_kind("ini", "systemd"), ids=ids)
def test_systemd_unit(block: Block, tmp_path: Path) -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string(block.text)
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    for key in ("ExecStart", "User", "EnvironmentFile", "NoNewPrivileges", "ProtectSystem", "StateDirectory"):
        assert service.get(key), f"{block.where}: [Service] has no {key}"
    assert float(service["TimeoutStopSec"]) > ServerSettings().drain_timeout_s + 5
    (args,) = invocations(service["ExecStart"])
    assert check_cli(cli_main, args) is None
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # systemd's own parser: unknown keys and bad values
        file = tmp_path / "supportbot.service"
        file.write_text(block.text, encoding="utf-8")
        done = subprocess.run([analyze, "verify", str(file)], capture_output=True, text=True, timeout=30, check=False)
        complaints = [line for line in done.stderr.splitlines() if "is not executable" not in line and line.strip()]
        assert complaints == [], complaints


def nginx_locations(text: str) -> dict[str, str]:
    return {m.group(1).strip(): m.group(2) for m in re.finditer(r"location\s+([^{]+)\{(.*?)\n    \}", text, re.DOTALL)}


@pytest.mark.parametrize("block", of_kind("nginx", "proxy") + of_kind("caddy", "proxy"), ids=ids)
def test_proxy_configs(block: Block) -> None:
    text = block.text
    assert text.count("{") == text.count("}"), f"{block.where}: unbalanced braces"
    server = ServerSettings()
    upstream = f"{server.host}:{server.port}"
    if block.lang == "caddy":
        # One server, or several (docs/workers.md): every address is supportbot's port.
        (targets,) = re.findall(r"reverse_proxy ([^{\n]+)\{", text)
        assert targets.split() == [upstream] or all(t.endswith(f":{server.port}") for t in targets.split())
        assert "flush_interval -1" in text
        assert re.search(r"respond /metrics 40\d", text) and "/api/v1/admin/*" in text
        return
    size = re.search(r"client_max_body_size (\d+)m;", text)
    assert size is not None and int(size.group(1)) * 1024 * 1024 >= max_message_bytes(LimitSettings())
    # Several servers (docs/workers.md) are an upstream group of supportbot's port.
    groups = {
        m.group(1): m.group(2) for m in re.finditer(r"^upstream (\S+) \{(.*?)\n\}", text, re.DOTALL | re.MULTILINE)
    }
    for members in groups.values():
        assert all(p == str(server.port) for p in re.findall(r"^\s*server \S+:(\d+)", members, re.MULTILINE))
    allowed = {f"http://{upstream}"} | {f"http://{name}" for name in groups}
    assert all(target in allowed for target in re.findall(r"proxy_pass (\S+);", text))
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" not in text  # a client's own header must not pass
    locations = nginx_locations(text)
    for name, body in locations.items():
        if "proxy_set_header" in body:  # it replaces the server's headers: all must be repeated
            for header in ("Host $host", "X-Forwarded-For $remote_addr", "X-Forwarded-Proto $scheme"):
                assert f"proxy_set_header {header};" in body, f"{block.where}: location {name} lacks {header}"
    websocket = locations["/widget/ws"]
    assert "Upgrade $http_upgrade" in websocket and "Connection $connection_upgrade" in websocket
    assert "proxy_http_version 1.1;" in text
    assert "proxy_buffering off;" in locations["/api/v1/conversations"]
    assert "deny all;" in locations["~ ^/(admin|api/v1/admin)(/|$)"]
    assert "return 404;" in locations["= /metrics"]
