"""The outbox table's SQL: rows written with their order, read and marked by the forwarder.

Rows are claimed by status, not by ``id > last seen``: an id is taken before its transaction
commits, so a transaction that commits late leaves a lower id behind rows already read, and a
high-water-mark poller would skip it forever. A ``pending`` row stays visible until it is
marked ``published`` (after Kafka acknowledged it) or ``parked`` (it can never be published).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from pipeline.adapters.db.errors import translated
from pipeline.adapters.db.schema import outbox
from pipeline.domain.events import (
    DEFAULT_WRITE_VERSION,
    OrderCancelled,
    OrderCreated,
    encode,
    utc_now,
    written_version,
)
from pipeline.domain.outbox import (
    MAX_ERROR_LENGTH,
    PARKED,
    PENDING,
    PUBLISHED,
    InvalidOutboxEvent,
    OutboxEvent,
    OutboxTopics,
    PendingRow,
    outbox_event,
)
from pipeline.settings import Settings

NOTIFY_CHANNEL = "pipeline_outbox"


# Built once: a statement built per call costs SQLAlchemy its construction and cache key every
# time (about a third of an order's client CPU, measured with cProfile).
_INSERT_ROW = insert(outbox)
# On PostgreSQL the row's NOTIFY rides on the INSERT (``RETURNING pg_notify(...)``): one round
# trip, not two. Delivered when, and only if, the transaction commits, as a NOTIFY statement is.
_INSERT_ROW_AND_NOTIFY = insert(outbox).returning(
    func.pg_notify(literal(NOTIFY_CHANNEL), literal(""))
)


async def add_event(
    conn: AsyncConnection,
    event: OrderCreated | OrderCancelled | OutboxEvent,
    write_version: int = DEFAULT_WRITE_VERSION,
) -> None:
    """Write ``event``'s outbox row inside the caller's transaction, and (on PostgreSQL) a
    NOTIFY that is delivered when, and only if, that transaction commits.

    An order event goes to ``orders.events`` keyed by its customer, its payload in the event's
    newest shape at or below ``write_version``, as every reader of the topic must take it
    (docs/schema-evolution.md); an :class:`OutboxEvent` (another service's, validated by
    :func:`pipeline.domain.outbox.outbox_event`: use :class:`OutboxWriter`) to its own topic,
    keyed and with headers as it says."""
    if isinstance(event, OutboxEvent):
        row = {
            "event_id": event.event_id,
            "aggregate_type": event.aggregate_type,
            "aggregate_id": event.aggregate_id,
            "partition_key": event.key,
            "event_type": event.event_type,
            "schema_version": event.schema_version,
            "payload": event.value,
            "created_at": event.created_at,
            "status": PENDING,
            "attempts": 0,
            "topic": event.topic,
            "headers": event.headers_json(),
        }
    else:
        row = {
            "event_id": event.event_id,
            "aggregate_type": "order",
            "aggregate_id": event.order_id,
            "partition_key": event.customer_id,
            "event_type": event.event_type,
            "schema_version": written_version(event, write_version),
            "payload": encode(event, write_version).decode(),
            "created_at": (
                event.created_at if isinstance(event, OrderCreated) else event.cancelled_at
            ),
            "status": PENDING,
            "attempts": 0,
        }
    if conn.dialect.name == "postgresql":
        await conn.execute(_INSERT_ROW_AND_NOTIFY, row)
    else:
        await conn.execute(_INSERT_ROW, row)


class OutboxWriter:
    """How another service sharing the database publishes its events with the order service's
    guarantees: it writes each event as an outbox row in its own transaction, beside its own
    rows, and the forwarder publishes what commits (at least once, in commit order per key) and
    nothing of what rolls back. See docs/outbox.md.

    Built once from the settings (the topics the forwarder may publish to, their prefix and the
    size limit); :meth:`add_event` validates each event before it writes, so a bad one raises
    :class:`~pipeline.domain.outbox.InvalidOutboxEvent` in the caller's transaction."""

    def __init__(self, topics: OutboxTopics, *, topic_prefix: str = "",
                 max_value_bytes: int = 1024 * 1024) -> None:  # fmt: skip
        self.topics = topics
        self.topic_prefix = topic_prefix
        self.max_value_bytes = max_value_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxWriter:
        return cls(
            OutboxTopics.from_patterns(settings.outbox_topics, settings.topic_prefix),
            topic_prefix=settings.topic_prefix,
            max_value_bytes=settings.outbox_max_message_bytes,
        )

    async def add_event(
        self, conn: AsyncConnection | AsyncSession, topic: str, key: str, value: Any, *,
        event_type: str, event_id: str | None = None, schema_version: int = 1,
        headers: Mapping[str, str | bytes] | None = None, aggregate_type: str = "",
        aggregate_id: str = "",
    ) -> str:  # fmt: skip
        """Add one event to the outbox inside the transaction of ``conn`` (an async connection
        or session with a transaction begun), and return its event id.

        ``topic`` is the topic's name without the deployment's ``PIPELINE_TOPIC_PREFIX`` (that
        is added), one ``PIPELINE_OUTBOX_TOPICS`` allows; ``key`` is the record key (str,
        1-64 characters); ``value`` bytes or str holding UTF-8, or a mapping sent as JSON."""
        event = outbox_event(
            self.topic_prefix + topic if isinstance(topic, str) else topic, key, value,
            event_type=event_type, created_at=utc_now(), topics=self.topics,
            max_value_bytes=self.max_value_bytes, event_id=event_id,
            schema_version=schema_version, headers=headers, aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
        )  # fmt: skip
        connection = await conn.connection() if isinstance(conn, AsyncSession) else conn
        if not connection.in_transaction():
            raise InvalidOutboxEvent(
                "conn", "has no transaction begun: the event must commit (or roll back) with "
                "the caller's own writes",
            )  # fmt: skip
        await add_event(connection, event)
        return event.event_id


def _headers(stored: str | None) -> tuple[tuple[str, bytes], ...]:
    return tuple((name, value.encode()) for name, value in json.loads(stored)) if stored else ()


@translated
class OutboxStore:
    """The forwarder's queries. Give it ``make_bookkeeping_engine``'s engine: the marks are
    idempotent and need neither one transaction nor a synchronous commit."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def pending(self, limit: int) -> list[PendingRow]:
        """The oldest unpublished rows, in id order (per customer, the commit order)."""
        query = (
            select(
                outbox.c.id,
                outbox.c.event_id,
                outbox.c.partition_key,
                outbox.c.event_type,
                outbox.c.schema_version,
                outbox.c.payload,
                outbox.c.created_at,
                outbox.c.topic,
                outbox.c.headers,
            )
            .where(outbox.c.status == PENDING)
            .order_by(outbox.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            PendingRow(
                r.id,
                r.event_id,
                r.partition_key,
                r.event_type,
                r.schema_version,
                r.payload.encode(),
                r.created_at,
                r.topic,
                _headers(r.headers),
            )
            for r in rows
        ]

    async def record(
        self, published: list[int], parked: list[tuple[int, str]], at: datetime
    ) -> None:
        """Mark rows Kafka acknowledged as published and unpublishable rows as parked."""
        if not published and not parked:
            return
        async with self.engine.begin() as conn:
            if published:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id.in_(published))
                    .values(status=PUBLISHED, published_at=at, attempts=outbox.c.attempts + 1)
                )
            for row_id, error in parked:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id == row_id)
                    .values(
                        status=PARKED,
                        attempts=outbox.c.attempts + 1,
                        last_error=error[:MAX_ERROR_LENGTH],
                    )
                )

    async def backlog(self) -> tuple[int, datetime | None]:
        """How many rows wait, and when the oldest of them was written."""
        query = select(func.count(), func.min(outbox.c.created_at)).where(
            outbox.c.status == PENDING
        )
        async with self.engine.connect() as conn:
            count, oldest = (await conn.execute(query)).one()
        return int(count), oldest

    async def parked_count(self) -> int:
        """How many rows are parked (``ix_outbox_status_id`` answers it)."""
        query = select(func.count()).where(outbox.c.status == PARKED)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def counts(self) -> dict[str, int]:
        query = select(outbox.c.status, func.count()).group_by(outbox.c.status)
        async with self.engine.connect() as conn:
            return {status: int(n) for status, n in (await conn.execute(query)).all()}

    async def published_since(self, cutoff: datetime) -> int:
        """Rows published at or after ``cutoff`` (older ones are the purge's)."""
        c = outbox.c
        query = select(func.count()).where(c.status == PUBLISHED, c.published_at >= cutoff)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def parked(self, limit: int = 100) -> list[dict[str, Any]]:
        query = (
            select(
                outbox.c.id,
                outbox.c.event_id,
                outbox.c.event_type,
                outbox.c.partition_key,
                outbox.c.last_error,
                outbox.c.created_at,
            )
            .where(outbox.c.status == PARKED)
            .order_by(outbox.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(query)).all()]

    async def purge_published(self, older_than: datetime, chunk: int = 5000) -> int:
        """Delete published rows older than the retention cutoff, a chunk at a time."""
        removed = 0
        while True:
            ids = (
                select(outbox.c.id)
                .where(outbox.c.status == PUBLISHED, outbox.c.published_at < older_than)
                .limit(chunk)
                .scalar_subquery()
            )
            async with self.engine.begin() as conn:
                result = await conn.execute(delete(outbox).where(outbox.c.id.in_(ids)))
            removed += result.rowcount or 0
            if (result.rowcount or 0) < chunk:
                return removed
