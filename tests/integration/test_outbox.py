"""The transactional outbox and its forwarder on real Kafka, against SQLite and PostgreSQL.

One contract suite, run once per database: what the order service commits reaches Kafka, at
least once, in commit order per customer, never skipped, whatever dies in between.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.adapters.db.leadership import leadership_for
from pipeline.adapters.db.orders import OrderStore
from pipeline.adapters.db.outbox import OutboxStore, add_event
from pipeline.adapters.db.schema import make_engine, migrate, order_items, orders, outbox
from pipeline.adapters.kafka.producer import make_producer
from pipeline.domain.events import Contact, OrderCreated, OrderLine, decode_order_event, utc_now
from pipeline.metrics import Metrics
from pipeline.services.orders import (
    Cancelled,
    Created,
    KeyConflict,
    NotCancellable,
    NotFound,
    OrderService,
    Replayed,
)
from pipeline.services.outbox import OutboxForwarder, OutboxPublisher
from tests.integration.workers import consume, create_topics


def order_body(customer: str, n: int = 1, price: str = "1.00") -> dict[str, Any]:
    return {
        "customer_id": customer,
        "customer_email": f"{customer}@example.com",
        "items": [{"sku": f"sku-{i}", "quantity": 1, "unit_price": price} for i in range(n)],
    }


@dataclass
class Harness:
    url: str
    engine: AsyncEngine
    topic: str
    bootstrap: str
    service: OrderService
    outbox: OutboxStore
    metrics: Metrics

    def forwarder(
        self, *, poll_interval: float = 0.05, batch_size: int = 100, max_bytes: int = 1 << 20,
        retention: timedelta = timedelta(days=1),
    ) -> tuple[OutboxForwarder, Callable[[], Any]]:  # fmt: skip
        """A forwarder with its own producer; returns it and an async closer."""
        producer = make_producer(self.bootstrap, max_bytes)
        forwarder_box: list[OutboxForwarder] = []
        forwarder = OutboxForwarder(
            OutboxStore(self.engine),
            OutboxPublisher(producer, self.topic, self.metrics),
            leadership_for(self.url, poll_interval, lambda: forwarder_box[0].wake()),
            self.metrics,
            batch_size=batch_size,
            poll_interval=poll_interval,
            retention=retention,
        )
        forwarder_box.append(forwarder)

        async def close() -> None:
            await producer.stop()

        forwarder._producer = producer  # type: ignore[attr-defined]
        return forwarder, close

    async def run(self, forwarder: OutboxForwarder) -> asyncio.Task[None]:
        await forwarder._producer.start()  # type: ignore[attr-defined]
        return asyncio.create_task(forwarder.run())

    async def events(self, count: int, timeout: float = 30) -> list[Any]:
        return await consume(self.bootstrap, self.topic, count=count, timeout=timeout)

    async def pending(self) -> int:
        async with self.engine.connect() as conn:
            return int(
                (
                    await conn.execute(select(func.count()).where(outbox.c.status == "pending"))
                ).scalar_one()
            )


@pytest.fixture
async def harness(database_url: str, kafka_bootstrap: str) -> AsyncIterator[Harness]:
    await asyncio.to_thread(migrate, database_url)
    engine = make_engine(database_url)
    topic = f"t{uuid.uuid4().hex[:10]}.orders.events"
    await create_topics(kafka_bootstrap, [topic], partitions=4)
    metrics = Metrics()
    yield Harness(
        url=database_url,
        engine=engine,
        topic=topic,
        bootstrap=kafka_bootstrap,
        service=OrderService(OrderStore(engine), max_items=100),
        outbox=OutboxStore(engine),
        metrics=metrics,
    )
    await engine.dispose()


async def stop(forwarder: OutboxForwarder, task: asyncio.Task[None], close: Any) -> None:
    forwarder.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), 15)
    except TimeoutError:
        task.print_stack()
        raise
    await close()


async def test_order_items_and_outbox_row_commit_together(harness: Harness) -> None:
    created = await harness.service.place_order(order_body("alice", n=2, price="4.20"))
    assert isinstance(created, Created) and created.total == Decimal("8.40")
    order_id = created.order_id
    async with harness.engine.connect() as conn:
        assert (await conn.execute(select(orders.c.total).where(orders.c.order_id == order_id))
                ).scalar_one() == Decimal("8.40")  # fmt: skip
        lines = (await conn.execute(select(func.count()).where(order_items.c.order_id == order_id))
                 ).scalar_one()  # fmt: skip
        row = (await conn.execute(select(outbox).where(outbox.c.aggregate_id == order_id))).one()
    assert lines == 2
    assert (row.partition_key, row.event_type, row.status) == ("alice", "OrderCreated", "pending")
    assert decode_order_event(row.payload.encode()).order_id == order_id


async def test_a_failed_transaction_writes_nothing(harness: Harness) -> None:
    first = await harness.service.place_order(order_body("bob"))
    assert isinstance(first, Created)
    async with harness.engine.connect() as conn:
        taken = (await conn.execute(select(outbox.c.event_id))).scalar_one()
    # Same event id as an existing outbox row: the outbox insert fails after the order and
    # its items were written in the same transaction.
    clash = OrderCreated(
        event_id=taken, order_id=str(uuid.uuid4()), customer_id="bob",
        contact=Contact(email="bob@example.com"),
        items=(OrderLine("sku-1", 1, Decimal("1.00")),), total=Decimal("1.00"),
        created_at=utc_now(),
    )  # fmt: skip
    with pytest.raises(IntegrityError):
        await harness.service.store.create_order(clash)
    async with harness.engine.connect() as conn:
        ids = set((await conn.execute(select(orders.c.order_id))).scalars())
        items = (await conn.execute(select(func.count()).select_from(order_items))).scalar_one()
        rows = (await conn.execute(select(func.count()).select_from(outbox))).scalar_one()
    assert ids == {first.order_id}
    assert (items, rows) == (1, 1)


async def test_idempotency_key_replays_and_conflicts(harness: Harness) -> None:
    body = order_body("carol", n=1, price="9.99")
    first = await harness.service.place_order(body, "key-1")
    again = await harness.service.place_order(json.loads(json.dumps(body)), "key-1")
    other = await harness.service.place_order(order_body("carol", n=2), "key-1")
    assert isinstance(first, Created) and isinstance(again, Replayed)
    assert again.answer.status_code == 201 and again.answer.body == first.body()
    assert other == KeyConflict("key-1")
    async with harness.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(orders))).scalar_one() == 1
        assert (await conn.execute(select(func.count()).select_from(outbox))).scalar_one() == 1


async def test_concurrent_requests_with_one_key_create_one_order(harness: Harness) -> None:
    body = order_body("dave")
    replies = await asyncio.gather(
        *(harness.service.place_order(body, "same-key") for _ in range(8))
    )
    [created] = [r for r in replies if isinstance(r, Created)]
    again = [r for r in replies if isinstance(r, Replayed)]
    assert len(again) == 7 and {r.answer.body["order_id"] for r in again} == {created.order_id}
    async with harness.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(orders))).scalar_one() == 1


async def test_cancel_writes_its_event_and_refuses_twice(harness: Harness) -> None:
    created = await harness.service.place_order(order_body("erin", price="5.00"))
    assert isinstance(created, Created)
    order_id = created.order_id
    assert await harness.service.cancel_order(order_id) == Cancelled(order_id)
    assert await harness.service.cancel_order(order_id) == NotCancellable(order_id, "cancelled")
    unknown = str(uuid.uuid4())
    assert await harness.service.cancel_order(unknown) == NotFound(unknown)
    async with harness.engine.connect() as conn:
        types = (await conn.execute(select(outbox.c.event_type).order_by(outbox.c.id))).scalars()
        assert list(types) == ["OrderCreated", "OrderCancelled"]


async def test_forwarder_publishes_keyed_by_customer_with_headers(harness: Harness) -> None:
    forwarder, close = harness.forwarder()
    task = await harness.run(forwarder)
    try:
        placed = [await harness.service.place_order(order_body(c)) for c in ("a", "b", "a")]
        records = await harness.events(3)
    finally:
        await stop(forwarder, task, close)
    assert len(records) == 3
    for record in records:
        event = decode_order_event(record.value)
        headers = dict(record.headers)
        assert record.key == event.customer_id.encode()
        assert headers["event_id"] == event.event_id.encode()
        assert headers["event_type"] == b"OrderCreated"
        assert headers["schema_version"] == b"1"
    assert all(isinstance(p, Created) for p in placed)
    assert {decode_order_event(r.value).order_id for r in records} == {
        p.order_id for p in placed if isinstance(p, Created)
    }
    assert await harness.pending() == 0


async def test_late_commit_is_not_skipped(harness: Harness) -> None:
    if not harness.url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: a later transaction cannot commit first")
    forwarder, close = harness.forwarder()
    task = await harness.run(forwarder)
    late_order = str(uuid.uuid4())
    try:
        async with harness.engine.connect() as slow:
            # The slow transaction takes its outbox id first, then stays open...
            tx = await slow.begin()
            late = OrderCreated(
                event_id=str(uuid.uuid4()), order_id=late_order, customer_id="late",
                contact=Contact("late@example.com"), items=(OrderLine("s", 1, Decimal("1.00")),),
                total=Decimal("1.00"), created_at=utc_now(),
            )  # fmt: skip
            await slow.execute(
                orders.insert().values(
                    order_id=late_order, customer_id="late", customer_email="late@example.com",
                    status="created", total=Decimal("1.00"), created_at=late.created_at,
                    updated_at=late.created_at,
                )
            )  # fmt: skip
            await add_event(slow, late)
            # ...while later orders commit and are published past it.
            for c in ("x", "y", "z"):
                await harness.service.place_order(order_body(c))
            early = await harness.events(3)
            assert {decode_order_event(r.value).customer_id for r in early} == {"x", "y", "z"}
            await tx.commit()
        records = await harness.events(4)
    finally:
        await stop(forwarder, task, close)
    assert late_order in {decode_order_event(r.value).order_id for r in records}


async def test_crash_between_ack_and_mark_republishes_and_loses_nothing(harness: Harness) -> None:
    for i in range(5):
        await harness.service.place_order(order_body(f"c{i % 2}"))
    # The first forwarder gets Kafka's acknowledgement and dies before marking the rows.
    forwarder, close = harness.forwarder()
    await forwarder._producer.start()  # type: ignore[attr-defined]
    rows = await forwarder.store.pending(100)
    result = await forwarder.publisher.publish(rows)
    assert len(result.published) == 5
    await close()
    assert await harness.pending() == 5
    # Its successor publishes them again: duplicates, never a loss.
    second, close2 = harness.forwarder()
    task = await harness.run(second)
    try:
        records = await harness.events(10)
        await _wait(lambda: harness.pending(), 0)
    finally:
        await stop(second, task, close2)
    ids = [dict(r.headers)["event_id"] for r in records]
    assert len(ids) == 10 and len(set(ids)) == 5
    assert all(ids.count(i) == 2 for i in ids)


async def test_an_unpublishable_row_is_parked_and_does_not_block(harness: Harness) -> None:
    forwarder, close = harness.forwarder(max_bytes=2048)
    task = await harness.run(forwarder)
    try:
        await harness.service.place_order(order_body("p", n=1))
        await harness.service.place_order(order_body("p", n=60))  # ~4 KB: over the limit
        await harness.service.place_order(order_body("p", n=2))
        records = await harness.events(2)
        await _wait(lambda: harness.pending(), 0)
    finally:
        await stop(forwarder, task, close)
    assert [len(decode_order_event(r.value).items) for r in records] == [1, 2]
    parked = await harness.outbox.parked()
    assert len(parked) == 1 and "MessageSizeTooLarge" in parked[0]["last_error"]
    assert harness.metrics.outbox_parked._value.get() == 1
    await forwarder.refresh_metrics()  # the gauge an alert watches, read from the database
    assert harness.metrics.outbox_parked_rows._value.get() == 1


async def test_published_rows_are_purged_after_retention_and_backlog_is_measured(
    harness: Harness,
) -> None:
    for c in ("r1", "r2", "r3"):
        await harness.service.place_order(order_body(c))
    forwarder, close = harness.forwarder()
    await forwarder.refresh_metrics()
    assert harness.metrics.outbox_backlog._value.get() == 3
    assert harness.metrics.outbox_oldest_age._value.get() >= 0
    await forwarder._producer.start()  # type: ignore[attr-defined]
    try:
        assert await forwarder.forward_once() == 3
    finally:
        await close()
    await forwarder.refresh_metrics()
    assert harness.metrics.outbox_backlog._value.get() == 0
    assert await harness.outbox.counts() == {"published": 3}
    assert await harness.outbox.purge_published(utc_now() - timedelta(hours=1)) == 0
    assert await harness.outbox.purge_published(utc_now() + timedelta(seconds=1)) == 3
    assert await harness.outbox.counts() == {}


async def test_postgres_notify_wakes_the_forwarder_without_polling(harness: Harness) -> None:
    if not harness.url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite forwarders poll")
    # A 30 s poll interval: only the NOTIFY sent at commit can explain a quick publish.
    forwarder, close = harness.forwarder(poll_interval=30)
    task = await harness.run(forwarder)
    try:
        await _wait(lambda: _held(forwarder), True)
        await asyncio.sleep(0.5)  # the forwarder is now idle, waiting
        # A different service instance (as in another worker): no in-process wake-up.
        other = OrderService(OrderStore(harness.engine), max_items=10)
        started = asyncio.get_running_loop().time()
        await other.place_order(order_body("n"))
        records = await harness.events(1, timeout=10)
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        await stop(forwarder, task, close)
    assert len(records) == 1
    assert elapsed < 5


async def _held(forwarder: OutboxForwarder) -> bool:
    return forwarder.leadership.held()


async def _wait(probe: Callable[[], Any], expected: Any, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await probe() == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {expected!r}")
