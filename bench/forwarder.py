"""Forwarder benchmark: outbox rows/s and commit→Kafka-ack latency, beside its baselines.

All on the same machine, broker and database, in one run:
- baseline: a plain asyncpg loop committing orders the way the order service does (order, two
  items and an outbox row per transaction, several connections at once): the commit rate the
  forwarder has to keep up with;
- baseline: a plain aiokafka produce loop (acks=all, idempotent) sending the same payloads;
- the forwarder draining a prefilled outbox (rows/s), and its ratio to the insert rate;
- commit→ack latency while orders are committed at half the insert loop's rate (open loop),
  with the forwarder woken by NOTIFY as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from pipeline.adapters.db.leadership import leadership_for
from pipeline.adapters.db.outbox import NOTIFY_CHANNEL, OutboxStore
from pipeline.adapters.db.schema import make_bookkeeping_engine
from pipeline.adapters.kafka.producer import make_producer
from pipeline.domain.events import Contact, OrderCreated, OrderLine, encode, utc_now
from pipeline.domain.outbox import PendingRow
from pipeline.metrics import Metrics
from pipeline.services.outbox import BatchResult, OutboxForwarder, OutboxPublisher

INSERT_ORDER = """INSERT INTO orders (order_id, customer_id, customer_email, status, total,
    created_at, updated_at) VALUES ($1, $2, $3, 'created', $4, $5, $5)"""
INSERT_ITEM = """INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price)
    VALUES ($1, $2, $3, $4, $5)"""
INSERT_OUTBOX = """INSERT INTO outbox (event_id, aggregate_type, aggregate_id, partition_key,
    event_type, schema_version, payload, created_at, status, attempts)
    VALUES ($1, 'order', $2, $3, 'OrderCreated', 1, $4, $5, 'pending', 0)"""


def make_order(n: int) -> OrderCreated:
    customer = f"customer-{(n * 7919) % 1000:04d}"
    lines = (
        OrderLine("sku-001", 1 + n % 3, Decimal("12.50")),
        OrderLine("sku-002", 1, Decimal("3.99")),
    )
    return OrderCreated(
        event_id=str(uuid.uuid4()),
        order_id=str(uuid.uuid4()),
        customer_id=customer,
        contact=Contact(f"{customer}@example.com"),
        items=lines,
        total=sum((ln.unit_price * ln.quantity for ln in lines), Decimal("0.00")),
        created_at=utc_now(),
    )


async def insert_order(conn: asyncpg.Connection, order: OrderCreated, notify: bool) -> None:
    async with conn.transaction():
        await conn.execute(INSERT_ORDER, order.order_id, order.customer_id,
                           order.contact.email, order.total, order.created_at)  # fmt: skip
        await conn.executemany(
            INSERT_ITEM,
            [(order.order_id, i, ln.sku, ln.quantity, ln.unit_price)
             for i, ln in enumerate(order.items, 1)],
        )  # fmt: skip
        await conn.execute(INSERT_OUTBOX, order.event_id, order.order_id, order.customer_id,
                           encode(order).decode(), order.created_at)  # fmt: skip
        if notify:
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)


async def insert_loop(dsn: str, count: int, connections: int, notify: bool = False) -> float:
    """Commit ``count`` orders over ``connections`` connections; returns commits/s."""
    pool = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections)
    counter = iter(range(count))

    async def worker() -> None:
        async with pool.acquire() as conn:
            for n in counter:
                await insert_order(conn, make_order(n), notify)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    await pool.close()
    return count / elapsed


async def produce_loop(bootstrap: str, topic: str, count: int, batch: int) -> float:
    """A plain aiokafka loop sending ``count`` order payloads keyed by customer."""
    payloads = [(make_order(n).customer_id.encode(), encode(make_order(n))) for n in range(batch)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=2, max_batch_size=256 * 1024)  # fmt: skip
    await producer.start()
    try:
        started = time.perf_counter()
        sent = 0
        while sent < count:
            futures = [
                await producer.send(topic, value, key=key, headers=[("event_id", b"x" * 36)])
                for key, value in payloads
            ]
            await asyncio.gather(*futures)
            sent += len(futures)
        return sent / (time.perf_counter() - started)
    finally:
        await producer.stop()


class TimingPublisher(OutboxPublisher):
    """The real publisher, noting each acknowledged row's commit→ack time."""

    acked_at: dict[str, float]  # event id -> perf_counter() when Kafka acknowledged it
    committed_at: dict[str, float]  # event id -> perf_counter() when its commit returned

    async def publish(self, rows: list[PendingRow]) -> BatchResult:
        result = await super().publish(rows)
        now = time.perf_counter()
        for row in result.published:
            self.acked_at.setdefault(row.event_id, now)
        return result

    def latencies_ms(self) -> list[float]:
        # The commit's return can be seen after the ack (both are awaited): clamp at zero.
        return [
            max(0.0, (self.acked_at[e] - c) * 1000)
            for e, c in self.committed_at.items()
            if e in self.acked_at
        ]


async def _truncate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute("TRUNCATE outbox, order_items, orders, idempotency_keys")
    await conn.close()


def _forwarder(url: str, bootstrap: str, topic: str, metrics: Metrics, poll: float) -> Any:
    engine = make_bookkeeping_engine(url)
    producer = make_producer(bootstrap, 1 << 20)
    publisher = TimingPublisher(producer, topic, metrics)
    publisher.acked_at = {}
    publisher.committed_at = {}
    box: list[OutboxForwarder] = []
    forwarder = OutboxForwarder(
        OutboxStore(engine), publisher,
        leadership_for(url, poll, lambda: box[0].wake()), metrics,
        batch_size=500, poll_interval=poll, retention=timedelta(days=1),
    )  # fmt: skip
    box.append(forwarder)
    return forwarder, producer, publisher, engine


async def drain_rate(url: str, dsn: str, bootstrap: str, topic: str, rows: int) -> float:
    await _truncate(dsn)
    await insert_loop(dsn, rows, connections=8)
    forwarder, producer, _, engine = _forwarder(url, bootstrap, topic, Metrics(), 0.05)
    await producer.start()
    try:
        started = time.perf_counter()
        done = 0
        while done < rows:
            settled = await forwarder.forward_once()
            if settled == 0:
                break
            done += settled
        return done / (time.perf_counter() - started)
    finally:
        await producer.stop()
        await engine.dispose()


async def latency_at(
    url: str, dsn: str, bootstrap: str, topic: str, rate: float, seconds: float
) -> list[float]:
    """Commit orders at ``rate``/s (open loop) with a running forwarder; commit→ack in ms."""
    await _truncate(dsn)
    forwarder, producer, publisher, engine = _forwarder(url, bootstrap, topic, Metrics(), 1.0)
    await producer.start()
    task = asyncio.create_task(forwarder.run())
    pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8)
    try:
        while not forwarder.leadership.held():
            await asyncio.sleep(0.01)
        total = int(rate * seconds)
        started = time.perf_counter()

        async def one(n: int) -> None:
            order = make_order(n)
            async with pool.acquire() as conn:
                await insert_order(conn, order, notify=True)
            publisher.committed_at[order.event_id] = time.perf_counter()

        pending: set[asyncio.Task[None]] = set()
        for n in range(total):
            due = started + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.create_task(one(n))
            pending.add(t)
            t.add_done_callback(pending.discard)
        await asyncio.gather(*list(pending))
        deadline = time.perf_counter() + 30
        while len(publisher.acked_at) < total and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return publisher.latencies_ms()
    finally:
        forwarder.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 10)
        await pool.close()
        await producer.stop()
        await engine.dispose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def run(url: str, bootstrap: str, topic: str, quick: bool, repeats: int) -> dict[str, Any]:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    rows = 4000 if quick else 20000
    inserts, drains, produces = [], [], []
    await _truncate(dsn)
    await insert_loop(dsn, 500, connections=8)  # warm-up
    for _ in range(repeats):
        await _truncate(dsn)
        inserts.append(await insert_loop(dsn, rows, connections=8))
        drains.append(await drain_rate(url, dsn, bootstrap, topic, rows))
        produces.append(await produce_loop(bootstrap, topic, rows, batch=500))
    insert_rate = statistics.median(inserts)
    drain = statistics.median(drains)
    half = insert_rate / 2
    latencies = await latency_at(url, dsn, bootstrap, topic, half, 5 if quick else 15)
    return {
        "rows_per_s": round(drain, 1),
        "rows_per_s_runs": [round(v, 1) for v in drains],
        "baseline_insert_rows_per_s": round(insert_rate, 1),
        "baseline_insert_rows_per_s_runs": [round(v, 1) for v in inserts],
        "baseline_produce_events_per_s": round(statistics.median(produces), 1),
        "baseline_produce_events_per_s_runs": [round(v, 1) for v in produces],
        "ratio": round(drain / insert_rate, 3),
        "half_load_orders_per_s": round(half, 1),
        "latency_samples": len(latencies),
        "commit_to_ack_p50_ms": round(percentile(latencies, 50), 2),
        "commit_to_ack_p99_ms": round(percentile(latencies, 99), 2),
        "commit_to_ack_max_ms": round(max(latencies, default=float("nan")), 2),
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        ("plain asyncpg order-insert loop", f"{result['baseline_insert_rows_per_s']:,.0f} rows/s"),
        ("plain aiokafka produce loop", f"{result['baseline_produce_events_per_s']:,.0f} events/s"),
        ("outbox forwarder (drain)", f"{result['rows_per_s']:,.0f} rows/s"),
        ("forwarder / insert loop", f"{result['ratio']:.2f}x  (target >= 1.0x)"),
        (f"commit->ack at {result['half_load_orders_per_s']:,.0f} orders/s",
         f"p50 {result['commit_to_ack_p50_ms']:.1f} ms  p99 {result['commit_to_ack_p99_ms']:.1f} ms"
         "  (target p99 < 50 ms)"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
