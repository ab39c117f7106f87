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
  the rows behind it.

Assumes: the topic is keyed by customer id and its partition count does not change under a
running pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from pipeline.adapters.db.outbox import NOTIFY_CHANNEL, OutboxStore, PendingRow
from pipeline.adapters.kafka.egress import Egress, event_headers
from pipeline.adapters.kafka.security import client_options
from pipeline.domain.events import utc_now
from pipeline.domain.failures import Unavailable
from pipeline.metrics import Metrics
from pipeline.settings import Settings

log = logging.getLogger(__name__)

# Errors that no retry will cure: the row is parked instead of blocking the others.
PERMANENT_ERRORS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
)
ADVISORY_LOCK_KEY = 0x6F7574626F78  # "outbox"


class Leadership(Protocol):
    """A lock only one forwarder holds; it is released when its holder dies."""

    async def acquire(self, stop: asyncio.Event) -> bool: ...
    def held(self) -> bool: ...
    async def release(self) -> None: ...


class FileLeadership:
    """SQLite: an exclusive ``flock`` on a file beside the database (one machine)."""

    def __init__(self, path: Path, poll_interval: float) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._fd: int | None = None

    async def acquire(self, stop: asyncio.Event) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        while not stop.is_set():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(self.poll_interval, 0.5))
                continue
            self._fd = fd
            return True
        os.close(fd)
        return False

    def held(self) -> bool:
        return self._fd is not None

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


class PostgresLeadership:
    """PostgreSQL: a session advisory lock on a dedicated connection, which also LISTENs for
    the NOTIFY each order transaction sends on commit."""

    def __init__(self, dsn: str, poll_interval: float, on_notify: Callable[[], None]) -> None:
        self.dsn = dsn
        self.poll_interval = poll_interval
        self.on_notify = on_notify
        self._conn: Any = None

    async def acquire(self, stop: asyncio.Event) -> bool:
        import asyncpg

        while not stop.is_set():
            conn = await asyncpg.connect(self.dsn, timeout=10)
            try:
                while not stop.is_set():
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_LOCK_KEY):
                        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
                        self._conn = conn
                        return True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), max(self.poll_interval, 0.5))
            except BaseException:
                await conn.close()
                raise
            await conn.close()
        return False

    def _notified(self, *_args: Any) -> None:
        self.on_notify()

    def held(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)


def leadership_for(database_url: str, poll_interval: float, wake: Callable[[], None]) -> Leadership:
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresLeadership(dsn, poll_interval, wake)
    database = url.database or "pipeline.db"
    return FileLeadership(Path(database + ".forwarder.lock"), poll_interval)


@dataclass
class BatchResult:
    published: list[PendingRow] = field(default_factory=list)
    parked: list[tuple[PendingRow, str]] = field(default_factory=list)
    failed: KafkaError | None = None  # a transient error: the rest of the batch waits


def make_producer(
    bootstrap_servers: str, max_message_bytes: int, **security: Any
) -> AIOKafkaProducer:
    # aiokafka defaults to acks=1 without idempotence: a leader failover could lose an acked
    # event, and a retried send could duplicate or reorder one. Ours must do neither.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        max_batch_size=256 * 1024,
        max_request_size=max_message_bytes,
        request_timeout_ms=30_000,
        client_id="orders-pipeline-outbox",
        **security,
    )


class OutboxPublisher:
    """Sends one batch of rows and says which were acknowledged; marks nothing itself."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, metrics: Metrics) -> None:
        self.producer = producer
        self.egress = Egress(producer)
        self.topic = topic
        self.metrics = metrics

    async def publish(self, rows: list[PendingRow]) -> BatchResult:
        result = BatchResult()
        in_flight: list[tuple[PendingRow, asyncio.Future[Any]]] = []
        for row in rows:
            try:
                future = await self.egress.submit(
                    self.topic,
                    row.payload,
                    key=row.partition_key.encode(),
                    headers=event_headers(row.event_id, row.event_type, row.schema_version),
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
        count, oldest = await self.store.backlog()
        self.metrics.outbox_backlog.set(count)
        age = 0.0 if oldest is None else (utc_now() - oldest).total_seconds()
        self.metrics.outbox_oldest_age.set(max(age, 0.0))

    def stop(self) -> None:
        self.stopping.set()
        self.wakeup.set()


def producer_for(settings: Settings) -> AIOKafkaProducer:
    """The forwarder's producer for these settings (security included); not started."""
    return make_producer(
        settings.kafka_bootstrap_servers, settings.outbox_max_message_bytes,
        **client_options(settings),
    )  # fmt: skip


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
        OutboxPublisher(producer, topic, metrics),
        leadership_for(settings.database_url, settings.outbox_poll_interval, wake),
        metrics,
        batch_size=settings.outbox_batch_size,
        poll_interval=settings.outbox_poll_interval,
        retention=timedelta(seconds=settings.outbox_retention_seconds),
        purge_keys=purge_keys,
    )
