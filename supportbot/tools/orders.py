"""Where ``lookup_order`` finds orders: a SQL table, the shop's HTTP API, or a CSV/YAML file.

Every source returns an order as a dict that always has the keys ``order_id`` and
``customer_email`` (renamed from the configured id and email columns), so the tool that checks
ownership does not depend on the source. No source decides who may see an order: that is
``lookup_order``'s job, against the verified customer.
"""

from __future__ import annotations

import asyncio
import csv
import math
import re
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import sqlalchemy as sa
import yaml
from sqlalchemy.ext.asyncio import AsyncEngine

from supportbot.config import FileOrders, HttpOrders, OrderSettings, SqlOrders
from supportbot.errors import ConfigError, SupportbotError
from supportbot.store._engine import make_engine, masked

RECHECK_S = 1.0
"""Seconds between two looks (``stat``) at an orders file for edits; a lookup in between uses what was loaded."""

ORDER_ID_PATTERN = re.compile(r"^[A-Z0-9-]{1,40}$")

# Letters that look Latin but are not, as a Cyrillic or Greek keyboard layout types them; NFKC leaves them alone.
_HOMOGLYPHS = str.maketrans(
    "АВЕКМНОРСТУХІЈЅΑΒΕΖΗΙΚΜΝΟΡΤΥΧ‐‑‒–—―−",
    "ABEKMHOPCTYXIJSABEZHIKMNOPTYX-------",
)


class OrderSourceError(SupportbotError):
    """The order source could not answer (service down, bad answer, missing file or table)."""


class OrderSource(Protocol):
    """Finds one order by its id. Implementations are safe to share between concurrent turns."""

    async def get(self, order_id: str) -> dict[str, Any] | None:
        """The order with this id (with ``order_id`` and ``customer_email`` keys), or None if there is none."""
        ...

    async def aclose(self) -> None:
        """Release what the source holds (a database engine)."""
        ...


def normalize_order_id(raw: str) -> str | None:
    """The canonical form of an order number as a customer or model typed it, or None if it isn't one.

    NFKC (full-width digits), Cyrillic/Greek look-alike capitals and dashes mapped to ASCII,
    invisible characters removed, a leading ``#`` dropped, upper-cased; the result must match
    ``^[A-Z0-9-]{1,40}$``.
    """
    if raw.isascii():
        # NFKC leaves ASCII as it is, and ASCII has no format (Cf) characters nor look-alikes to map.
        text = raw.strip().lstrip("#").strip().upper()
        return text if ORDER_ID_PATTERN.match(text) else None
    text = unicodedata.normalize("NFKC", raw)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")  # zero-width and bidi controls
    text = text.strip().lstrip("#").strip().upper().translate(_HOMOGLYPHS)
    return text if ORDER_ID_PATTERN.match(text) else None


def make_order_source(settings: OrderSettings, *, database_url: str, http: aiohttp.ClientSession) -> OrderSource:
    """Build the order source the config's ``orders`` section describes.

    Args:
        settings: ``config.orders``.
        database_url: the store's URL, used by a SQL source without its own ``url``.
        http: the shared session an HTTP source sends its requests with (not closed by ``aclose``).
    """
    if isinstance(settings, SqlOrders):
        return SqlOrderSource(
            url=settings.url or database_url,
            table=settings.table,
            id_column=settings.id_column,
            email_column=settings.email_column,
        )
    if isinstance(settings, HttpOrders):
        return HttpOrderSource(
            url_template=settings.url_template,
            headers=settings.headers,
            email_field=settings.email_field,
            timeout_s=settings.timeout_s,
            http=http,
        )
    if isinstance(settings, FileOrders):
        return FileOrderSource(path=settings.path, id_field=settings.id_field, email_field=settings.email_field)
    raise ConfigError(f"orders.source: unknown source {settings!r}; use sql, http or file")


def _canonical(order: dict[str, Any], *, id_key: str, email_key: str, order_id: str) -> dict[str, Any]:
    out = dict(order)
    email = out.pop(email_key, None) if email_key != "customer_email" else out.get("customer_email")
    found_id = out.pop(id_key, None) if id_key != "order_id" else out.get("order_id")
    out["order_id"] = str(found_id) if found_id is not None else order_id
    out["customer_email"] = str(email) if email is not None else None
    return out


class SqlOrderSource:
    """Orders in a database table, read with SQLAlchemy Core through its own engine.

    The table is reflected once; the query is a ``select`` with a bound parameter.
    """

    def __init__(
        self, *, url: str, table: str, id_column: str = "order_id", email_column: str = "customer_email"
    ) -> None:
        # The store's engine factory: SQLite pragmas, and PostgreSQL's ``?search_path=`` as a server setting.
        self._engine: AsyncEngine = make_engine(url, pool_size=2, max_overflow=3)
        schema, _, name = table.rpartition(".")
        self._schema = schema or None
        self._table_name = name
        self._id_column = id_column
        self._email_column = email_column
        self._table: sa.Table | None = None
        self._lock = asyncio.Lock()

    async def get(self, order_id: str) -> dict[str, Any] | None:
        try:
            return await self._get(order_id)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OrderSourceError(f"orders database at {masked(self._engine.url)}: {reason}") from exc

    async def _reflect(self) -> sa.Table:
        async with self._lock:
            if self._table is None:
                try:
                    async with self._engine.connect() as conn:
                        self._table = await conn.run_sync(
                            lambda sync: sa.Table(
                                self._table_name, sa.MetaData(), schema=self._schema, autoload_with=sync
                            )
                        )
                except sa.exc.NoSuchTableError as exc:
                    raise OrderSourceError(
                        f"orders.table: there is no table {self._table_name!r} in {masked(self._engine.url)}; "
                        "set orders.table (and orders.url) to the shop's orders table"
                    ) from exc
                for column in (self._id_column, self._email_column):
                    if column not in self._table.c:
                        raise OrderSourceError(
                            f"orders: table {self._table_name!r} has no column {column!r}; "
                            f"its columns are {', '.join(self._table.c.keys())}; set orders.id_column/email_column"
                        )
            return self._table

    async def _get(self, order_id: str) -> dict[str, Any] | None:
        table = await self._reflect()
        column = table.c[self._id_column]
        key: Any = order_id
        if _python_type(column) is int:  # binding a str to an integer column fails on PostgreSQL
            if not order_id.isdigit():
                return None
            key = int(order_id)
        async with self._engine.connect() as conn:
            result = await conn.execute(sa.select(table).where(column == key).limit(1))
            row = result.mappings().first()
        if row is None:
            return None
        order = dict(row)
        extra = order.get("data")
        if isinstance(extra, dict):  # the store's own orders table keeps further shop fields in a JSON column
            order.pop("data")
            order.update({key: value for key, value in extra.items() if key not in order})
        return _canonical(order, id_key=self._id_column, email_key=self._email_column, order_id=order_id)

    async def aclose(self) -> None:
        await self._engine.dispose()


def _python_type(column: sa.Column[Any]) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


class HttpOrderSource:
    """Orders from the shop's API: ``GET url_template`` with ``{order_id}`` URL-quoted; 404 means no such order."""

    def __init__(
        self,
        *,
        url_template: str,
        http: aiohttp.ClientSession,
        headers: dict[str, str] | None = None,
        email_field: str = "customer_email",
        timeout_s: float = 10.0,
    ) -> None:
        if "{order_id}" not in url_template:
            raise ConfigError(
                f"orders.url_template: {url_template!r} has no '{{order_id}}' placeholder; "
                "write e.g. https://shop.example/api/orders/{order_id}"
            )
        self._template = url_template
        self._http = http
        self._headers = dict(headers or {})
        self._email_field = email_field
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Only the host is ever named in errors: the URL may carry an API key in its query.
        self._host = urlsplit(url_template.replace("{order_id}", "x")).netloc or url_template.split("/")[0]

    async def get(self, order_id: str) -> dict[str, Any] | None:
        # str.replace, not str.format: other braces in the URL are not placeholders.
        url = self._template.replace("{order_id}", quote(order_id, safe=""))
        try:
            async with self._http.get(url, headers=self._headers, timeout=self._timeout) as response:
                if response.status == 404:
                    return None
                if response.status >= 400:
                    raise OrderSourceError(f"the order service at {self._host} answered HTTP {response.status}")
                try:
                    body = await response.json(content_type=None)
                except ValueError as exc:
                    raise OrderSourceError(f"the order service at {self._host} did not answer with JSON") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OrderSourceError(
                f"could not reach the order service at {self._host}: {type(exc).__name__}: {exc}"
            ) from exc
        if body is None:
            return None
        if not isinstance(body, dict):
            raise OrderSourceError(
                f"the order service at {self._host} answered a JSON {type(body).__name__}, not an order object"
            )
        return _canonical(body, id_key="order_id", email_key=self._email_field, order_id=order_id)

    async def aclose(self) -> None:
        return None  # the session belongs to the caller


class FileOrderSource:
    """Orders in a CSV file (one row per order) or a YAML file (a list of orders, or a mapping id -> order).

    Loaded on first use and again whenever the file's modification time or size changes, so a
    demo file can be edited while the bot runs: the file is looked at again (one ``stat``) at most
    every ``recheck_s`` seconds, so an edit shows within a second by default.
    """

    def __init__(
        self,
        *,
        path: str | Path,
        id_field: str = "order_id",
        email_field: str = "customer_email",
        recheck_s: float = RECHECK_S,
    ) -> None:
        self._path = Path(path)
        if self._path.suffix.lower() not in {".csv", ".yaml", ".yml"}:
            raise ConfigError(f"orders.path: {self._path} is neither .csv nor .yaml/.yml; use one of those formats")
        self._id_field = id_field
        self._email_field = email_field
        self._recheck_s = recheck_s
        self._stamp: tuple[int, int] | None = None
        self._checked = -math.inf  # when the file was last looked at (``time.monotonic``)
        self._orders: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    async def get(self, order_id: str) -> dict[str, Any] | None:
        now = time.monotonic()
        if now - self._checked >= self._recheck_s:
            # A stat is cheap enough for the event loop; only a (re)load goes to a thread.
            try:
                stat = self._path.stat()
            except OSError as exc:
                raise OrderSourceError(
                    f"orders.path: cannot read {self._path}: {exc.strerror}; check the file"
                ) from exc
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                await asyncio.to_thread(self._load, stamp)
            self._checked = now  # after a successful load: a file that failed to load is tried again
        order = self._orders.get(normalize_order_id(order_id) or order_id)
        return dict(order) if order is not None else None

    async def aclose(self) -> None:
        return None

    def _load(self, stamp: tuple[int, int]) -> None:
        with self._lock:
            if stamp == self._stamp:
                return
            self._read(stamp)

    def _read(self, stamp: tuple[int, int]) -> None:
        rows = self._read_csv() if self._path.suffix.lower() == ".csv" else self._read_yaml()
        orders: dict[str, dict[str, Any]] = {}
        for row in rows:
            raw_id = row.get(self._id_field)
            if raw_id is None or str(raw_id).strip() == "":
                continue
            key = normalize_order_id(str(raw_id)) or str(raw_id)
            orders[key] = _canonical(row, id_key=self._id_field, email_key=self._email_field, order_id=key)
        self._orders, self._stamp = orders, stamp

    def _read_csv(self) -> list[dict[str, Any]]:
        with self._path.open(newline="", encoding="utf-8-sig") as handle:
            # Empty cells mean "unknown", which lookup_order leaves out.
            return [
                {key: (value if value != "" else None) for key, value in row.items() if key}
                for row in csv.DictReader(handle)
            ]

    def _read_yaml(self) -> list[dict[str, Any]]:
        try:
            data = yaml.safe_load(self._path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise OrderSourceError(f"orders.path: {self._path} is not valid YAML: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("orders"), list):
            data = data["orders"]
        if data is None:
            return []
        if isinstance(data, list):
            rows = data
        elif isinstance(data, dict):
            rows = [{self._id_field: key, **value} for key, value in data.items() if isinstance(value, dict)]
        else:
            rows = []
        if not all(isinstance(row, dict) for row in rows) or (data and not rows):
            raise OrderSourceError(
                f"orders.path: {self._path} must hold a list of orders or a mapping of order id to order"
            )
        return [dict(row) for row in rows]
