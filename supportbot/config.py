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
    """US dollars per one million tokens."""

    input_per_mtok: float = Field(0.75, ge=0)
    output_per_mtok: float = Field(4.50, ge=0)
    audio_input_per_mtok: float = Field(3.00, ge=0)


class RetrySettings(_Section):
    max_retries: int = Field(2, ge=0, le=10)
    backoff_initial_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(8.0, ge=0)


class TimeoutSettings(_Section):
    connect_s: float = Field(10.0, gt=0)
    first_byte_s: float = Field(60.0, gt=0)
    between_chunks_s: float = Field(30.0, gt=0)
    total_s: float = Field(300.0, gt=0)


class LLMSettings(_Section):
    """The OpenAI-compatible chat-completions endpoint and the default sampling settings.

    ``api_key`` is None when no key is set (an empty value counts as none).
    """

    base_url: str = DEFAULT_BASE_URL
    api_key: SecretStr | None = None
    model: str = Field(DEFAULT_MODEL, min_length=1)
    stream: bool = True
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(0.95, ge=0, le=1)
    max_tokens: int = Field(1024, ge=1, le=MAX_OUTPUT_TOKENS)
    context_window: int = Field(CONTEXT_WINDOW, ge=1024, le=CONTEXT_WINDOW)
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    pricing: Pricing = Pricing()
    retries: RetrySettings = RetrySettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    extra_headers: dict[str, str] = {}

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
    url: str = "sqlite+aiosqlite:///supportbot.db"
    echo: bool = False

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

    dir: Path = EXAMPLE_FLOWS_DIR
    include_examples: bool = False
    default: str = Field("general", pattern=FLOW_NAME_PATTERN)

    @field_validator("dir", mode="before")
    @classmethod
    def _null_is_the_examples(cls, value: Any) -> Any:
        return EXAMPLE_FLOWS_DIR if value is None else value


class ToolSettings(_Section):
    modules: list[str] = []
    timeout_s: float = Field(15.0, gt=0, description="default per-tool timeout")


class SqlOrders(_Section):
    """Orders in a SQL table: the store's own ``orders`` table unless ``url``/``table`` say otherwise."""

    source: Literal["sql"]
    url: str | None = None
    table: str = "orders"
    id_column: str = "order_id"
    email_column: str = "customer_email"


class HttpOrders(_Section):
    """Orders from the shop's HTTP API: GET ``url_template`` with ``{order_id}`` filled in."""

    source: Literal["http"]
    url_template: str
    headers: dict[str, str] = {}
    email_field: str = "customer_email"
    timeout_s: float = Field(10.0, gt=0)

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

    source: Literal["file"]
    path: Path = EXAMPLE_ORDERS_FILE
    id_field: str = "order_id"
    email_field: str = "customer_email"

    @field_validator("path", mode="before")
    @classmethod
    def _null_is_the_demo_orders(cls, value: Any) -> Any:
        return EXAMPLE_ORDERS_FILE if value is None else value


OrderSettings = SqlOrders | HttpOrders | FileOrders


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    drain_timeout_s: float = Field(30.0, ge=0, le=600)
    trust_forwarded_for: bool = False
    public_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    delivery_give_up_after_s: float = Field(3600.0, ge=1, le=7 * 24 * 3600)

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class WebRateLimits(_Section):
    """Per worker process; a refused request gets 429 with Retry-After."""

    requests_per_minute_per_ip: int = Field(300, ge=1)
    conversations_per_hour_per_ip: int = Field(60, ge=1)
    messages_per_minute_per_conversation: int = Field(20, ge=1)
    connections_per_conversation: int = Field(10, ge=1)


class WebSettings(_Section):
    """The web widget and the conversation REST/SSE API (``connectors/web``)."""

    enabled: bool = True
    allowed_origins: tuple[str, ...] = ()
    identity_secret: SecretStr | None = None
    title: str | None = Field(None, max_length=80)
    color: str = Field("#0b6e4f", pattern=r"^#[0-9a-fA-F]{6}$")
    position: Literal["right", "left"] = "right"
    greeting: str | None = Field(None, max_length=500)
    demo_page: bool = True
    rate_limits: WebRateLimits = WebRateLimits()

    @field_validator("identity_secret", mode="before")
    @classmethod
    def _empty_secret(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin; write scheme://host[:port] with no path, "
                    f"e.g. https://shop.example.com"
                )
        return tuple(origin.lower() for origin in value)


class ConnectorSettings(_Section):
    """``web`` is checked here; every other section belongs to its connector, which checks it (see
    ``supportbot.channels.Connector``): ``Config.connector(name)`` gives the checked settings."""

    model_config = ConfigDict(extra="allow", frozen=True)

    web: WebSettings = WebSettings()
    slack: dict[str, Any] = {}
    email: dict[str, Any] = {}


class AdminSettings(_Section):
    """The ``/admin`` page and the admin JSON API (``supportbot.admin``).

    Operators sign in with a password: the one whose hash is ``password_hash`` (user ``admin``;
    make a hash with ``supportbot admin hash-password``) or an account made with
    ``supportbot admin set-password``. ``token`` is the Bearer token of ``/api/v1/admin/…`` and is
    accepted on the login page too.
    """

    enabled: bool = True
    password_hash: SecretStr | None = None
    token: SecretStr | None = None
    session_hours: float = Field(12.0, gt=0, le=720)
    login_attempts_per_5_minutes: int = Field(5, ge=1)

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
    max_message_chars: int = Field(8000, ge=1)
    max_image_bytes: int = Field(5_000_000, ge=1)
    max_images_per_message: int = Field(4, ge=0)
    tickets_per_customer_per_day: int = Field(3, ge=1)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    redact_pii: bool = True


def _default_orders() -> OrderSettings:
    return FileOrders(source="file", path=EXAMPLE_ORDERS_FILE)


class Config(_Section):
    """The whole configuration.

    Attributes:
        source: the file it came from (None for the embedded defaults); set by ``load_config``,
            never read from the file.
    """

    __hidden_keys__: ClassVar[frozenset[str]] = frozenset({"source"})

    company: dict[str, Any] = {
        "name": "Acme Outdoor",
        "website": "https://acme.example",
        "support_email": "help@acme.example",
    }
    llm: LLMSettings = LLMSettings()
    database: DatabaseSettings = DatabaseSettings()
    flows: FlowSettings = FlowSettings()
    tools: ToolSettings = ToolSettings()
    orders: OrderSettings = Field(default_factory=_default_orders, discriminator="source")
    server: ServerSettings = ServerSettings()
    connectors: ConnectorSettings = ConnectorSettings()
    admin: AdminSettings = AdminSettings()
    limits: LimitSettings = LimitSettings()
    logging: LoggingSettings = LoggingSettings()
    source: Path | None = None

    _warnings: tuple[str, ...] = PrivateAttr(default=())
    _shown_as: str = PrivateAttr(default="")
    _lines: Mapping[YamlPath, int] = PrivateAttr(default_factory=dict)
    _connectors: dict[str, BaseModel] = PrivateAttr(default_factory=dict)

    def connector(self, name: str) -> BaseModel | None:
        """The settings of connector ``name`` as its own model checked them (``connectors.web`` is
        ``WebSettings``); None when no installed connector has that name."""
        if name == "web":
            return self.connectors.web
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
    sections = config.connectors.model_dump(exclude={"web"})
    for name, raw in sections.items():
        path: YamlPath = ("connectors", name)
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
