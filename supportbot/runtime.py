"""Everything a running supportbot holds, opened and closed together: store, model, tools, flows, engine."""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from supportbot._yaml import Problems, YamlPath
from supportbot.config import Config, ConfigReport
from supportbot.engine import Engine
from supportbot.errors import ConfigError, SupportbotError
from supportbot.flows import Flows, check_flows
from supportbot.llm.base import LLM
from supportbot.llm.breaker import GuardedLLM, endpoint_label
from supportbot.llm.client import OpenAICompatibleLLM
from supportbot.llm.demo import DemoLLM
from supportbot.store.base import Store
from supportbot.store.sql import SQLStore
from supportbot.tools import ToolRegistry, default_registry
from supportbot.tools.orders import FileOrderSource, OrderSource, make_order_source

NO_MODEL = (
    "No model is connected: set SUPPORTBOT_LLM_API_KEY (or llm.api_key in config.yaml) to the key of "
    "{base_url}, or run with --demo to try the offline demo model."
)


def project_dir(config: Config) -> Path:
    """The config file's directory, else the working directory: where ``tools.modules`` are looked up first."""
    return config.source.parent if config.source is not None else Path.cwd()


def tools_dirs(config: Config) -> list[Path]:
    """The ``tools/`` directories whose files are tools modules: beside the config file and in the working
    directory, resolved, once each (the config file's first). They need not exist."""
    return list(dict.fromkeys(d.resolve() for d in (project_dir(config) / "tools", Path.cwd() / "tools")))


def load_tools_and_flows(config: Config) -> tuple[ToolRegistry, Flows]:
    """The tool registry (built-ins, ``tools.modules`` and ``tools/`` directories) and the validated flows.

    Raises:
        ConfigError: listing every problem of the tools and the flows, one per line.
    """
    problems = Problems()
    tools, flows = _tools_and_flows(config, problems, faulty=lambda path: False)
    problems.raise_if_any()
    if flows is None:  # pragma: no cover - no flows means a problem was reported, which raised above
        raise ConfigError("the flows could not be loaded")
    return tools, flows


async def check_setup(report: ConfigReport) -> tuple[ToolRegistry, Flows]:
    """Everything ``supportbot validate`` checks: the config file, the tools, the flows and the order source.

    Checks go on past a problem (a key with a problem takes its default, and what depends on it is
    skipped), so that every problem is reported at once.

    Raises:
        ConfigError: listing every problem, one per line, as ``file:line: key: problem; fix``.
    """
    config = report.config
    problems = Problems()
    problems.items.extend(report.problems.items)
    tools, flows = _tools_and_flows(config, problems, faulty=report.is_faulty)
    if not report.is_faulty(("orders",)):
        await _check_orders(config, problems)
    problems.raise_if_any()
    if flows is None:  # pragma: no cover - no flows means a problem was reported, which raised above
        raise ConfigError("the flows could not be loaded")
    return tools, flows


def _tools_and_flows(
    config: Config, problems: Problems, *, faulty: Callable[[YamlPath], bool]
) -> tuple[ToolRegistry, Flows | None]:
    tools = default_registry(default_timeout=config.tools.timeout_s)
    complete = _load_tools(tools, config, problems) and not faulty(("tools",))
    if faulty(("flows", "dir")) or faulty(("flows", "include_examples")):
        return tools, None
    flows = check_flows(
        config.flows.dir,
        # A tools module that failed to import leaves its tools unknown: not knowing them is no mistake of a flow.
        tool_names=tools.names() if complete else None,
        company=None if faulty(("company",)) else config.company,
        default=None if faulty(("flows", "default")) else config.flows.default,
        include_examples=config.flows.include_examples,
        locate=config.locate,
        problems=problems,
    )
    return tools, flows


def _load_tools(tools: ToolRegistry, config: Config, problems: Problems) -> bool:
    """Import ``tools.modules`` and the files of ``tools/`` directories; False if any failed.

    Module names are looked up beside the config file first, then in the working directory, then
    among installed packages; ``tools/`` directories beside the config file and in the working
    directory are loaded both (once if they are the same).
    """
    here = Path.cwd()
    base = project_dir(config)
    for directory in (str(here), str(base)):  # the config file's directory ends up first
        if directory not in sys.path:
            sys.path.insert(0, directory)
    complete = True
    for index, name in enumerate(config.tools.modules):
        problem = _import_tools(tools, name, base=base, here=here)
        if problem is not None:
            complete = False
            file, line = config.locate(("tools", "modules", index))
            problems.add(file, line, f"tools.modules[{index}]", problem)
    for tools_dir in tools_dirs(config):
        try:
            tools.load_directory(tools_dir)
        except ConfigError as exc:
            complete = False
            problems.add("", None, "", str(exc))
    return complete


def _import_tools(tools: ToolRegistry, name: str, *, base: Path, here: Path) -> str | None:
    """Import one ``tools.modules`` entry and register its tools; what went wrong, or None."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            where = f"beside the config file ({base})" + (
                f" or in the working directory ({here})" if here != base else ""
            )
            return (
                f"no module {name!r} {where}, and none is installed; put {name.replace('.', '/')}.py there "
                "or install the package that has it"
            )
        return f"cannot import {name!r}: it imports {exc.name!r}, which is not installed; install it"
    except ConfigError as exc:
        return f"cannot import {name!r}: {exc}"
    except Exception as exc:
        return f"cannot import {name!r}: {type(exc).__name__}: {exc}{_raised_at(exc)}; fix the module"
    try:
        tools.load_modules([name], path=base)  # imported above: this registers its tools
    except ConfigError as exc:
        return str(exc)
    return None


def _raised_at(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames and not isinstance(exc, SyntaxError) else ""


async def _check_orders(config: Config, problems: Problems) -> None:
    """Open the order source once (a file source reads its file) so a bad one fails now, not mid-chat."""
    file, line = config.locate(("orders", "path"))
    try:
        async with aiohttp.ClientSession() as http:
            orders = make_order_source(config.orders, database_url=config.database.url, http=http)
            try:
                if isinstance(orders, FileOrderSource):
                    await orders.get("CHECK")
            finally:
                await orders.aclose()
    except SupportbotError as exc:
        problems.add(file, line, "", str(exc))


@dataclass(kw_only=True)
class Runtime:
    config: Config
    store: Store
    llm: LLM
    http: aiohttp.ClientSession
    orders: OrderSource
    engine: Engine
    closing: AsyncExitStack

    @property
    def flows(self) -> Flows:
        """The flows serving now: the engine's, which a reload replaces (``Engine.swap``)."""
        return self.engine.flows

    @property
    def tools(self) -> ToolRegistry:
        """The tool registry serving now: the engine's, which a reload replaces (``Engine.swap``)."""
        return self.engine.tools

    @property
    def guard(self) -> GuardedLLM | None:
        """The circuit breaker and concurrency cap around the model (``llm.resilience``), as the engine calls it."""
        return self.engine.llm if isinstance(self.engine.llm, GuardedLLM) else None

    @property
    def demo(self) -> bool:
        """Whether the offline demo model answers (``--demo``)."""
        return isinstance(self.llm, DemoLLM)

    @property
    def has_model(self) -> bool:
        """False only for the default hosted endpoint without a key; a local server may need none."""
        return isinstance(self.llm, DemoLLM) or not self.config.llm.key_missing

    async def aclose(self) -> None:
        """Close everything the runtime holds, the last opened first."""
        await self.closing.aclose()


async def open_runtime(
    config: Config, *, demo: bool = False, llm: LLM | None = None, store: Store | None = None
) -> Runtime:
    """Open the store (creating a new database), the HTTP session, the order source and the model client.

    ``llm`` and ``store`` replace the configured ones (tests, benchmarks, embedding); the runtime
    closes them with the rest.
    """
    tools, flows = load_tools_and_flows(config)
    async with AsyncExitStack() as stack:  # on a failure, what was opened so far is closed
        if store is None:
            database = config.database
            store = await SQLStore.open(
                database.url, echo=database.echo, pool_size=database.pool_size, max_overflow=database.max_overflow
            )
        stack.push_async_callback(store.close)
        http = aiohttp.ClientSession()
        stack.push_async_callback(http.close)
        orders = make_order_source(config.orders, database_url=config.database.url, http=http)
        stack.push_async_callback(orders.aclose)
        # The model client keeps its own connection pool, sized for one stream per running turn; the
        # shared session (tools, the order source) would cap a process at aiohttp's 100 connections.
        model: LLM = llm or (DemoLLM() if demo else OpenAICompatibleLLM(config.llm))
        stack.push_async_callback(model.aclose)
        # The engine calls the model through the circuit breaker and the concurrency cap; ``llm`` stays the bare model.
        endpoint = "demo" if isinstance(model, DemoLLM) else endpoint_label(config.llm.base_url)
        guarded = GuardedLLM(model, config.llm.resilience, endpoint=endpoint)
        engine = Engine(config=config, flows=flows, tools=tools, llm=guarded, store=store, http=http, orders=orders)
        return Runtime(config=config, store=store, llm=model, http=http, orders=orders, engine=engine,
                       closing=stack.pop_all())  # fmt: skip
    raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises
