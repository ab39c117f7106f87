"""The database: engine, schema and (as the write path grows) the only SQL in the project.

PostgreSQL through asyncpg in production, SQLite through aiosqlite as the embedded default.
The schema is declared here once and managed by the Alembic migrations in
``pipeline/adapters/db/migrations``; ``python -m pipeline migrate`` applies them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    event,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

from pipeline.domain.orders import MONEY_PRECISION, MONEY_SCALE

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# Money is exact: NUMERIC(12, 2), read back as Decimal.
Money = Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True)
# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
Serial = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite keeps no offset: we store UTC there)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

orders = Table(
    "orders",
    metadata,
    Column("order_id", String(36), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("customer_email", String(254), nullable=False),
    Column("status", String(16), nullable=False),
    Column("total", Money, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # A customer's orders, newest first, a page at a time (keyset: time, then id).
    Index("ix_orders_customer_id_created_at", "customer_id", "created_at", "order_id"),
)

order_items = Table(
    "order_items",
    metadata,
    Column("order_id", String(36), ForeignKey("orders.order_id"), primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", Money, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("aggregate_type", String(32), nullable=False),
    Column("aggregate_id", String(36), nullable=False),
    Column("partition_key", String(64), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("schema_version", Integer, nullable=False),
    # The exact bytes to publish (UTF-8 JSON, see pipeline.domain.events): no re-encoding on the way
    # out.
    Column("payload", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("published_at", UTCDateTime(), nullable=True),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    # Rows of other services (OutboxWriter): their topic (NULL: orders.events) and headers (a
    # JSON list of [name, value] pairs, or NULL).
    Column("topic", String(249), nullable=True),
    Column("headers", Text, nullable=True),
    Index("ix_outbox_status_id", "status", "id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response_body", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_idempotency_keys_created_at", "created_at"),
)

# The dead-letter topic's index, kept by every worker's dead-letter agent: what ``GET
# /dead-letters`` lists and replay reads. The topic keeps the records; this makes them findable.
dead_letters = Table(
    "dead_letters",
    metadata,
    # "<partition>-<offset>" in the dead-letter topic: indexing a record twice changes nothing.
    Column("id", String(40), primary_key=True),
    Column("agent", String(64), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("error_type", String(255), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("stacktrace", Text, nullable=True),
    Column("event_id", String(64), nullable=True),
    Column("event_type", String(64), nullable=True),
    Column("original_topic", String(255), nullable=False),
    Column("original_partition", Integer, nullable=False),
    Column("original_offset", BigInteger, nullable=False),
    Column("original_timestamp", Float, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("replays", Integer, nullable=False),
    Column("first_failure_at", UTCDateTime(), nullable=False),
    Column("dead_lettered_at", UTCDateTime(), nullable=False),
    Column("record_key", LargeBinary, nullable=True),
    Column("record_value", LargeBinary, nullable=True),
    Column("headers", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Index("ix_dead_letters_dead_lettered_at", "dead_lettered_at"),
    Index("ix_dead_letters_event_id", "event_id"),
)

dead_letter_replays = Table(
    "dead_letter_replays",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("dead_letter_id", String(40), ForeignKey("dead_letters.id"), nullable=False),
    Column("agent", String(64), nullable=False),
    # The event id, or "topic:partition:offset" for a record that has none (a poison pill).
    Column("event_key", String(320), nullable=False),
    Column("replayed_at", UTCDateTime(), nullable=False),
    Column("requested_by", String(32), nullable=False),
    Index("ix_dead_letter_replays_agent", "agent", "event_key"),
)


# What operators did by hand to outbox rows and dead letters (pipeline.domain.audit): written in
# the transaction that does it, never updated or deleted by the pipeline.
operator_actions = Table(
    "operator_actions",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(32), nullable=False),
    # The outbox row's id, or the dead letter's.
    Column("subject", String(40), nullable=False),
    Column("reason", Text, nullable=True),
    # What the row was (its event, key, why it was parked): JSON, for whoever reads it later.
    Column("detail", Text, nullable=False),
    Index("ix_operator_actions_subject", "subject"),
)


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event below issue BEGIN itself (the driver's implicit,
            # deferred BEGIN fails with "database is locked" when two writers upgrade at once).
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Take the write lock up front: writers queue on the busy timeout, in commit order.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # No ping before every checkout: it was a round trip and half a millisecond of client CPU
    # per transaction (a third of deciding an order). A connection the server dropped (a
    # restart, a failover) fails its first statement instead, before anything is written; the
    # driver reports a disconnect and the pool replaces every connection older than it. That
    # request answers 503 with Retry-After, an agent retries in place.
    kwargs.setdefault("pool_pre_ping", False)
    return create_async_engine(url, **kwargs)


def make_bookkeeping_engine(url: str) -> AsyncEngine:
    """A small engine for the forwarder's reads and marks. On PostgreSQL it autocommits (one
    round trip a statement, no BEGIN/COMMIT) and does not wait for the WAL flush: a mark lost
    in a crash only re-publishes rows, which the consumers absorb. Never use it for orders."""
    if make_url(url).get_backend_name() != "postgresql":
        return make_engine(url)
    return make_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_size=2,
        max_overflow=2,
        pool_pre_ping=False,
        connect_args={"server_settings": {"synchronous_commit": "off"}},
    )


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%', which URL-encoded passwords contain.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Create or upgrade the schema to ``revision``. Runs its own event loop: call it from
    synchronous code (the CLI, a fixture), not from inside a running loop."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def schema_revision(url: str) -> str | None:
    """The revision the database is at, or None for an empty database."""
    import asyncio

    from alembic.runtime.migration import MigrationContext

    async def _read() -> str | None:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: MigrationContext.configure(sync).get_current_revision()
                )
        finally:
            await engine.dispose()

    return asyncio.run(_read())
