"""The configuration file's schema (pydantic) and its loader.

Defaults come from the default model's card (gemini-3.1-flash-live-preview). Every model
forbids unknown keys so a typo is reported, not ignored. ``load_config`` finds the file
(``-c``, ``$SUPPORTBOT_CONFIG``, ``./config.yaml``, else the embedded defaults), expands
``${VAR}`` / ``${VAR:-default}``, validates, and reports every problem at once as
``config.yaml:12: llm.max_tokens: ...``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator

from supportbot._yaml import (
    Problems,
    YamlDocument,
    YamlPath,
    YamlSyntaxError,
    dotted,
    error_paths,
    is_secret_name,
    load_yaml,
    validation_problems,
)
from supportbot.errors import ConfigError

DEFAULT_BASE_URL = "https://api.core.today/llm/gemini/v1beta/openai"
DEFAULT_MODEL = "gemini-3.1-flash-live-preview"
MAX_OUTPUT_TOKENS = 65_536
CONTEXT_WINDOW = 131_072
API_KEY_ENV = "SUPPORTBOT_LLM_API_KEY"
CONFIG_ENV = "SUPPORTBOT_CONFIG"

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLE_FLOWS_DIR = EXAMPLES_DIR / "flows"
EXAMPLE_ORDERS_FILE = EXAMPLES_DIR / "orders.yaml"

FLOW_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
_REDACTED = "**********"
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@/\s]+@")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() of any section never show a secret (api keys, tokens, passwords in URLs).
        for name, value in super().__repr_args__():
            yield name, _redact(name, value)


class Pricing(_Section):
    """What the model costs, in US dollars per one million tokens: the cost of each message, conversation,
    ticket and flow is computed from it."""

    input_per_mtok: float = Field(
        0.75, ge=0, description="US dollars per one million input tokens (the prompt: system prompt, history, tools)."
    )
    output_per_mtok: float = Field(
        4.50, ge=0, description="US dollars per one million output tokens (the model's answers and tool calls)."
    )
    audio_input_per_mtok: float = Field(3.00, ge=0, description="US dollars per one million audio input tokens.")


class RetrySettings(_Section):
    """Retries of a failed model request: connection errors, timeouts and HTTP 408/409/429/5xx (a Retry-After
    of up to 60 seconds is honoured)."""

    max_retries: int = Field(
        2, ge=0, le=10, description="How many times a failed request is tried again (0-10); 0: never."
    )
    backoff_initial_s: float = Field(
        0.5,
        ge=0,
        description="Seconds before the first retry; the wait doubles with each retry, up to backoff_max_s.",
    )
    backoff_max_s: float = Field(8.0, ge=0, description="The longest wait between two tries, in seconds.")


class TimeoutSettings(_Section):
    """How long a model request may take, in seconds; a request that runs out of time is retried (see
    ``retries``)."""

    connect_s: float = Field(10.0, gt=0, description="Seconds to connect to the endpoint.")
    first_byte_s: float = Field(60.0, gt=0, description="Seconds until the first byte of the answer.")
    between_chunks_s: float = Field(30.0, gt=0, description="The longest silence inside a streamed answer, in seconds.")
    total_s: float = Field(300.0, gt=0, description="Seconds for the whole request, the answer included.")


class ResilienceSettings(_Section):
    """How one worker contains a model outage: a circuit breaker on the endpoint and a cap on concurrent calls.

    A failed call is one that still failed after ``retries``: a connection error, a timeout, an HTTP 5xx
    or 429, or a broken stream; a 4xx caused by the request itself does not count.
    """

    failure_threshold: int = Field(
        5,
        ge=1,
        description="Failed model calls in a row that open the circuit breaker: calls then fail at once, no "
        "request is sent, and customers get the fallback reply and one escalation ticket per conversation.",
    )
    open_s: float = Field(
        30.0,
        gt=0,
        description="Seconds the breaker stays open; then one probe call is let through: success closes it, "
        "failure opens it again.",
    )
    max_concurrent_calls: int = Field(
        64, ge=1, description="Model calls one worker runs at once; more wait their turn in arrival order."
    )
    max_queued_calls: int = Field(
        256,
        ge=0,
        description="Model calls that may wait for a free slot; while this many wait, new customer messages are "
        "refused unstored (HTTP 429 with Retry-After; Slack and email send them again later).",
    )
    busy_retry_after_s: int = Field(
        5, ge=1, description="The Retry-After, in seconds, of a message refused because the queue is full."
    )


class LLMSettings(_Section):
    """The model: any OpenAI-compatible chat-completions endpoint (Google's own ``.../v1beta/openai``, OpenAI,
    vLLM, Ollama, LiteLLM...) and the default sampling settings; a flow's ``model`` section overrides them.

    ``api_key`` is None when no key is set (an empty value counts as none).
    """

    base_url: str = Field(
        DEFAULT_BASE_URL,
        description="The endpoint's base URL (http or https); /chat/completions is added to it.",
        examples=[DEFAULT_BASE_URL, "https://api.openai.com/v1", "http://127.0.0.1:11434/v1"],
    )
    api_key: SecretStr | None = Field(
        None,
        description=(
            f"A secret: write ${{{API_KEY_ENV}}}, never the key itself. Sent as 'Authorization: Bearer <key>'. "
            f"Unset or empty: ${API_KEY_ENV} is used if set, else no model is connected and `supportbot "
            "chat/serve` say how to set one (or run them with --demo)."
        ),
        examples=[f"${{{API_KEY_ENV}}}"],
    )
    model: str = Field(
        DEFAULT_MODEL, min_length=1, description="The model's name as the endpoint knows it.", examples=[DEFAULT_MODEL]
    )
    stream: bool = Field(True, description="Stream answers token by token; false: each answer is fetched in one piece.")
    temperature: float = Field(
        1.0, ge=0, le=2, description="Sampling temperature, 0-2; Google advises leaving Gemini 3 models at 1.0."
    )
    top_p: float = Field(0.95, ge=0, le=1, description="Nucleus sampling: the probability mass sampled from, 0-1.")
    max_tokens: int = Field(
        1024,
        ge=1,
        le=MAX_OUTPUT_TOKENS,
        description=f"The longest answer in tokens, 1-{MAX_OUTPUT_TOKENS} (the model's output limit); flows may "
        "override it.",
    )
    context_window: int = Field(
        CONTEXT_WINDOW,
        ge=1024,
        le=CONTEXT_WINDOW,
        description=f"Tokens the model reads and writes in one request, 1024-{CONTEXT_WINDOW}: input and output must "
        "fit, so older messages are left out to make room.",
    )
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = Field(
        None, description="Passed through to the model; null: the provider's default. Flows may override it."
    )
    pricing: Pricing = Field(Pricing(), description="US dollars per one million tokens, for the cost of each message.")
    retries: RetrySettings = Field(
        RetrySettings(), description="Retries of failed requests (connection errors, timeouts, 408/409/429/5xx)."
    )
    timeouts: TimeoutSettings = Field(TimeoutSettings(), description="How long a request may take, in seconds.")
    resilience: ResilienceSettings = Field(
        ResilienceSettings(), description="The circuit breaker on the endpoint and the cap on concurrent model calls."
    )
    extra_headers: dict[str, str] = Field(
        {},
        description="HTTP headers added to every request.",
        examples=[{"X-Team": "support"}],
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def key_missing(self) -> bool:
        """True when no key is set for the default hosted endpoint (another ``base_url``, e.g. a local
        server, may need none)."""
        return self.api_key is None and self.base_url == DEFAULT_BASE_URL

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            shown = _URL_PASSWORD.sub(r"\1***@", value)
            raise ValueError(
                f"{shown!r} is not an http(s) URL; write the endpoint's base, e.g. {DEFAULT_BASE_URL} "
                "or http://127.0.0.1:11434/v1"
            )
        return value


class DatabaseSettings(_Section):
    """Where conversations, tickets and customers are stored: SQLite (one process) or PostgreSQL (several
    workers)."""

    url: str = Field(
        "sqlite+aiosqlite:///supportbot.db",
        description=(
            "An SQLAlchemy async URL: sqlite+aiosqlite:///FILE (a relative FILE is relative to the config file) or "
            "postgresql+asyncpg://USER:PASSWORD@HOST/DB (put the password in a variable)."
        ),
        examples=[
            "sqlite+aiosqlite:///supportbot.db",
            "postgresql+asyncpg://support:${PGPASSWORD}@db.internal/support",
        ],
    )
    echo: bool = Field(False, description="Log every SQL statement (debugging only).")
    pool_size: int = Field(
        5, ge=1, le=100,
        description=(
            "PostgreSQL: connections each worker keeps open. A worker uses at most pool_size + max_overflow + 8 "
            "(4 for storing messages, 1 for conversation locks, 1 for lease renewals, 2 for events between "
            "workers); keep workers x that under the server's max_connections."
        ),
    )  # fmt: skip
    max_overflow: int = Field(
        5, ge=0, le=100, description="PostgreSQL: connections a worker may open on top of pool_size when busy."
    )

    @field_validator("url")
    @classmethod
    def _looks_like_url(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
            raise ValueError(
                "not a database URL; write e.g. sqlite+aiosqlite:///supportbot.db or postgresql+asyncpg://user@host/db"
            )
        return value


class FlowSettings(_Section):
    """Where the flows are.

    ``dir`` unset (or null) means the example flows shipped with supportbot. A directory of one's own
    replaces them, unless ``include_examples`` loads them too (a flow of one's own with the name of
    an example flow replaces that one).
    """

    dir: Path = Field(
        EXAMPLE_FLOWS_DIR,
        description=(
            "Your flows, one per *.yaml file (relative to the config file); null: the example flows shipped with "
            "supportbot (general, order_status, returns). Your own directory replaces them: flows.default and every "
            "handoffs entry must then name flows in it, unless include_examples keeps them."
        ),
        examples=["flows"],
    )
    include_examples: bool = Field(
        False,
        description=(
            "Load the example flows beside yours (one of yours with the same name replaces the example); "
            "`supportbot validate` prints where they are."
        ),
    )
    default: str = Field(
        "general",
        pattern=FLOW_NAME_PATTERN,
        description="The name of the flow new conversations start in.",
        examples=["general"],
    )

    @field_validator("dir", mode="before")
    @classmethod
    def _null_is_the_examples(cls, value: Any) -> Any:
        return EXAMPLE_FLOWS_DIR if value is None else value


class ToolSettings(_Section):
    """The tools flows may offer the model, besides the built-in ones (lookup_order, create_ticket,
    handoff_to_human).

    Modules are imported from the config file's directory first, then the working directory, then installed
    packages; the ``*.py`` files of a ``tools/`` directory in either place are registered too.
    """

    modules: list[str] = Field(
        [],
        description="Importable modules whose @tool functions are registered, e.g. acme_tools for acme_tools.py.",
        examples=[["acme_tools"]],
    )
    timeout_s: float = Field(
        15.0, gt=0, description="The default per-tool timeout in seconds (a @tool(timeout=...) overrides it)."
    )


class SqlOrders(_Section):
    """Orders in a SQL table: the store's own ``orders`` table unless ``url``/``table`` say otherwise."""

    source: Literal["sql"] = Field(description="sql: orders are rows of a SQL table.")
    url: str | None = Field(
        None,
        description="Another database's SQLAlchemy async URL (a relative SQLite file is relative to the config "
        "file); null: database.url.",
    )
    table: str = Field("orders", description="The table holding one row per order.")
    id_column: str = Field("order_id", description="The column holding the order number the customer gives.")
    email_column: str = Field(
        "customer_email", description="The column holding the customer's email: an order is shown only to them."
    )


class HttpOrders(_Section):
    """Orders from the shop's HTTP API: GET ``url_template`` with ``{order_id}`` filled in."""

    source: Literal["http"] = Field(description="http: each order is fetched from the shop's HTTP API.")
    url_template: str = Field(
        description=(
            "An http(s) URL containing {order_id}, which is replaced by the URL-quoted order number; the answer is "
            "the order as a JSON object, and 404 means no such order."
        ),
        examples=["https://shop.acme.example/api/orders/{order_id}"],
    )
    headers: dict[str, str] = Field(
        {},
        description="HTTP headers sent with each request, e.g. the shop's access token (from a variable).",
        examples=[{"Authorization": "Bearer ${SHOP_API_TOKEN}"}],
    )
    email_field: str = Field(
        "customer_email",
        description="The key of the order's JSON object holding the customer's email: an order is shown only to them.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Seconds one request to the shop may take.")

    @field_validator("url_template")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if "{order_id}" not in value or not re.match(r"^https?://", value):
            raise ValueError(
                # The value is not shown: shop URLs often carry an access key in the query string.
                "must be an http(s) URL containing {order_id}, e.g. https://shop.example/api/orders/{order_id}"
            )
        return value


class FileOrders(_Section):
    """Orders in a CSV or YAML file (demos and tests)."""

    source: Literal["file"] = Field(
        description="file: orders are read from a CSV or YAML file (a list of orders or a mapping id -> order)."
    )
    path: Path = Field(
        EXAMPLE_ORDERS_FILE,
        description=(
            "The CSV or YAML file (relative to the config file); null: the demo orders shipped with supportbot "
            "(A1001-A1007)."
        ),
        examples=["orders.csv", "orders.yaml"],
    )
    id_field: str = Field("order_id", description="The field holding the order number the customer gives.")
    email_field: str = Field(
        "customer_email", description="The field holding the customer's email: an order is shown only to them."
    )

    @field_validator("path", mode="before")
    @classmethod
    def _null_is_the_demo_orders(cls, value: Any) -> Any:
        return EXAMPLE_ORDERS_FILE if value is None else value


OrderSettings = SqlOrders | HttpOrders | FileOrders


class ServerSettings(_Section):
    """The HTTP server of ``supportbot serve``: the widget, the APIs, the connectors' webhooks and ``/admin``."""

    host: str = Field(
        "127.0.0.1",
        description="The address to listen on; 0.0.0.0 accepts connections from other machines.",
        examples=["127.0.0.1", "0.0.0.0"],
    )
    port: int = Field(8080, ge=0, le=65535, description="The TCP port to listen on (0-65535; 0: any free port).")
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        le=600,
        description=(
            "On SIGTERM: how many seconds (0-600) running turns may take to finish before they are handed back to "
            "the database (and resumed at the next start)."
        ),
    )
    trust_forwarded_for: bool = Field(
        False,
        description=(
            "True behind a reverse proxy: limits use X-Forwarded-For's client, and X-Forwarded-Proto: https makes "
            "admin cookies Secure. Leave false when clients reach the server directly (they could forge it)."
        ),
    )
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description=(
            "How operators reach this server: the base of admin-page links in ticket announcements (Slack); "
            "null: relative links."
        ),
        examples=["https://support.acme.example"],
    )
    delivery_give_up_after_s: float = Field(
        3600.0,
        ge=1,
        le=7 * 24 * 3600,
        description=(
            "Seconds (1 to 604800, a week) a reply a channel keeps refusing (Slack down, a 429 storm) is retried with "
            "backoff; then it is given up: marked failed and noted on an escalation ticket so an operator sees it."
        ),
    )

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value


class ConnectorSettings(_Section):
    """The channels customers use: one section per connector (web, slack, email, or one installed as a
    ``supportbot.connectors`` entry point).

    Each section belongs to its connector, whose settings model checks it (see
    ``supportbot.channels.Connector``); ``Config.connector(name)`` gives the checked settings. A connector
    with ``enabled: false`` may name variables that are not set yet.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    web: dict[str, Any] = Field({}, description="The chat widget (/widget.js), its demo page (/) and the REST/SSE API.")
    slack: dict[str, Any] = Field({}, description="Slack: DMs, @mentions and assistant threads.")
    email: dict[str, Any] = Field({}, description="A support mailbox: read over IMAP, answered over SMTP.")


class AdminSettings(_Section):
    """The ``/admin`` page and the admin JSON API (``supportbot.admin``).

    Operators sign in with a password: the one whose hash is ``password_hash`` (user ``admin``;
    make a hash with ``supportbot admin hash-password``) or an account made with
    ``supportbot admin set-password``. ``token`` is the Bearer token of ``/api/v1/admin/…`` and is
    accepted on the login page too.
    """

    enabled: bool = Field(
        True,
        description=(
            "Serve /admin and /api/v1/admin/ (on server.host: keep it on 127.0.0.1 or behind your VPN or proxy)."
        ),
    )
    password_hash: SecretStr | None = Field(
        None,
        description=(
            "The hash of user admin's password (scrypt$..., made by `supportbot admin hash-password`); best from a "
            "variable. Empty: only operators made with `supportbot admin set-password` sign in."
        ),
        examples=["${SUPPORTBOT_ADMIN_PASSWORD_HASH:-}"],
    )
    token: SecretStr | None = Field(
        None,
        description=(
            "A secret: the Bearer token of /api/v1/admin/... (16 or more random characters), also accepted on the "
            "login page; write ${VAR}, never the token itself. Empty: the admin API is off."
        ),
        examples=["${SUPPORTBOT_ADMIN_TOKEN:-}"],
    )
    session_hours: float = Field(
        12.0,
        gt=0,
        le=720,
        description="How many hours a sign-in lasts (at most 720; an HttpOnly, SameSite=Strict cookie).",
    )
    login_attempts_per_5_minutes: int = Field(
        5, ge=1, description="Failed sign-ins allowed per client address in 5 minutes; more are refused."
    )

    @field_validator("password_hash", "token", mode="before")
    @classmethod
    def _empty_secret(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError(
                "is too short to be safe; use 16 or more random characters, e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return value

    @field_validator("password_hash")
    @classmethod
    def _hash_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("scrypt$"):
            raise ValueError(
                "is not a password hash; make one with `supportbot admin hash-password` (it starts with 'scrypt$')"
            )
        return value


class LimitSettings(_Section):
    """What a customer may send: a message over these limits is refused (HTTP 413), never stored; and what
    model calls may cost per day, per customer and in all (over a cap, conversations go to a person)."""

    max_message_chars: int = Field(8000, ge=1, description="The longest customer message, in characters.")
    max_image_bytes: int = Field(5_000_000, ge=1, description="The largest image a customer may send, in bytes.")
    max_images_per_message: int = Field(4, ge=0, description="Images one message may carry; 0: no images.")
    tickets_per_customer_per_day: int = Field(
        3,
        ge=1,
        description=(
            "Tickets the bot's create_ticket may open per customer in 24 hours (all their conversations together; "
            "per conversation for an unverified customer); more are refused, however many run at once."
        ),
    )
    max_cost_usd_per_customer_per_day: float | None = Field(
        None,
        ge=0,
        description=(
            "US dollars of model calls one customer may cost per UTC day (all their conversations together); "
            "over it the bot hands the conversation to a person. null or 0: no cap (each flow's "
            "limits.max_cost_usd still caps a conversation)."
        ),
    )
    max_cost_usd_per_day: float | None = Field(
        None,
        ge=0,
        description=(
            "US dollars of model calls all customers together may cost per UTC day; over it every conversation "
            "is handed to a person until midnight UTC. null or 0: no cap."
        ),
    )


class LoggingSettings(_Section):
    """What supportbot logs and how."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="The least severe level logged.")
    format: Literal["text", "json"] = Field(
        "text", description="text: lines for people; json: JSON lines, for production log collectors."
    )
    redact_pii: bool = Field(True, description="Mask emails, phone and card numbers in logs (the database keeps them).")


def _default_orders() -> OrderSettings:
    return FileOrders(source="file", path=EXAMPLE_ORDERS_FILE)


_COMPANY_KEYS: dict[str, Any] = {
    "name": {"type": "string", "description": "The company's name, e.g. in the widget's title and the prompts."},
    "website": {"type": "string", "description": "The company's website, for the prompts."},
    "support_email": {"type": "string", "description": "Where customers can write, for the prompts."},
    "return_days": {"type": "integer", "description": "The return window in days (the example flows say 30 if unset)."},
}
"""The ``company`` keys the example flows use, for editors (any other key is allowed)."""


class Config(_Section):
    """The whole configuration.

    Attributes:
        source: the file it came from (None for the embedded defaults); set by ``load_config``,
            never read from the file.
    """

    __hidden_keys__: ClassVar[frozenset[str]] = frozenset({"source"})

    company: dict[str, Any] = Field(
        {
            "name": "Acme Outdoor",
            "website": "https://acme.example",
            "support_email": "help@acme.example",
        },
        description=(
            "Free-form: every key reaches the flow templates as {{ company.<key> }}. The example flows use name, "
            "website and support_email, and return_days (default 30) for the return window."
        ),
        json_schema_extra={"properties": _COMPANY_KEYS},
    )
    llm: LLMSettings = Field(
        LLMSettings(), description="The model: any OpenAI-compatible chat-completions endpoint and its settings."
    )
    database: DatabaseSettings = Field(DatabaseSettings(), description="Where conversations and tickets are stored.")
    flows: FlowSettings = Field(
        FlowSettings(), description="Where the flows are, and which one conversations start in."
    )
    tools: ToolSettings = Field(ToolSettings(), description="Your own tools' modules and the default tool timeout.")
    orders: OrderSettings = Field(
        default_factory=_default_orders,
        discriminator="source",
        description=(
            "Where lookup_order finds orders: a file (source: file; the default, the demo orders), a SQL table "
            "(source: sql) or the shop's HTTP API (source: http)."
        ),
    )
    server: ServerSettings = Field(ServerSettings(), description="The HTTP server of `supportbot serve`.")
    connectors: ConnectorSettings = Field(
        ConnectorSettings(), description="The channels customers use: web widget, Slack, email."
    )
    admin: AdminSettings = Field(AdminSettings(), description="The /admin page and the admin API.")
    limits: LimitSettings = Field(
        LimitSettings(),
        description="What a customer may send (a message over them is refused, never stored) and daily cost caps.",
    )
    logging: LoggingSettings = Field(LoggingSettings(), description="Log level and format.")
    source: Path | None = Field(None, description="Set by the loader, never read from the file.")

    _warnings: tuple[str, ...] = PrivateAttr(default=())
    _shown_as: str = PrivateAttr(default="")
    _lines: Mapping[YamlPath, int] = PrivateAttr(default_factory=dict)
    _connectors: dict[str, BaseModel] = PrivateAttr(default_factory=dict)

    def connector(self, name: str) -> BaseModel | None:
        """The settings of connector ``name`` as its own model checked them (the defaults when the file
        has no section for it); None when no installed connector has that name."""
        if name not in self._connectors:
            found = _connector_settings(name, self.connectors)
            if found is None:
                return None
            self._connectors[name] = found
        return self._connectors[name]

    @property
    def warnings(self) -> tuple[str, ...]:
        """Things that load but deserve the operator's attention (e.g. no API key), one message each."""
        return self._warnings

    def locate(self, path: YamlPath) -> tuple[str, int | None]:
        """Where the key at ``path`` (e.g. ``("tools", "modules", 0)``) is written: the file as the
        operator named it and the line (of the nearest enclosing key when it is not written);
        ``("", None)`` for the embedded defaults."""
        if not self._shown_as:
            return "", None
        parts = tuple(path)
        while parts and parts not in self._lines:
            parts = parts[:-1]
        return self._shown_as, self._lines.get(parts, 1)

    def redacted_dump(self) -> dict[str, Any]:
        """The effective settings as JSON-able data, with every secret replaced by ``**********``."""
        dumped: dict[str, Any] = _redact("", self.model_dump(mode="json"))
        return dumped


# Why a limit exists, shown after "70000 is more than 65536".
_REASONS: dict[YamlPath, str] = {
    ("llm", "max_tokens"): "the model's output limit",
    ("llm", "context_window"): "the model's context window",
    ("llm", "temperature"): "the highest temperature the API accepts",
    ("llm", "top_p"): "top_p is a probability",
}


def load_config(path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Find, read and validate the configuration.

    Args:
        path: the file to read (``-c``); a missing file is an error. When None:
            ``$SUPPORTBOT_CONFIG``, then ``./config.yaml`` if it exists, else the embedded defaults
            (the example flows and demo orders shipped with supportbot, ``./supportbot.db``).
        env: the environment for ``${VAR}`` expansion and the lookup above (default ``os.environ``).

    Returns:
        The configuration, with relative paths resolved against the file's directory.

    Raises:
        ConfigError: listing every problem, one per line, as ``file:line: key: problem; fix``.
    """
    report = read_config(path, env=env)
    report.problems.raise_if_any()
    return report.config


@dataclass(frozen=True, kw_only=True, slots=True)
class ConfigReport:
    """A configuration read as far as it goes, for ``supportbot validate``.

    Attributes:
        config: the configuration; a key with a problem has its default here, so the flows, tools
            and orders can still be checked.
        problems: every problem of the file (empty when it is valid).
        faulty: the keys that had a problem (checks that depend on them are skipped).
    """

    config: Config
    problems: Problems
    faulty: frozenset[YamlPath] = frozenset()

    def is_faulty(self, path: YamlPath) -> bool:
        """Whether ``path``, a key inside it, or a section around it had a problem."""
        return any(f[: len(path)] == path or path[: len(f)] == f for f in self.faulty)


def read_config(path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> ConfigReport:
    """Like ``load_config``, but a file with problems still gives a configuration (see ``ConfigReport``).

    Raises:
        ConfigError: the file is missing, unreadable, not YAML or not a mapping (nothing to go on).
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    file, display = _find_file(path, environ)
    if file is None:
        return ConfigReport(config=_embedded_defaults(environ), problems=Problems())
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{display}: the file is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(
            f"{display}: cannot read the configuration ({exc.strerror}); check the path and permissions"
        ) from None
    try:
        doc = load_yaml(text)
    except YamlSyntaxError as exc:
        raise ConfigError(f"{display}:{exc.line}: invalid YAML: {exc.problem}; check indentation and quoting") from None
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        raise ConfigError(
            f"{display}:{doc.line(())}: the file must be a mapping of sections (company:, llm:, database:, ...), "
            f"got {'a list' if isinstance(data, list) else 'a single value'}"
        )

    problems = Problems()
    warnings: list[str] = []
    expander = _Expander(environ, doc, display, problems, warnings)
    expanded = expander.expand(data, ())
    for key in Config.__hidden_keys__ & set(expanded):
        problems.add(display, doc.line((key,)), key, f"unknown key {key!r}; remove it")
        del expanded[key]
    _default_api_key(expanded, environ)
    faulty: set[YamlPath] = set(expander.failed)
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        validation_problems(
            exc, Config, file=display, doc=doc, problems=problems, reasons=_REASONS, skip=expander.failed
        )
        config = _without_faulty_keys(expanded, exc, faulty)
    config = _resolve_paths(config, file.parent).model_copy(update={"source": file})
    config._connectors = _check_connectors(config, doc, display, problems, faulty)
    if config.llm.api_key is None and not any("llm.api_key" in w for w in warnings):
        warnings.append(f"{display}:{doc.line(('llm', 'api_key'))}: llm.api_key: no API key is set, so {_NO_KEY}")
    config._warnings = tuple(warnings)
    config._shown_as = display
    config._lines = doc.lines
    return ConfigReport(config=config, problems=problems, faulty=frozenset(faulty))


CONNECTOR_GROUP = "supportbot.connectors"
"""The entry point group naming the connectors (``supportbot.channels.Connector``)."""


def _installed_connectors() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {entry.name: entry for entry in entry_points(group=CONNECTOR_GROUP)}


def _connector_settings(name: str, sections: ConnectorSettings) -> BaseModel | None:
    """Connector ``name``'s settings from its section (checked already by ``read_config`` for a file)."""
    entry = _installed_connectors().get(name)
    if entry is None:
        return None
    model = getattr(entry.load(), "settings", None)
    if model is None:
        return None
    raw = getattr(sections, name, None) or {}
    try:
        settings: BaseModel = model.model_validate(raw)
    except ValidationError:
        return None  # reported by read_config; the connector stays off
    return settings


def _check_connectors(
    config: Config, doc: YamlDocument, file: str, problems: Problems, faulty: set[YamlPath]
) -> dict[str, BaseModel]:
    """Check each ``connectors.<name>`` section with its connector's own settings model."""
    checked: dict[str, BaseModel] = {}
    installed = _installed_connectors()
    sections = config.connectors.model_dump()
    for name, raw in sections.items():
        path: YamlPath = ("connectors", name)
        if any(f[:2] == path for f in faulty):
            continue  # a variable of it is not set: reported already, and its values are not known
        if not isinstance(raw, dict):
            problems.add(file, doc.line(path), f"connectors.{name}", "must be a mapping of settings")
            faulty.add(path)
            continue
        entry = installed.get(name)
        if entry is None:
            if raw.get("enabled") is True:
                known = ", ".join(sorted(installed)) or "none"
                problems.add(file, doc.line(path), f"connectors.{name}",
                             f"no connector named {name!r} is installed (installed: {known}); "
                             "remove the section or install the package that provides it")  # fmt: skip
                faulty.add(path)
            continue
        model = getattr(entry.load(), "settings", None)
        if model is None:
            continue
        try:
            checked[name] = model.model_validate(raw)
        except ValidationError as exc:
            validation_problems(exc, model, file=file, doc=doc, problems=problems, prefix=path)
            faulty.add(path)
    return checked


def _without_faulty_keys(data: dict[str, Any], exc: ValidationError, faulty: set[YamlPath]) -> Config:
    """The configuration with every refused key left out (so it takes its default), noting them in ``faulty``."""
    for _ in range(20):  # each round removes at least one key; a file has only so many
        for path in error_paths(exc, Config):
            faulty.add(_remove(data, path))
        try:
            return Config.model_validate(data)
        except ValidationError as again:
            exc = again
    return Config()  # pragma: no cover - the loop above removes whatever pydantic refuses


def _remove(data: dict[str, Any], path: YamlPath) -> YamlPath:
    """Delete the deepest mapping key of ``path`` that exists in ``data``; the path removed."""
    node: Any = data
    removed: YamlPath = ()
    for part in path:
        if isinstance(part, int) or not isinstance(node, dict) or part not in node:
            break  # a list item goes with its whole list; a missing key takes its section with it
        removed = (*removed, part)
        if removed != path:
            node = node[part]
    if not removed:
        return ()
    parent: Any = data
    for part in removed[:-1]:
        parent = parent[part]
    parent.pop(removed[-1], None)
    return removed


_NO_KEY = (
    f"requests go to the model without a key; a local server may not need one, but hosted APIs refuse them. "
    f"export {API_KEY_ENV}=<your key>, or run with --demo to try supportbot offline"
)


def _find_file(path: str | Path | None, env: Mapping[str, str]) -> tuple[Path | None, str]:
    if path is not None:
        given, how = Path(path), ""
    elif env.get(CONFIG_ENV):
        given, how = Path(env[CONFIG_ENV]), f"${CONFIG_ENV}"
    elif Path("config.yaml").is_file():
        given, how = Path("config.yaml"), ""
    else:
        return None, ""
    file = given.expanduser()
    if not file.is_file():
        what = "is not a file" if file.exists() else "does not exist"
        source = f" (named by {how})" if how else ""
        raise ConfigError(
            f"{given}: the configuration file{source} {what}; check the path, or start one from config.example.yaml "
            "in supportbot's repository"
        )
    return Path(os.path.normpath(file.absolute())), str(given)


def _embedded_defaults(env: Mapping[str, str]) -> Config:
    key = env.get(API_KEY_ENV, "")
    config = Config(llm=LLMSettings(api_key=SecretStr(key) if key.strip() else None))
    if config.llm.api_key is None:
        config._warnings = (f"llm.api_key: no API key is set, so {_NO_KEY}",)
    return config


def _default_api_key(data: dict[str, Any], env: Mapping[str, str]) -> None:
    # Without an api_key line the key still comes from the environment: api_key: ${SUPPORTBOT_LLM_API_KEY:-}.
    key = env.get(API_KEY_ENV, "")
    llm = data.get("llm")
    if not key.strip() or (llm is not None and not isinstance(llm, dict)):
        return
    if llm is None:
        data["llm"] = {"api_key": key}
    else:
        llm.setdefault("api_key", key)


_VAR = re.compile(
    r"(?P<escape>\$\$\{)"
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|(?P<bad>\$\{)"
)
_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})


class _Expander:
    """``${VAR}``, ``${VAR:-default}`` and ``$${`` (a literal ``${``) in every string value."""

    def __init__(
        self, env: Mapping[str, str], doc: YamlDocument, file: str, problems: Problems, warnings: list[str]
    ) -> None:
        self.env = env
        self.doc = doc
        self.file = file
        self.problems = problems
        self.warnings = warnings
        self.failed: list[YamlPath] = []

    def expand(self, value: Any, path: YamlPath, *, lenient: bool = False) -> Any:
        if isinstance(value, str):
            return self._string(value, path, lenient=lenient)
        if isinstance(value, list):
            return [self.expand(item, (*path, i), lenient=lenient) for i, item in enumerate(value)]
        if isinstance(value, dict):
            if len(path) == 2 and path[0] == "connectors" and "enabled" in value:
                # A disabled connector may name secrets that are not exported (yet): no error for those.
                enabled = self.expand(value["enabled"], (*path, "enabled"))
                lenient = lenient or not (enabled is True or str(enabled).strip().lower() in _TRUE_WORDS)
            return {k: self.expand(v, (*path, k), lenient=lenient) for k, v in value.items()}
        return value

    def _string(self, text: str, path: YamlPath, *, lenient: bool) -> str:
        is_api_key = path == ("llm", "api_key")

        def replace(match: re.Match[str]) -> str:
            if match["escape"]:
                return "${"
            if match["bad"]:
                self._fail(path, "'${' starts no valid variable; write ${NAME} or ${NAME:-default}, or $${ for '${'")
                return ""
            name, default = match["name"], match["default"]
            value = self.env.get(name)
            if default is not None:
                return value if value else default  # like the shell: unset or empty takes the default
            if value is not None:
                return value
            if is_api_key:
                where = f"{self.file}:{self.doc.line(path)}"
                self.warnings.append(f"{where}: llm.api_key: environment variable {name} is not set, so {_NO_KEY}")
            elif not lenient:
                self._fail(path, f"environment variable {name} is not set; export it or write ${{{name}:-default}}")
            return ""

        return _VAR.sub(replace, text)

    def _fail(self, path: YamlPath, message: str) -> None:
        self.problems.add(self.file, self.doc.line(path), dotted(path), message)
        self.failed.append(path)


def _resolve_paths(config: Config, base: Path) -> Config:
    """Make relative paths (flows.dir, orders.path, sqlite files) relative to the config file's directory."""
    flows = config.flows.model_copy(update={"dir": _under(base, config.flows.dir)})
    database = config.database.model_copy(update={"url": _sqlite_under(base, config.database.url)})
    orders: OrderSettings = config.orders
    if isinstance(orders, FileOrders):
        orders = orders.model_copy(update={"path": _under(base, orders.path)})
    elif isinstance(orders, SqlOrders) and orders.url is not None:
        orders = orders.model_copy(update={"url": _sqlite_under(base, orders.url)})
    return config.model_copy(update={"flows": flows, "database": database, "orders": orders})


def _under(base: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else base / path


def _sqlite_under(base: Path, url: str) -> str:
    match = re.match(r"^(sqlite(?:\+\w+)?:///)([^?]*)(\?.*)?$", url)
    if not match:
        return url
    prefix, file, query = match.group(1), match.group(2), match.group(3) or ""
    if not file or file.startswith((":memory:", "file:")) or Path(file).is_absolute():
        return url
    return f"{prefix}{_under(base, Path(file))}{query}"


def _redact(name: object, value: Any) -> Any:
    """Replace secrets in ``value`` (found under ``name``) by ``**********``, recursively."""
    if value is None or value == "":
        return value
    if isinstance(value, SecretStr):
        return value
    if is_secret_name(name) and not isinstance(value, dict | list | bool):
        return _REDACTED
    if isinstance(value, dict):
        if isinstance(name, str) and name.endswith("headers"):
            return dict.fromkeys(value, _REDACTED)  # header values are credentials more often than not
        return {k: _redact(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(name, v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    return value
