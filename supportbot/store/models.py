"""The database tables, declared once for SQLite and PostgreSQL.

The classes exist so Alembic can compare the schema with the migrations; the store's hot path
uses SQLAlchemy Core on ``Model.__table__`` (see ``supportbot.store.sql``). Two column types do
the work at the boundary for every statement, ORM or Core:

* ``CleanText`` strips NUL bytes and replaces lone surrogates, so customer text never makes a
  write fail (PostgreSQL's ``text`` rejects NUL; neither database accepts invalid UTF-8).
* ``UTCDateTime`` stores UTC and always returns timezone-aware UTC datetimes (SQLite keeps no
  zone, so naive values read back are UTC by construction).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from supportbot._json import dumps_compact

__all__ = [
    "OPEN_HANDOFF",
    "OUTBOX_FAILED",
    "AdminSessionRow",
    "Base",
    "BusSpillRow",
    "ChannelStateRow",
    "CleanText",
    "ConversationAddressRow",
    "ConversationRow",
    "ConversationTokenRow",
    "CustomerRow",
    "InboxRow",
    "LeaseRow",
    "MessageRow",
    "OperatorRow",
    "OrderRow",
    "OutboxRow",
    "SpendingRow",
    "TicketEventRow",
    "TicketRow",
    "ToolRunRow",
    "UTCDateTime",
    "admin_sessions",
    "bus_spill",
    "channel_state",
    "clean_json",
    "clean_text",
    "conversation_addresses",
    "conversation_tokens",
    "conversations",
    "customers",
    "inbox",
    "json_dumps",
    "leases",
    "messages",
    "operators",
    "orders",
    "outbox",
    "spending",
    "ticket_events",
    "tickets",
    "tool_runs",
]


def clean_text(value: str) -> str:
    """Make a string storable in any database: drop NUL bytes, replace lone surrogates with U+FFFD.

    Both checks are cheap C-level scans, so clean text (nearly all of it) costs almost nothing.
    A surrogate *pair* split into two code points is joined back into the character it encodes.
    """
    if "\x00" in value:
        value = value.replace("\x00", "")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def clean_json(value: Any) -> Any:
    """``clean_text`` applied to every string (keys included) of a JSON-like value."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def _utf8_safe(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_dumps(value: Any) -> str:
    """The engines' JSON serializer: compact, non-ASCII kept as is, and cleaned like ``clean_text``.

    Provider extras (Gemini thought signatures) are plain ASCII and pass through untouched; only
    a value with a NUL (escaped as ``\\u0000``, which PostgreSQL cannot store as text) or a lone
    surrogate is cleaned and serialized again.
    """
    text = dumps_compact(value)
    if "\\u0000" in text or not _utf8_safe(text):
        text = dumps_compact(clean_json(value))
    return text


class CleanText(TypeDecorator[str]):
    """``TEXT`` whose bound values pass through ``clean_text``."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else clean_text(value)

    @property
    def python_type(self) -> type[str]:
        return str


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in as UTC and comes out timezone-aware UTC on every database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if dialect.name == "sqlite":
            # SQLite stores the text form without a zone: store UTC so that reading can assume it.
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @property
    def python_type(self) -> type[datetime]:
        return datetime


# Deterministic constraint names, identical on both databases, so migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
_BigId = BigInteger().with_variant(Integer(), "sqlite")
_Json = JSON(none_as_null=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CustomerRow(Base):
    """A customer. Verified and unverified identities never share a row: an email typed into the
    widget must not match (and so unlock) the record of the customer who proved that address."""

    __tablename__ = "customers"
    __table_args__ = (
        UniqueConstraint("email", "verified"),
        UniqueConstraint("external_id", "verified"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str | None] = mapped_column(CleanText())
    external_id: Mapped[str | None] = mapped_column(CleanText())
    name: Mapped[str | None] = mapped_column(CleanText())
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ConversationRow(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(32), ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    flow: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="bot")
    turns: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Double, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class MessageRow(Base):
    """One message. ``images``, ``tool_calls`` and ``extra`` are NULL when empty (cheaper to read);
    token columns are NULL when the message carried no usage."""

    __tablename__ = "messages"
    __table_args__ = (Index(None, "conversation_id", "id"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(String(32), ForeignKey("conversations.id"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str | None] = mapped_column(CleanText())
    images: Mapped[Any] = mapped_column(_Json, nullable=True)
    tool_calls: Mapped[Any] = mapped_column(_Json, nullable=True)
    tool_call_id: Mapped[str | None] = mapped_column(CleanText())
    tool_name: Mapped[str | None] = mapped_column(CleanText())
    extra: Mapped[Any] = mapped_column(_Json, nullable=True)
    kind: Mapped[str] = mapped_column(String(16), default="normal")
    status: Mapped[str] = mapped_column(String(16), default="ok")
    flow: Mapped[str | None] = mapped_column(String(100))
    model: Mapped[str | None] = mapped_column(String(200))
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    audio_input_tokens: Mapped[int | None] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Double, default=0.0)
    latency_ms: Mapped[float | None] = mapped_column(Double)
    author: Mapped[str | None] = mapped_column(CleanText())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class ToolRunRow(Base):
    """A claimed tool call: the primary key makes a second claim of the same call fail."""

    __tablename__ = "tool_runs"

    conversation_id: Mapped[str] = mapped_column(String(32), ForeignKey("conversations.id"), primary_key=True)
    tool_call_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


OPEN_HANDOFF = text("kind = 'handoff' AND status IN ('open', 'pending')")
"""The tickets of which a conversation may have one: the partial unique index's condition, and the
``ON CONFLICT`` target that must repeat it (written alike on SQLite and PostgreSQL)."""


class TicketRow(Base):
    """A ticket. A conversation has at most one open handoff ticket (``uq_tickets_open_handoff``)."""

    __tablename__ = "tickets"
    __table_args__ = (
        Index(
            "uq_tickets_open_handoff",
            "conversation_id",
            unique=True,
            sqlite_where=OPEN_HANDOFF,
            postgresql_where=OPEN_HANDOFF,
        ),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(CleanText())
    description: Mapped[str] = mapped_column(CleanText(), default="")
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    kind: Mapped[str] = mapped_column(String(16), default="request")
    conversation_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("conversations.id"), index=True)
    customer_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("customers.id"), index=True)
    channel: Mapped[str | None] = mapped_column(String(32))
    flow: Mapped[str | None] = mapped_column(String(100))
    assignee: Mapped[str | None] = mapped_column(CleanText())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TicketEventRow(Base):
    __tablename__ = "ticket_events"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    ticket_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tickets.id"), index=True)
    actor: Mapped[str] = mapped_column(CleanText())
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(CleanText(), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class InboxRow(Base):
    """An inbound channel message, stored before the channel is acknowledged; the unique key
    turns the channel's redeliveries into no-ops."""

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("channel", "external_id"),
        Index(None, "status", "id"),
        Index(None, "lane", "id"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(255))
    conversation_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("conversations.id"))
    payload: Mapped[Any] = mapped_column(_Json)
    status: Mapped[str] = mapped_column(String(16), default="received")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The queue the message waits in: its conversation's id, or a digest of its channel and conversation
    # key; one worker at a time runs a lane's turns, oldest first (``leases``). Null in rows from before
    # lanes existed: they are given their lane when read.
    lane: Mapped[str | None] = mapped_column(String(64))
    # How often the message's turn failed, on any worker (``supportbot.dispatch`` gives up after a few).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


OUTBOX_FAILED = text("status = 'failed'")
"""The outbox rows given up on: the condition of the partial index that lists them for operators."""


class OutboxRow(Base):
    """A reply to deliver; ``external_id`` is the channel's id of the delivered message (found by it
    through the unique key), ``last_error`` why the last attempt failed."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("channel", "external_id"),
        Index(None, "status", "channel", "id"),
        # Small: only the failed rows are in it (a handful, next to every reply ever sent).
        Index("ix_outbox_failed", "id", sqlite_where=OUTBOX_FAILED, postgresql_where=OUTBOX_FAILED),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("conversations.id"))
    message_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("messages.id"))
    payload: Mapped[Any] = mapped_column(_Json)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    external_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(CleanText())
    # Who is sending the row now and until when (a worker that dies lets go when it expires); with no
    # owner, the time before which nobody tries it again (a retry's backoff).
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ConversationAddressRow(Base):
    """Where a conversation's replies go on its channel, and the conversation key it is found by
    (Slack: team+channel+thread); several conversations may share a key, the newest is the live one."""

    __tablename__ = "conversation_addresses"
    __table_args__ = (Index(None, "channel", "key"),)

    conversation_id: Mapped[str] = mapped_column(String(32), ForeignKey("conversations.id"), primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    key: Mapped[str | None] = mapped_column(String(255))
    address: Mapped[Any] = mapped_column(_Json)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ChannelStateRow(Base):
    """A value a channel keeps between runs (a cursor), by channel and key."""

    __tablename__ = "channel_state"

    channel: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(CleanText())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LeaseRow(Base):
    """A named piece of work one worker holds until ``expires_at`` (renewed while it works): a lane of the
    inbox, a channel's receiver. A worker that dies lets go when its leases expire."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SpendingRow(Base):
    """Model spending per day and scope (``customer:<id>``, ``all``), for the cost caps in ``limits``."""

    __tablename__ = "spending"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    cost_usd: Mapped[float] = mapped_column(Double, default=0.0)


class BusSpillRow(Base):
    """A cross-worker event too large for a PostgreSQL NOTIFY payload; the notice names its id. Rows are
    deleted after a few minutes."""

    __tablename__ = "bus_spill"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class ConversationTokenRow(Base):
    """A channel's access token to one conversation (the web widget's), kept only as a SHA-256 hash."""

    __tablename__ = "conversation_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(32), ForeignKey("conversations.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OrderRow(Base):
    """The demo/SQL order source. ``data`` holds any further fields of the shop's order."""

    __tablename__ = "orders"

    order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_email: Mapped[str] = mapped_column(CleanText(), index=True)
    status: Mapped[str] = mapped_column(String(32))
    items: Mapped[Any] = mapped_column(_Json, nullable=True)
    total: Mapped[float | None] = mapped_column(Double)
    currency: Mapped[str | None] = mapped_column(String(3))
    placed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    eta: Mapped[date | None] = mapped_column(Date)
    carrier: Mapped[str | None] = mapped_column(CleanText())
    tracking_url: Mapped[str | None] = mapped_column(CleanText())
    data: Mapped[Any] = mapped_column(_Json, nullable=True)


class OperatorRow(Base):
    """A person who signs in to the admin page; only a hash of the password is kept."""

    __tablename__ = "operators"

    username: Mapped[str] = mapped_column(String(100), primary_key=True)
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AdminSessionRow(Base):
    """A signed-in operator's session; the cookie holds a secret whose SHA-256 hash is ``id_hash``."""

    __tablename__ = "admin_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(100))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


# The tables as Core sees them (``__table__`` is typed as a plain FromClause).
customers = cast(Table, CustomerRow.__table__)
conversations = cast(Table, ConversationRow.__table__)
messages = cast(Table, MessageRow.__table__)
tool_runs = cast(Table, ToolRunRow.__table__)
tickets = cast(Table, TicketRow.__table__)
ticket_events = cast(Table, TicketEventRow.__table__)
inbox = cast(Table, InboxRow.__table__)
outbox = cast(Table, OutboxRow.__table__)
orders = cast(Table, OrderRow.__table__)
conversation_tokens = cast(Table, ConversationTokenRow.__table__)
conversation_addresses = cast(Table, ConversationAddressRow.__table__)
channel_state = cast(Table, ChannelStateRow.__table__)
operators = cast(Table, OperatorRow.__table__)
admin_sessions = cast(Table, AdminSessionRow.__table__)
leases = cast(Table, LeaseRow.__table__)
spending = cast(Table, SpendingRow.__table__)
bus_spill = cast(Table, BusSpillRow.__table__)
