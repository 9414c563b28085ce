"""Everything a running supportbot holds, opened and closed together: store, model, tools, flows, engine."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from supportbot.config import DEFAULT_BASE_URL, Config
from supportbot.engine import Engine
from supportbot.flows import Flows, load_flows
from supportbot.llm.base import LLM
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


def load_tools_and_flows(config: Config) -> tuple[ToolRegistry, Flows]:
    """The tool registry (built-ins plus ``tools.modules``) and the validated flows; raises ConfigError."""
    tools = default_registry(default_timeout=config.tools.timeout_s)
    tools.load_modules(config.tools.modules)  # the working directory is on the import path
    if Path("tools").is_dir():
        tools.load_directory("tools")
    flows = load_flows(config.flows.dir, tool_names=tools.names(), company=config.company, default=config.flows.default)
    return tools, flows


async def check_orders(config: Config) -> None:
    """Open the order source once (a file source reads its file) so a bad one fails now, not mid-chat."""
    async with aiohttp.ClientSession() as http:
        orders = make_order_source(config.orders, database_url=config.database.url, http=http)
        try:
            if isinstance(orders, FileOrderSource):
                await orders.get("CHECK")
        finally:
            await orders.aclose()


@dataclass(kw_only=True)
class Runtime:
    config: Config
    tools: ToolRegistry
    flows: Flows
    store: Store
    llm: LLM
    http: aiohttp.ClientSession
    orders: OrderSource
    engine: Engine
    closing: AsyncExitStack

    @property
    def has_model(self) -> bool:
        """False only for the default hosted endpoint without a key; a local server may need none."""
        llm = self.config.llm
        return isinstance(self.llm, DemoLLM) or llm.api_key is not None or llm.base_url != DEFAULT_BASE_URL

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
            store = await SQLStore.open(config.database.url, echo=config.database.echo)
        stack.push_async_callback(store.close)
        http = aiohttp.ClientSession()
        stack.push_async_callback(http.close)
        orders = make_order_source(config.orders, database_url=config.database.url, http=http)
        stack.push_async_callback(orders.aclose)
        # The model client keeps its own connection pool, sized for one stream per running turn; the
        # shared session (tools, the order source) would cap a process at aiohttp's 100 connections.
        model: LLM = llm or (DemoLLM() if demo else OpenAICompatibleLLM(config.llm))
        stack.push_async_callback(model.aclose)
        engine = Engine(config=config, flows=flows, tools=tools, llm=model, store=store, http=http, orders=orders)
        return Runtime(config=config, tools=tools, flows=flows, store=store, llm=model, http=http, orders=orders,
                       engine=engine, closing=stack.pop_all())  # fmt: skip
    raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises
