"""Fixtures for every test: no network beyond loopback, and databases (SQLite and PostgreSQL).

``db_url`` gives each test an empty database of each kind: a fresh SQLite file, and a fresh
PostgreSQL schema (selected with ``?search_path=`` in the URL, which supportbot's engines send
as a server setting) dropped afterwards. ``store`` is an open ``SQLStore`` on it.

PostgreSQL comes from ``SUPPORTBOT_TEST_PG_URL`` (default: ``postgres`` on 127.0.0.1:5432,
database ``test``). When it cannot be reached the postgres cases are skipped, or fail when the
``CI`` environment variable is set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from supportbot.store.sql import SQLStore

PG_URL = os.environ.get("SUPPORTBOT_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")

# -- no network beyond this machine -------------------------------------------------------------


class NetworkAccessBlocked(RuntimeError):
    """A test tried to reach a host other than this machine."""


_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_violations: list[str] = []


def _is_local(host: object) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port) is a passive (bind) lookup
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host)
    if host == "" or host.lower() in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _refuse(what: str) -> NetworkAccessBlocked:
    message = (
        f"test tried to reach {what}: tests may only use 127.0.0.1, ::1, localhost or unix sockets; "
        "start a fake server on 127.0.0.1 and point the client at it"
    )
    _violations.append(message)
    return NetworkAccessBlocked(message)


def _check_address(family: int, address: Any) -> None:
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and not _is_local(address[0]):
        raise _refuse(repr(address))


@pytest.fixture(scope="session", autouse=True)
def _network_guard() -> Iterator[None]:
    """Patch socket connects and name lookups once per session; ``_no_network`` reports per test."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        _check_address(self.family, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check_address(self.family, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local(host):
            raise _refuse(f"host {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    """Fail the test if it tried the network, even when the code under test swallowed the error."""
    _violations.clear()
    yield
    if _violations:
        found = list(_violations)
        _violations.clear()
        pytest.fail("; ".join(found), pytrace=False)


@pytest.fixture
def network_attempts() -> list[str]:
    """The connections the guard refused during this test; a test provoking one on purpose clears it."""
    return _violations


# -- databases ---------------------------------------------------------------------------------


def _run_in_thread(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine on a private event loop in another thread (the test's own loop stays untouched)."""
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(lambda: asyncio.run(make())).result()


def _pg_dsn() -> str:
    from sqlalchemy.engine import make_url

    return make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)


async def _pg_execute(sql: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(_pg_dsn(), timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


_pg_problem: list[str | None] = []  # filled once: [None] when PostgreSQL answers, else [reason]


def _require_postgres() -> None:
    if not _pg_problem:
        try:
            _run_in_thread(lambda: _pg_execute("SELECT 1"))
            _pg_problem.append(None)
        except Exception as exc:  # any failure means the same: no usable server
            _pg_problem.append(f"{type(exc).__name__}: {exc}")
    if _pg_problem[0] is not None:
        message = f"PostgreSQL at {PG_URL} is not usable ({_pg_problem[0]}); set SUPPORTBOT_TEST_PG_URL"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def _pg_schema() -> Iterator[str]:
    """A URL of an empty PostgreSQL schema of its own, dropped when the generator ends."""
    from sqlalchemy.engine import make_url

    _require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    _run_in_thread(lambda: _pg_execute(f"CREATE SCHEMA {schema}"))
    try:
        yield make_url(PG_URL).update_query_dict({"search_path": schema}).render_as_string(hide_password=False)
    finally:
        _run_in_thread(lambda: _pg_execute(f"SET lock_timeout = '10s'; DROP SCHEMA {schema} CASCADE"))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL of an empty PostgreSQL schema of its own, dropped after the test."""
    yield from _pg_schema()


@pytest.fixture(scope="module")
def module_pg_url() -> Iterator[str]:
    """Like ``pg_url``, shared by the tests of one module (for server processes they share); dropped after them."""
    yield from _pg_schema()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once as a SQLite file and once as a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
    else:
        yield request.getfixturevalue("pg_url")


async def _migrated(url: str) -> None:
    await (await SQLStore.open(url)).close()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per session; ``store`` copies it instead of migrating again."""
    path = tmp_path_factory.mktemp("template") / "supportbot.db"
    _run_in_thread(lambda: _migrated(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture
def _migrated_db_url(db_url: str, request: pytest.FixtureRequest) -> str:
    """``db_url`` with the schema in place: a copy of the session's template for SQLite."""
    from sqlalchemy.engine import make_url

    database = make_url(db_url).database
    if db_url.startswith("sqlite") and database and not Path(database).exists():
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), database)
    return db_url


@pytest.fixture
async def store(_migrated_db_url: str) -> AsyncIterator[SQLStore]:
    """An open ``SQLStore`` on ``db_url``, closed after the test."""
    opened = await SQLStore.open(_migrated_db_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Undo ``configure_logging`` of commands run in-process (CliRunner): later tests' caplog sees records again."""
    import logging

    logger = logging.getLogger("supportbot")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


# -- a real browser ------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
"""Screenshots the browser tests save (git-ignored)."""


def require_chromium() -> None:
    """Call at the top of a browser test module: skip it without Debian's Chromium, except under CI."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError(
                f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package; the browser tests must run"
            )
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium driven by Playwright (never a browser download)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        await launched.close()
