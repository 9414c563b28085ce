"""Running flow-test cases: the project's engine, real tools and flows, a fresh database per case, a scripted model.

Each run of a case gets a SQLite file of its own (a copy of one migrated when the runner opens, so
a case does not pay for the schema), the fixture orders and customers, an ``Engine`` whose clock is
the case's ``now``, and a ``CaseModel``: the turn's script, else the demo model, given the case's
and file's ``rules:`` as hints of its own, which it follows before the flow's ``demo:`` hints (or,
with ``--live``, the real model).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yaml

from supportbot.config import Config, FileOrders
from supportbot.engine import Engine
from supportbot.flows import Flows
from supportbot.flowtest.assertions import check
from supportbot.flowtest.converse import Conversation
from supportbot.flowtest.load import SpecFile
from supportbot.flowtest.records import CaseRecord, CaseResult, CaseRun, Failure
from supportbot.flowtest.scripted import CaseModel
from supportbot.flowtest.spec import Case, CustomerSpec, Order, TestFile
from supportbot.hints import DemoHint
from supportbot.llm.base import LLM
from supportbot.llm.demo import DemoLLM
from supportbot.store._engine import make_engine, parse_url
from supportbot.store.base import Customer
from supportbot.store.sql import SQLStore
from supportbot.tools import ToolRegistry
from supportbot.tools.orders import FileOrderSource, OrderSource

DEFAULT_CHANNEL = "web"


@dataclass(frozen=True, kw_only=True, slots=True)
class CaseSettings:
    """A case's settings after the file's defaults: what its conversation starts with."""

    flow: str | None
    channel: str
    customer: CustomerSpec | None
    now: datetime | None
    orders: list[Order] | None
    customers: list[CustomerSpec]
    rules: tuple[DemoHint, ...]


def case_settings(spec: TestFile, case: Case) -> CaseSettings:
    """``case``'s values, the file's where the case has none (fixtures key by key; rules: the case's first)."""
    fixtures = [f for f in (case.fixtures, spec.fixtures) if f is not None]
    return CaseSettings(
        flow=case.flow or spec.flow,
        channel=case.channel or spec.channel or DEFAULT_CHANNEL,
        customer=case.customer if "customer" in case.model_fields_set else spec.customer,
        now=case.now or spec.now,
        orders=next((f.orders for f in fixtures if f.orders is not None), None),
        customers=next((f.customers for f in fixtures if f.customers is not None), []),
        rules=(*case.rules, *spec.rules),
    )


class _Capture(logging.Handler):
    """Keeps the warnings a case logs, for its transcript."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname.lower()} {record.name}: {record.getMessage()}")


class OfflineModel(Protocol):
    """Makes the model of a case's unscripted turns, with the case's rules (``DemoLLM`` is one)."""

    def __call__(self, *, hints: Sequence[DemoHint]) -> LLM: ...


class _NoOrders:
    """The order source when a test has no fixture orders and the project's are not in a file: none at all."""

    async def get(self, order_id: str) -> dict[str, Any] | None:
        return None

    async def aclose(self) -> None:
        return None


class Runner:
    """Runs test cases against one project. Make one with ``open_runner``.

    Args:
        config: the project's configuration.
        tools: its tools.
        flows: its flows.
        live: the real model for ``--live``; None runs scripts and the offline model.
        offline: makes the model of a case's turns without a script (the demo model), given the case's rules.
        workdir: a temporary directory for databases and fixture files.
        http: the HTTP session tools get.
    """

    def __init__(self, *, config: Config, tools: ToolRegistry, flows: Flows, live: LLM | None,
                 offline: OfflineModel = DemoLLM, workdir: Path, http: aiohttp.ClientSession) -> None:  # fmt: skip
        self.config = config
        self.tools = tools
        self.flows = flows
        self.live = live
        self.offline = offline
        self._workdir = workdir
        self._http = http
        self._template = workdir / "template.db"
        self._runs = 0
        self._orders: dict[int, OrderSource] = {}
        orders = config.orders
        self._project_orders: OrderSource = (
            FileOrderSource(path=orders.path, id_field=orders.id_field, email_field=orders.email_field)
            if isinstance(orders, FileOrders)
            else _NoOrders()
        )
        self._capture = _Capture()

    @property
    def mode(self) -> str:
        return "live" if self.live is not None else "offline"

    async def run(
        self,
        files: Sequence[SpecFile],
        *,
        repeat: int = 1,
        min_pass_rate: float = 1.0,
        keyword: str | None = None,
        on_result: Callable[[CaseResult], None] = lambda result: None,
    ) -> list[CaseResult]:
        """Run every case of ``files`` (those whose ``file › name`` contains ``keyword``) ``repeat`` times each."""
        results = []
        for file in files:
            for index, case in enumerate(file.spec.cases):
                if not selected(file, case.name, keyword):
                    continue
                runs = tuple([await self.run_case(file, index) for _ in range(repeat)])
                result = CaseResult(file=file.name, path=file.shown, name=case.name, where=file.at(("cases", index)),
                                    runs=runs, min_pass_rate=min_pass_rate)  # fmt: skip
                on_result(result)
                results.append(result)
        return results

    async def run_case(self, file: SpecFile, index: int) -> CaseRun:
        """One run of case ``index`` of ``file``, in a database of its own."""
        started = time.perf_counter()
        self._runs += 1
        database = self._workdir / f"case-{self._runs}.db"
        shutil.copyfile(self._template, database)
        url = f"sqlite+aiosqlite:///{database}"
        parsed = parse_url(url)
        store = SQLStore(make_engine(parsed), parsed)  # a copy of the migrated template: no schema check needed
        self._capture.lines.clear()
        conversation: Conversation | None = None
        offline: LLM | None = None
        settings = case_settings(file.spec, file.spec.cases[index])
        try:
            fallback = self.live if self.live is not None else (offline := self.offline(hints=settings.rules))
            model = CaseModel(fallback=fallback, scripted=self.live is None)
            conversation = await self._start(settings, store, url, model)
            failures = await self._converse(file, index, conversation)
        except Exception as exc:  # a case that cannot go on (a broken tool module, a template) fails alone
            failures = [Failure(where=file.at(("cases", index)), what="case",
                                message=f"the case could not run: {type(exc).__name__}: {exc}")]  # fmt: skip
        finally:
            if offline is not None:
                await offline.aclose()
            await store.close()
            for leftover in database.parent.glob(database.name + "*"):
                leftover.unlink(missing_ok=True)
        record = conversation.record(logs=tuple(self._capture.lines)) if conversation else _empty_record(self.mode)
        return CaseRun(failures=tuple(failures), record=record, duration_ms=(time.perf_counter() - started) * 1000)

    async def _start(self, settings: CaseSettings, store: SQLStore, url: str, model: CaseModel) -> Conversation:
        now = settings.now
        clock: Callable[[], datetime] = (lambda: now) if now is not None else (lambda: datetime.now(UTC))
        config = self.config.model_copy(update={"database": self.config.database.model_copy(update={"url": url})})
        engine = Engine(config=config, flows=self.flows, tools=self.tools, llm=model, store=store, http=self._http,
                        orders=self._order_source(settings.orders), clock=clock)  # fmt: skip
        for other in settings.customers:
            await _customer(store, other)
        customer = await _customer(store, settings.customer)
        started, greeting = await engine.start_conversation(customer, channel=settings.channel, flow=settings.flow)
        return Conversation(engine=engine, model=model, store=store, customer=customer, conversation=started,
                            greeting=greeting, mode=self.mode)  # fmt: skip

    async def _converse(self, file: SpecFile, index: int, conversation: Conversation) -> list[Failure]:
        case = file.spec.cases[index]
        failures: list[Failure] = []
        for number, turn in enumerate(case.turns, start=1):
            base = ("cases", index, "turns", number - 1)
            record = await conversation.turn(number, turn.customer, turn.model)
            problem = conversation.model.exhausted or conversation.model.unused()
            if problem is not None:
                # Too few entries: at model:; too many: at the first one not used.
                at = (*base, "model") if conversation.model.exhausted else (*base, "model", conversation.model.used)
                failures.append(Failure(where=file.at(at), what=f"turn {number}: model", message=problem))
            if turn.expect is not None:
                failures += check(turn.expect, record.outcome, label=f"turn {number}", base=(*base, "expect"),
                                  at=file.at)  # fmt: skip
            if conversation.model.exhausted is not None:
                break  # the rest of the case was written for answers the script did not give
        if case.expect is not None:
            failures += check(
                case.expect, await conversation.outcome(), label="case", base=("cases", index, "expect"), at=file.at
            )
        return failures

    def _order_source(self, orders: list[Order] | None) -> OrderSource:
        """The fixture orders as an orders file (written once per fixture), or the project's file, or none."""
        if orders is None:
            return self._project_orders
        source = self._orders.get(id(orders))
        if source is None:
            path = self._workdir / f"orders-{len(self._orders) + 1}.yaml"
            rows = [order.model_dump(mode="json", exclude_none=True) for order in orders]
            path.write_text(yaml.safe_dump(rows, allow_unicode=True, sort_keys=False), encoding="utf-8")
            source = self._orders[id(orders)] = FileOrderSource(path=path)
        return source


def selected(file: SpecFile, name: str, keyword: str | None) -> bool:
    """Whether ``-k keyword`` selects the case ``name`` of ``file``: its ``file › name`` contains it, ignoring case."""
    return keyword is None or keyword.casefold() in f"{file.name} › {name}".casefold()


async def _customer(store: SQLStore, spec: CustomerSpec | None) -> Customer:
    if spec is None:
        return await store.get_or_create_customer()
    return await store.get_or_create_customer(email=spec.email, name=spec.name, verified=spec.verified,
                                              external_id=spec.external_id)  # fmt: skip


def _empty_record(mode: str) -> CaseRecord:
    return CaseRecord(greeting=None, customer="", flow="", channel="", mode=mode, turns=())


@asynccontextmanager
async def open_runner(
    config: Config,
    *,
    tools: ToolRegistry,
    flows: Flows,
    live: LLM | None = None,
    offline: OfflineModel = DemoLLM,
) -> AsyncIterator[Runner]:
    """A runner with its temporary directory (removed afterwards), a migrated template database and an HTTP session.

    While it is open, the ``supportbot`` logger's warnings go to the case transcripts, not the console.
    ``live`` is the model of ``--live``; ``offline`` makes the model of unscripted turns otherwise (one per case run).
    """
    logger = logging.getLogger("supportbot")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    with tempfile.TemporaryDirectory(prefix="supportbot-test-") as directory:
        workdir = Path(directory)
        await (await SQLStore.open(f"sqlite+aiosqlite:///{workdir / 'template.db'}")).close()
        async with aiohttp.ClientSession() as http:
            runner = Runner(
                config=config, tools=tools, flows=flows, live=live, offline=offline, workdir=workdir, http=http
            )
            logger.handlers[:] = [runner._capture]
            logger.setLevel(logging.WARNING)
            logger.propagate = False
            try:
                yield runner
            finally:
                logger.handlers[:], logger.propagate = saved[0], saved[2]
                logger.setLevel(saved[1])
