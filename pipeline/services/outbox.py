"""The outbox forwarder: committed outbox rows to Kafka, none skipped, none lost.

Guarantees
- Every committed row is published at least once. A row is marked ``published`` only after
  Kafka acknowledged it (idempotent producer, ``acks=all``); a forwarder that dies in between
  publishes it again on the next run, a duplicate the consumers absorb by event id.
- Rows are claimed by status, so a transaction that commits late is published when it
  commits, never skipped (see ``pipeline.adapters.db.outbox``).
- Per customer, events reach Kafka in commit order: rows are keyed by customer id (so one
  customer's events share a partition), sent in id order, and a batch is fully acknowledged
  before the next is read. Only one forwarder publishes at a time: each worker runs one, and
  they take turns through a lock that dies with its holder (a PostgreSQL advisory lock held on
  a session, or an exclusive file lock beside the SQLite database).
- A row Kafka can never take (too large, say) is parked with its error and does not block
  the rows behind it; so is a row of another service whose topic ``PIPELINE_OUTBOX_TOPICS``
  does not allow.
- Other services' rows (``OutboxWriter``) get the same guarantees, on their own topic, keyed
  and ordered by their own key (docs/outbox.md).

Assumes: the topic is keyed by customer id and its partition count does not change under a
running pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)
from sqlalchemy.exc import DBAPIError, OperationalError

from pipeline.adapters.db.leadership import leadership_for
from pipeline.adapters.db.outbox import OutboxStore, PendingRow
from pipeline.adapters.kafka.egress import Egress, event_headers
from pipeline.domain.events import utc_now
from pipeline.domain.failures import Unavailable
from pipeline.domain.outbox import OutboxTopics
from pipeline.metrics import Metrics
from pipeline.services.ports import Leadership
from pipeline.settings import Settings

log = logging.getLogger(__name__)


# Errors that no retry will cure: the row is parked instead of blocking the others.
PERMANENT_ERRORS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
)


@dataclass
class BatchResult:
    published: list[PendingRow] = field(default_factory=list)
    parked: list[tuple[PendingRow, str]] = field(default_factory=list)
    failed: KafkaError | None = None  # a transient error: the rest of the batch waits


class OutboxPublisher:
    """Sends one batch of rows and says which were acknowledged; marks nothing itself."""

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, metrics: Metrics,
        topics: OutboxTopics | None = None,
    ) -> None:  # fmt: skip
        self.producer = producer
        self.egress = Egress(producer)
        # The order events' topic (rows whose topic is NULL), and the other services' topics
        # that rows may name (PIPELINE_OUTBOX_TOPICS).
        self.topic = topic
        self.topics = topics or OutboxTopics()
        self.metrics = metrics

    async def publish(self, rows: list[PendingRow]) -> BatchResult:
        result = BatchResult()
        in_flight: list[tuple[PendingRow, asyncio.Future[Any]]] = []
        for row in rows:
            if row.topic is not None and not self.topics.allows(row.topic):
                # Written by a writer configured otherwise: never sent where this deployment
                # has not said it may publish.
                refusal = (f"topic {row.topic!r} is not allowed here "
                           f"(PIPELINE_OUTBOX_TOPICS: {self.topics.described()})")  # fmt: skip
                result.parked.append((row, refusal))
                continue
            try:
                future = await self.egress.submit(
                    row.topic or self.topic,
                    row.payload,
                    key=row.partition_key.encode(),
                    headers=[
                        *event_headers(row.event_id, row.event_type, row.schema_version),
                        *row.headers,
                    ],
                )
            except PERMANENT_ERRORS as exc:
                result.parked.append((row, f"{type(exc).__name__}: {exc}"))
                continue
            except KafkaError as exc:
                result.failed = exc
                break
            in_flight.append((row, future))
        for row, future in in_flight:
            try:
                await future
            except PERMANENT_ERRORS as exc:
                result.parked.append((row, f"{type(exc).__name__}: {exc}"))
                continue
            except KafkaError as exc:
                # Later rows may have been acknowledged; they stay pending and are sent again
                # (duplicates, absorbed downstream) so that nothing is marked out of order.
                result.failed = result.failed or exc
                break
            result.published.append(row)
        acked_at = utc_now()
        for row in result.published:
            self.metrics.outbox_commit_to_ack.observe((acked_at - row.created_at).total_seconds())
        return result


class OutboxForwarder:
    """The loop: hold the lock, publish pending rows in batches, sleep until woken."""

    def __init__(
        self,
        store: OutboxStore,
        publisher: OutboxPublisher,
        leadership: Leadership,
        metrics: Metrics,
        *,
        batch_size: int,
        poll_interval: float,
        retention: timedelta,
        purge_keys: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.leadership = leadership
        self.metrics = metrics
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retention = retention
        self.purge_keys = purge_keys
        self.wakeup = asyncio.Event()
        self.stopping = asyncio.Event()
        self._last_housekeeping = 0.0

    def wake(self) -> None:
        """Called after an order transaction commits (in-process) or on NOTIFY."""
        self.wakeup.set()

    async def forward_once(self) -> int:
        """Publish one batch and record the outcome; returns how many rows it settled."""
        rows = await self.store.pending(self.batch_size)
        if not rows:
            return 0
        result = await self.publisher.publish(rows)
        await self.store.record(
            [r.id for r in result.published],
            [(r.id, error) for r, error in result.parked],
            utc_now(),
        )
        self.metrics.outbox_published.inc(len(result.published))
        self.metrics.outbox_parked.inc(len(result.parked))
        for row, error in result.parked:
            log.error("parked outbox row %s (event %s): %s", row.id, row.event_id, error)
        if result.failed is not None:
            raise result.failed
        return len(result.published) + len(result.parked)

    async def run(self) -> None:
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                async with self._leader() as leading:
                    if not leading:
                        return
                    while not self.stopping.is_set() and self.leadership.held():
                        # Clear before reading: a commit that lands while this batch is in
                        # flight sets the event again, so the wait below returns at once.
                        self.wakeup.clear()
                        settled = await self.forward_once()
                        backoff = 0.1
                        await self._housekeeping()
                        if settled < self.batch_size:
                            await self._idle()
            except (KafkaError, Unavailable, OperationalError, DBAPIError, OSError) as exc:
                log.warning("outbox forwarder: %s: %s; retrying in %.1fs",
                            type(exc).__name__, exc, backoff)  # fmt: skip
            except Exception:  # a dead forwarder would strand every later order
                # E.g. asyncpg's CannotConnectNowError while PostgreSQL is starting up after a
                # crash: not an OSError, and it once ended this loop for good.
                log.exception("outbox forwarder: unexpected error; retrying in %.1fs", backoff)
            else:
                continue
            self.metrics.outbox_errors.inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            backoff = min(backoff * 2, 5.0)

    @contextlib.asynccontextmanager
    async def _leader(self) -> AsyncIterator[bool]:
        acquired = await self.leadership.acquire(self.stopping)
        if acquired:
            log.info("outbox forwarder is active on this worker")
            self.metrics.outbox_leader.set(1)
        try:
            yield acquired
        finally:
            self.metrics.outbox_leader.set(0)
            await self.leadership.release()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), self.poll_interval)

    async def _housekeeping(self, every: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._last_housekeeping < every:
            return
        self._last_housekeeping = now
        await self.refresh_metrics()
        if self.retention.total_seconds() >= 0:
            await self.store.purge_published(utc_now() - self.retention)
        if self.purge_keys is not None:
            await self.purge_keys()

    async def refresh_metrics(self) -> None:
        await export_outbox_state(self.store, self.metrics)

    def stop(self) -> None:
        self.stopping.set()
        self.wakeup.set()


async def export_outbox_state(store: OutboxStore, metrics: Metrics) -> None:
    """Set the outbox gauges from the database: rows waiting, the oldest one's age, rows
    parked. Any worker can (on each scrape of its ``/metrics``), whether its forwarder leads
    or not: so a stalled forwarder shows as a growing age rather than as a stale one."""
    count, oldest = await store.backlog()
    metrics.outbox_backlog.set(count)
    age = 0.0 if oldest is None else (utc_now() - oldest).total_seconds()
    metrics.outbox_oldest_age.set(max(age, 0.0))
    metrics.outbox_parked_rows.set(await store.parked_count())


def forwarder_for(
    settings: Settings,
    store: OutboxStore,
    producer: AIOKafkaProducer,
    metrics: Metrics,
    *,
    topic: str,
    wake: Callable[[], None],
    purge_keys: Callable[[], Any] | None,
) -> OutboxForwarder:
    """The forwarder these settings describe, a worker's or the forwarder process's; ``wake``
    is what a NOTIFY calls."""
    return OutboxForwarder(
        store,
        OutboxPublisher(
            producer,
            topic,
            metrics,
            OutboxTopics.from_patterns(settings.outbox_topics, settings.topic_prefix),
        ),
        leadership_for(settings.database_url, settings.outbox_poll_interval, wake),
        metrics,
        batch_size=settings.outbox_batch_size,
        poll_interval=settings.outbox_poll_interval,
        retention=timedelta(seconds=settings.outbox_retention_seconds),
        purge_keys=purge_keys,
    )
