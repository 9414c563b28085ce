from __future__ import annotations

import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from supportbot.config import (
    CONNECTOR_GROUP,
    EXAMPLE_FLOWS_DIR,
    EXAMPLE_ORDERS_FILE,
    Config,
    FileOrders,
    HttpOrders,
    SqlOrders,
    load_config,
    read_config,
)
from supportbot.errors import ConfigError
from supportbot.flows import load_flows

REPO = Path(__file__).resolve().parent.parent
BUILTIN_TOOLS = ("lookup_order", "create_ticket", "handoff_to_human")


def write(directory: Path, text: str, name: str = "config.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return str(info.value).splitlines()


# --- defaults and discovery -------------------------------------------------------------------


def test_defaults_equal_the_model_card() -> None:
    llm = Config().llm
    assert llm.base_url == "https://api.core.today/llm/gemini/v1beta/openai"
    assert llm.model == "gemini-3.1-flash-live-preview"
    assert (llm.stream, llm.temperature, llm.top_p, llm.max_tokens) == (True, 1.0, 0.95, 1024)
    assert (llm.context_window, llm.reasoning_effort, llm.api_key) == (131_072, None, None)
    assert (llm.pricing.input_per_mtok, llm.pricing.output_per_mtok, llm.pricing.audio_input_per_mtok) == (
        0.75,
        4.50,
        3.00,
    )


def test_no_file_gives_the_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(env={"SUPPORTBOT_LLM_API_KEY": "sk-test"})
    assert config.source is None
    assert config.flows.dir == EXAMPLE_FLOWS_DIR and EXAMPLE_FLOWS_DIR.is_dir()
    assert config.orders == FileOrders(source="file", path=EXAMPLE_ORDERS_FILE) and EXAMPLE_ORDERS_FILE.is_file()
    assert config.database.url == "sqlite+aiosqlite:///supportbot.db"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.llm.api_key is not None and config.llm.api_key.get_secret_value() == "sk-test"
    assert config.warnings == ()


def test_no_key_anywhere_loads_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert config.llm.api_key is None
    assert "SUPPORTBOT_LLM_API_KEY" in config.warnings[0] and "--demo" in config.warnings[0]


def test_config_yaml_in_the_working_directory_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "server: {port: 9000}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert config.server.port == 9000
    assert config.source == tmp_path / "config.yaml"


def test_environment_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "server: {port: 9001}\n", name="elsewhere/my.yaml")
    write(tmp_path, "server: {port: 9000}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(env={"SUPPORTBOT_CONFIG": str(path)}).server.port == 9001
    assert load_config(path).server.port == 9001


def test_missing_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: the configuration file does not exist"):
        load_config(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match=r"named by \$SUPPORTBOT_CONFIG\) does not exist"):
        load_config(env={"SUPPORTBOT_CONFIG": str(tmp_path / "gone.yaml")})


# --- environment variables --------------------------------------------------------------------


def test_variables_defaults_and_escapes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        company:
          name: ${COMPANY}
          motto: "${MOTTO:-Go outside} and $${HOME} stays"
          empty: "${EMPTY:-fallback}"
          both: "${COMPANY}-${COMPANY}"
        server:
          port: ${PORT:-8081}
        """,
    )
    config = load_config(path, env={"COMPANY": "Acme", "EMPTY": ""})
    assert config.company == {
        "name": "Acme",
        "motto": "Go outside and ${HOME} stays",
        "empty": "fallback",
        "both": "Acme-Acme",
    }
    assert config.server.port == 8081
    assert load_config(path, env={"COMPANY": "Acme", "PORT": "9"}).server.port == 9


def test_unset_variable_is_an_error_with_line_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  host: 127.0.0.1\ndatabase:\n  url: ${DB_URL}\n")
    assert problems(path) == [
        f"{path}:4: database.url: environment variable DB_URL is not set; export it or write ${{DB_URL:-default}}"
    ]


def test_malformed_reference_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "company:\n  name: ${not valid}\n")
    [line] = problems(path)
    assert line.startswith(f"{path}:2: company.name: '${{' starts no valid variable; write ${{NAME}}")


def test_disabled_connector_may_name_unset_secrets(tmp_path: Path) -> None:
    text = "connectors:\n  slack:\n    enabled: {enabled}\n    bot_token: ${{SLACK_BOT_TOKEN}}\n"
    load_config(write(tmp_path, text.format(enabled="false")), env={})
    assert problems(write(tmp_path, text.format(enabled="true"))) == [
        f"{tmp_path / 'config.yaml'}:4: connectors.slack.bot_token: environment variable SLACK_BOT_TOKEN is not "
        "set; export it or write ${SLACK_BOT_TOKEN:-default}"
    ]


# --- the API key --------------------------------------------------------------------------------


def test_api_key_variable_unset_loads_as_none_with_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "company: {name: A}\nllm:\n  api_key: ${SUPPORTBOT_LLM_API_KEY}\n")
    config = load_config(path, env={})
    assert config.llm.api_key is None
    [warning] = config.warnings
    assert warning.startswith(f"{path}:3: llm.api_key: environment variable SUPPORTBOT_LLM_API_KEY is not set")


@pytest.mark.parametrize("written", ['""', "'   '", "${EMPTY}", "${EMPTY:-}"])
def test_empty_api_key_is_none(tmp_path: Path, written: str) -> None:
    config = load_config(write(tmp_path, f"llm:\n  api_key: {written}\n"), env={"EMPTY": ""})
    assert config.llm.api_key is None
    assert any("no API key is set" in w for w in config.warnings)


def test_api_key_comes_from_the_environment_when_not_written(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "llm: {model: m}\n"), env={"SUPPORTBOT_LLM_API_KEY": "sk-env"})
    assert config.llm.api_key is not None and config.llm.api_key.get_secret_value() == "sk-env"
    written = load_config(write(tmp_path, "llm: {api_key: sk-file}\n"), env={"SUPPORTBOT_LLM_API_KEY": "sk-env"})
    assert written.llm.api_key is not None and written.llm.api_key.get_secret_value() == "sk-file"


# --- errors ---------------------------------------------------------------------------------------


def test_every_problem_is_listed_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        company:
          name: Acme
        llm:
          temprature: 0.5
          top_p: abc
          max_tokens: 70000
          reasoning_effort: max
          base_url: ftp://x
        orders:
          source: file
          pathh: orders.csv
        serverr:
          port: 1
        tools:
          modules: [ok, 3]
        source: elsewhere.yaml
        """,
    )
    assert problems(path) == [
        f"{path}:4: llm.temprature: unknown key 'temprature'; did you mean 'temperature'?",
        f"{path}:5: llm.top_p: expected a number, got 'abc'",
        f"{path}:6: llm.max_tokens: 70000 is more than 65536, the model's output limit; use at most 65536",
        f"{path}:7: llm.reasoning_effort: 'max' is not allowed; use one of 'minimal', 'low', 'medium' or 'high'",
        f"{path}:8: llm.base_url: 'ftp://x' is not an http(s) URL; write the endpoint's base, e.g. "
        "https://api.core.today/llm/gemini/v1beta/openai or http://127.0.0.1:11434/v1",
        f"{path}:11: orders.pathh: unknown key 'pathh'; did you mean 'path'?",
        f"{path}:12: serverr: unknown key 'serverr'; did you mean 'server'?",
        f"{path}:15: tools.modules[1]: expected text, got 3",
        f"{path}:16: source: unknown key 'source'; remove it",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nb: [1,\n", ":3: invalid YAML: while parsing a flow node expected the node content"),
        ("- one\n- two\n", ":1: the file must be a mapping of sections (company:, llm:, database:, ...), got a list"),
        ("orders:\n  source: ftp\n", ":2: orders.source: 'ftp' is not known; use one of 'sql', 'http', 'file'"),
        ("orders:\n  path: x.csv\n", ":1: orders.source: missing required key 'source'; add it"),
        ("orders:\n  source: http\n", ":1: orders.url_template: missing required key 'url_template'; add it"),
        ("server:\n  port: -1\n", ":2: server.port: -1 is less than 0; use at least 0"),
        ("llm: [1]\n", ":1: llm: expected a mapping (key: value lines), got a list"),
        ("llm:\n  stream: maybe\n", ":2: llm.stream: expected true or false, got 'maybe'"),
        ("flows:\n  default: Sales\n", ":2: flows.default: 'Sales' does not match the pattern ^[a-z][a-z0-9_]*$"),
    ],
)
def test_error_messages(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    [line] = problems(path)
    assert line.startswith(str(path) + expected), line


def test_missing_variable_is_not_reported_twice(tmp_path: Path) -> None:
    # The empty value the unset variable leaves behind is not a second, confusing "invalid URL" error.
    path = write(tmp_path, "database:\n  url: ${DB_URL}\n")
    assert len(problems(path)) == 1


def test_relative_path_shown_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "\n\nllm:\n  max_tokens: 0\n", name="conf/config.yaml")
    monkeypatch.chdir(tmp_path)
    assert problems(Path("conf/config.yaml")) == [
        "conf/config.yaml:4: llm.max_tokens: 0 is less than 1; use at least 1"
    ]


# --- secrets ----------------------------------------------------------------------------------


def test_secrets_never_appear_in_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        llm:
          api_key: [sk-live-123456]
          extra_headers: {Authorization: [Bearer sk-live-123456]}
        orders: {source: http, url_template: "https://shop.example/{order_id}", headers: {X-Token: [sk-live-123456]}}
        """,
    )
    lines = problems(path)
    assert len(lines) == 3
    assert all("sk-live" not in line for line in lines)
    assert "llm.api_key: expected text, got a hidden value" in lines[0]


def test_secrets_never_appear_in_repr_or_dump(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        llm:
          api_key: sk-live-123456
          extra_headers: {X-Api-Key: sk-live-123456}
        database:
          url: postgresql+asyncpg://bot:hunter2pass@db.example/support
        connectors:
          slack: {enabled: true, bot_token: xoxb-sk-live-123456, signing_secret: a11ce5ec2e7a11ce5ec2e7a11ce5,
                  tickets_channel: "#x"}
        admin:
          token: sk-live-1234567890123456
        """,
    )
    config = load_config(path, env={})
    for text in (repr(config), str(config), repr(config.llm), str(config.redacted_dump())):
        assert "sk-live" not in text
        assert "hunter2pass" not in text
        assert "a11ce5ec2e7" not in text
    dump = config.redacted_dump()
    assert dump["connectors"]["slack"]["tickets_channel"] == "#x"
    assert dump["connectors"]["slack"]["enabled"] is True
    assert dump["llm"]["api_key"] == "**********"
    assert dump["database"]["url"] == "postgresql+asyncpg://bot:***@db.example/support"
    assert config.connectors.slack["bot_token"] == "xoxb-sk-live-123456"  # the program still has it


# --- relative paths -----------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(
        tmp_path,
        """\
        flows: {dir: my_flows}
        orders: {source: file, path: data/orders.csv}
        database: {url: "sqlite+aiosqlite:///state/bot.db?timeout=5"}
        """,
        name="deploy/config.yaml",
    )
    config = load_config(path, env={})
    base = (tmp_path / "deploy").absolute()
    assert config.flows.dir == base / "my_flows"
    assert isinstance(config.orders, FileOrders) and config.orders.path == base / "data" / "orders.csv"
    assert config.database.url == f"sqlite+aiosqlite:///{base / 'state' / 'bot.db'}?timeout=5"
    assert config.source == base / "config.yaml"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:////var/lib/bot.db",
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite://",
        "postgresql+asyncpg://bot@db/support",
    ],
)
def test_absolute_and_server_urls_are_kept(tmp_path: Path, url: str) -> None:
    config = load_config(
        write(tmp_path, f'database: {{url: "{url}"}}\norders: {{source: sql, url: "{url}"}}\n'), env={}
    )
    assert config.database.url == url
    assert isinstance(config.orders, SqlOrders) and config.orders.url == url


def test_sql_orders_sqlite_file_is_relative_too(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'orders: {source: sql, url: "sqlite+aiosqlite:///shop.db"}\n'), env={})
    assert isinstance(config.orders, SqlOrders)
    assert config.orders.url == f"sqlite+aiosqlite:///{tmp_path.absolute() / 'shop.db'}"


def test_http_orders_headers_are_expanded(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'orders: {source: http, url_template: "https://shop.example/o/{order_id}", '
        'headers: {Authorization: "Bearer ${SHOP_TOKEN}"}}\n',
    )
    config = load_config(path, env={"SHOP_TOKEN": "t0k"})
    assert isinstance(config.orders, HttpOrders) and config.orders.headers == {"Authorization": "Bearer t0k"}
    assert "t0k" not in repr(config)


def test_null_means_what_ships_with_supportbot(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "flows: {dir: null}\norders: {source: file, path: null}\n"), env={})
    assert config.flows.dir == EXAMPLE_FLOWS_DIR and config.flows.include_examples is False
    assert isinstance(config.orders, FileOrders) and config.orders.path == EXAMPLE_ORDERS_FILE


def test_a_file_with_problems_still_reads_for_the_other_checks(tmp_path: Path) -> None:
    # `supportbot validate` goes on to the flows, tools and orders: a refused key takes its default.
    path = write(
        tmp_path,
        """\
        llm:
          max_tokens: 70000
          model: m
        flows:
          dir: my_flows
          default: Sales
        tools:
          modules: acme_tools
        orders: {path: x.csv}
        """,
    )
    report = read_config(path, env={})
    assert [(p.line, p.key) for p in report.problems.items] == [
        (2, "llm.max_tokens"),
        (6, "flows.default"),
        (8, "tools.modules"),
        (9, "orders.source"),
    ]
    config = report.config
    assert (config.llm.max_tokens, config.llm.model) == (1024, "m")
    assert config.flows.dir == tmp_path.absolute() / "my_flows" and config.flows.default == "general"
    assert config.tools.modules == [] and config.orders == Config().orders
    assert report.is_faulty(("flows", "default")) and report.is_faulty(("tools",)) and report.is_faulty(("orders",))
    assert not report.is_faulty(("flows", "dir")) and not report.is_faulty(("llm", "model"))
    assert config.locate(("tools", "modules", 0)) == (str(path), 8)
    assert config.locate(("flows", "include_examples")) == (str(path), 4)  # not written: its section's line
    with pytest.raises(ConfigError):
        load_config(path, env={})
    assert Config().locate(("flows", "default")) == ("", None)  # the embedded defaults are written nowhere


# --- the example ------------------------------------------------------------------------------


def test_the_example_config_works_copied_into_an_empty_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As its header says: copy it to config.yaml anywhere; the example flows and demo orders come with the package.
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = tmp_path / "config.yaml"
    path.write_text((REPO / "config.example.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    config = load_config(path, env={"SUPPORTBOT_LLM_API_KEY": "sk-test"})
    assert config.llm == Config().llm.model_copy(update={"api_key": config.llm.api_key})
    assert config.flows == Config().flows and config.flows.dir == EXAMPLE_FLOWS_DIR
    assert config.orders == Config().orders and isinstance(config.orders, FileOrders)
    assert config.orders.path == EXAMPLE_ORDERS_FILE
    assert config.database.url == f"sqlite+aiosqlite:///{tmp_path.absolute() / 'supportbot.db'}"
    assert config.admin.password_hash is None and config.admin.token is None
    assert config.warnings == ()
    flows = load_flows(config.flows.dir, tool_names=BUILTIN_TOOLS, company=config.company, default=config.flows.default)
    assert sorted(flows) == ["general", "order_status", "returns"]


# The scaffold of `supportbot init` has its own copy: the wheel ships only the supportbot package.
@pytest.mark.parametrize("path", ["config.example.yaml", "supportbot/scaffold/project/config.yaml"])
def test_the_example_config_documents_every_option(path: str) -> None:
    text = (REPO / path).read_text(encoding="utf-8")

    def keys(model: type[Config] | type) -> set[str]:
        fields = getattr(model, "model_fields", {})
        names = set(fields) - {"source"}
        for info in fields.values():
            names |= keys(info.annotation) if isinstance(info.annotation, type) else set()
        return names

    connectors = set().union(*(keys(entry.load().settings) for entry in entry_points(group=CONNECTOR_GROUP)))
    missing = sorted(k for k in keys(Config) | keys(SqlOrders) | keys(HttpOrders) | connectors if f"{k}:" not in text)
    assert missing == []


def test_urls_in_errors_hide_credentials(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        llm: {base_url: "ftp://bot:hunter2pass@llm.example/v1"}
        orders: {source: http, url_template: "https://shop.example/orders?key=hunter2pass"}
        """,
    )
    lines = problems(path)
    assert len(lines) == 2
    assert all("hunter2pass" not in line for line in lines)
    assert "'ftp://bot:***@llm.example/v1' is not an http(s) URL" in lines[0]
    assert lines[1].endswith(
        "orders.url_template: must be an http(s) URL containing {order_id}, "
        "e.g. https://shop.example/api/orders/{order_id}"
    )
