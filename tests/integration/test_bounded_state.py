"""Bounded state at volume, reached cheaply: a dedupe horizon of a few seconds, one hot SKU and
one hot customer, a forwarder re-publishing every order event a few seconds late, a late retry
of an old stock set. Judged from the database, the changelog topics read with a plain
consumer, and the public HTTP API; never from the pipeline's own reconcile.

Each part failed on the count windows this replaced (run with a window of 8 ids, the setting
since retired): the ledger dropped releases and rejections in the write that made
them, so repeats took stock twice; the stats forgot an event after eight more; confirmed lines
stayed in the ledger forever and every revenue id in its window.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.adapters.db.schema import migrate
from pipeline.domain.events import StockSet, encode
from tests.integration.workers import Worker, WorkerFactory, create_topics, produce, wait_for

HORIZON = 8  # seconds
DUPLICATE_AFTER = 2.0  # the re-publish lags the first by this much: within the horizon
HOT, SCARCE, OTHER = "sku-hot", "sku-scarce", "sku-other"
SCARCE_STOCK = 25
ORDERS = 420


class Republisher:
    """What a forwarder that lost its marks does: sends records of ``orders.events`` again, key,
    value and headers, ``DUPLICATE_AFTER`` seconds after they first appeared.

    A repeat the pipeline promises to absorb comes within the horizon, so one this harness
    could only send later than that (a loaded machine) is not sent, and counted: the test
    requires nearly all to go out in time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.sent = 0
        self.too_late = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Republisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.bootstrap,
                                    auto_offset_reset="earliest", group_id=None)  # fmt: skip
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await consumer.start()
        await producer.start()
        queue: list[Any] = []
        once: set[bytes] = set()  # it reads its own repeats too: each record goes out once more
        try:
            while not (self._stop.is_set() and not queue):
                batch = await consumer.getmany(timeout_ms=100)
                for records in batch.values():
                    for r in records:
                        event_id = dict(r.headers).get("event_id", b"")
                        if event_id not in once:
                            once.add(event_id)
                            queue.append(r)
                queue.sort(key=lambda r: r.timestamp)
                due, sends = time.time() - DUPLICATE_AFTER, []
                while queue and queue[0].timestamp / 1000 <= due:
                    r = queue.pop(0)
                    if time.time() - r.timestamp / 1000 > HORIZON - 2:
                        self.too_late += 1
                        continue
                    sends.append(await producer.send(self.topic, r.value, key=r.key,
                                                     headers=list(r.headers)))  # fmt: skip
                for delivery in sends:
                    await delivery
                    self.sent += 1
        finally:
            await producer.stop()
            await consumer.stop()


def _post(worker: Worker, path: str, body: Any, key: str | None = None) -> tuple[int, Any]:
    """What a client does with 503 + Retry-After (SQLite busy): ask again, the same key."""
    headers = {"Idempotency-Key": key} if key else None
    for _ in range(50):
        status, reply = worker.post(path, body, headers)
        if status != 503:
            return status, reply
        time.sleep(0.1)
    return status, reply


def _load(worker: Worker, rng: random.Random) -> tuple[list[str], list[str]]:
    """Orders at ~15/s, half of them one customer's, every one with a line of the hot SKU,
    some with the scarce SKU (rejected once it runs out: compensation), and about one in ten
    cancelled: half at once, half once confirmed."""
    placed: list[str] = []
    cancelled: list[str] = []
    for n in range(ORDERS):
        started = time.monotonic()
        customer = "cust-hot" if n % 2 == 0 else f"cust-{rng.randrange(30)}"
        items = [{"sku": HOT, "quantity": rng.randint(1, 3), "unit_price": "2.50"}]
        if n % 3 == 0:
            items.append({"sku": SCARCE, "quantity": 1, "unit_price": "10.00"})
        if n % 4 == 1:
            items.append({"sku": OTHER, "quantity": 2, "unit_price": "1.25"})
        body = {"customer_id": customer, "customer_email": f"{customer}@example.com",
                "items": items}  # fmt: skip
        status, reply = _post(worker, "/orders", body, f"order-{n}")
        assert status == 201, reply
        placed.append(reply["order_id"])
        if n % 20 == 5:  # at once, most likely before inventory has answered
            victim = reply["order_id"]
        elif n % 20 == 15 and len(placed) > 30:  # an older one, most likely confirmed
            victim = placed[-30]
        else:
            victim = None
        if victim is not None and victim not in cancelled:
            status, reply = _post(worker, f"/orders/{victim}/cancel", {})
            assert status in (200, 409), reply
            if status == 200:
                cancelled.append(victim)
        time.sleep(max(0.0, 1 / 15 - (time.monotonic() - started)))
    return placed, cancelled


def _database(url: str) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, int]]]:
    path = url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        orders = {
            row[0]: {"customer_id": row[1], "status": row[2], "total": Decimal(str(row[3]))}
            for row in db.execute("SELECT order_id, customer_id, status, total FROM orders")
        }
        lines = list(db.execute("SELECT order_id, sku, quantity FROM order_items"))
    return orders, lines


async def _records(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic``, partition by partition in offset order, read from the start
    to the end offsets with a plain consumer."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    parts = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    assert parts, f"no topic {topic}"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", group_id=None)  # fmt: skip
    await consumer.start()
    out: list[Any] = []
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                out.extend(records)
    finally:
        await consumer.stop()
    return sorted(out, key=lambda r: (r.partition, r.offset))


async def _last_values(bootstrap: str, topic: str) -> dict[bytes, tuple[bytes, int]]:
    """Per key of a changelog: its latest value and the largest it ever had."""
    latest: dict[bytes, bytes] = {}
    largest: dict[bytes, int] = {}
    for r in await _records(bootstrap, topic):
        if r.value is not None:
            latest[r.key] = r.value
            largest[r.key] = max(largest.get(r.key, 0), len(r.value))
    return {key: (value, largest[key]) for key, value in latest.items()}


def _within_horizon(touches: list[tuple[str, str, int]]) -> tuple[int, int]:
    """What a value is allowed to hold, computed from the records it was fed, not from the
    value: ``touches`` are ``(stream, item, record time in ms)`` in the order one partition
    delivered them. A stream's clock is the latest record time it has shown; an item was last
    touched at its stream's clock then. Returns how many distinct items were last touched
    within ``HORIZON`` (one second of slack for the rounding) of their stream's final clock,
    and how many items there were: the first bounds the value, the second is its history."""
    clocks: dict[str, int] = {}
    last: dict[str, tuple[str, int]] = {}
    for stream, item, stamp in touches:
        clocks[stream] = max(clocks.get(stream, 0), stamp // 1000)
        last[item] = (stream, clocks[stream])
    recent = sum(1 for stream, at in last.values() if at >= clocks[stream] - HORIZON - 1)
    return recent, len(last)


async def _dump(bootstrap: str, workers: WorkerFactory, path: str) -> None:
    out = []
    for topic in (f"{workers.app_id}-stock-changelog", workers.topic("inventory.commands"),
                  workers.topic("inventory.events")):  # fmt: skip
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                    auto_offset_reset="earliest", group_id=None)  # fmt: skip
        await consumer.start()
        try:
            for _ in range(30):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for r in records:
                        if r.value and (b"sku-scarce" in r.value or b"sku-other" in r.value):
                            out.append(f"{topic} {r.partition}@{r.offset} ts={r.timestamp} "
                                       f"key={r.key!r} {r.value[:3000]!r}")  # fmt: skip
        finally:
            await consumer.stop()
    with open(path, "w") as f:
        f.write("\n".join(out))


@pytest.mark.timeout(900)
def test_state_stays_bounded_and_exact_under_repeats_at_volume(
    workers: WorkerFactory, kafka_bootstrap: str
) -> None:
    migrate(workers.database_url)
    orders_topic = workers.topic("orders.events")
    asyncio.run(create_topics(kafka_bootstrap, [orders_topic]))
    worker = workers.start(
        PIPELINE_DEDUPE_HORIZON_SECONDS=str(HORIZON),
        PIPELINE_RETRY_DELAYS="0.2,0.5",
        PIPELINE_REVENUE_WINDOW_SECONDS="3600",
    )
    stock = {HOT: 100_000, SCARCE: SCARCE_STOCK, OTHER: 100_000}
    for sku, units in stock.items():
        status, body = worker.put(f"/inventory/{sku}", {"available": units})
        assert status == 202, body
    wait_for(lambda: worker.get(f"/inventory/{SCARCE}")[0] == 200, 30, "the stock to be set")
    # A retry of an older stock set, arriving after the newer one was applied.
    stale = StockSet("stale-set", SCARCE, 10_000, datetime.now(UTC) - timedelta(minutes=5))
    asyncio.run(produce(kafka_bootstrap, workers.topic("inventory.commands"),
                        [(SCARCE.encode(), encode(stale),
                          [("event_id", b"stale-set"), ("event_type", b"StockSet")])]))  # fmt: skip

    republisher = Republisher(kafka_bootstrap, orders_topic).start()
    try:
        placed, cancelled = _load(worker, random.Random(14))
        time.sleep(DUPLICATE_AFTER + 1)
    finally:
        republisher.stop()
    # The fault bit: (nearly) every order event went to the agents twice, within the horizon.
    assert republisher.sent >= 0.9 * (len(placed) + len(cancelled)), republisher.too_late

    def drained() -> bool:
        orders, _ = _database(workers.database_url)
        return not any(o["status"] == "created" for o in orders.values())

    wait_for(drained, 120, "inventory to answer every order")
    orders, lines = _database(workers.database_url)
    statuses = Counter(o["status"] for o in orders.values())
    assert statuses["rejected"] > 0 and statuses["confirmed"] > 0 and statuses["cancelled"] > 0

    # Stock: reserved is what confirmed orders hold, available the rest of the last set.
    truth = Counter[str]()
    for order_id, sku, quantity in lines:
        if orders[order_id]["status"] == "confirmed":
            truth[sku] += quantity
    if truth[SCARCE] > SCARCE_STOCK:
        asyncio.run(_dump(kafka_bootstrap, workers, "/tmp/scarce-dump.txt"))
    assert truth[SCARCE] <= SCARCE_STOCK  # the stale set did not add stock

    def stock_agrees() -> list[Any]:
        wrong = []
        for sku, units in stock.items():
            _, body = worker.get(f"/inventory/{sku}")
            if body != {"sku": sku, "available": units - truth[sku], "reserved": truth[sku]}:
                wrong.append(body)
        return wrong

    try:
        wait_for(lambda: not stock_agrees(), 60, "stock to agree with the database")
    except AssertionError:
        asyncio.run(_dump(kafka_bootstrap, workers, "/tmp/scarce-dump.txt"))
        raise AssertionError(f"stock {stock_agrees()} against the database's {truth}") from None

    # Stats: each customer's figures from the database.
    for customer in {o["customer_id"] for o in orders.values()}:
        mine = [o for oid, o in orders.items() if o["customer_id"] == customer]
        live = [o for o in mine if o["status"] != "cancelled"]
        spent = sum((o["total"] for o in live), Decimal("0.00"))
        expected = {"order_count": len(mine), "cancelled_count": len(mine) - len(live),
                    "total_spent": str(spent)}  # fmt: skip
        wait_for(lambda c=customer, e=expected: {k: (worker.get(f"/customers/{c}/stats")[1] or {})
                 .get(k) for k in e} == e, 30, f"{customer}'s stats")  # fmt: skip

    # Revenue: every order once, every cancellation subtracted once (one window: an hour).
    net = sum((o["total"] for o in orders.values() if o["status"] != "cancelled"), Decimal(0))
    _, revenue = worker.get("/analytics/revenue")
    windows = revenue["windows"] if isinstance(revenue, dict) else revenue
    assert sum(Decimal(w["revenue"]) for w in windows) == net
    assert sum(w["orders"] for w in windows) == len(orders) - statuses["cancelled"]

    # Bounded: the values the changelogs hold are sized by the horizon, not by history. What
    # each may hold is worked out from the records that fed it (a burst of orders, which a
    # stalled SQLite writer makes, legitimately puts more of them within one horizon).
    app_id = workers.app_id
    commands = asyncio.run(_records(kafka_bootstrap, workers.topic("inventory.commands")))
    hot_commands = [json.loads(r.value) | {"ts": r.timestamp} for r in commands
                    if r.key == HOT.encode() and r.value]  # fmt: skip
    ledger_bound, ledger_history = _within_horizon(
        [
            (c.get("source", ""), f"{c['order_id']}:{c['line_no']}", c["ts"])
            for c in hot_commands
            if "line_no" in c
        ]
    )
    assert ledger_bound < ledger_history / 2  # the run outlasted the horizon: pruning was due
    stock_values = asyncio.run(_last_values(kafka_bootstrap, f"{app_id}-stock-changelog"))
    hot, _ = stock_values[HOT.encode()]
    assert len(json.loads(hot)["lines"]) <= ledger_bound, (ledger_bound, ledger_history)

    events = asyncio.run(_records(kafka_bootstrap, orders_topic))
    stats_bound, stats_history = _within_horizon(
        [
            ("", dict(r.headers)["event_id"].decode(), r.timestamp)
            for r in events
            if r.key == b"cust-hot"
        ]
    )
    assert stats_bound < stats_history / 2
    stats_values = asyncio.run(_last_values(kafka_bootstrap, f"{app_id}-customer_stats-changelog"))
    hot_stats = json.loads(stats_values[b"cust-hot"][0])
    assert len(hot_stats["seen"]) <= stats_bound, (stats_bound, stats_history)

    # The windows (of an hour: one, or two across the hour, each its own clock) keep the ids
    # of the horizon only.
    records = asyncio.run(_records(kafka_bootstrap, workers.topic("analytics.revenue")))
    revenue_bound, revenue_history = _within_horizon(
        [
            (
                f"window {r.timestamp // 3_600_000}",
                dict(r.headers)["event_id"].decode(),
                r.timestamp,
            )
            for r in records
        ]
    )
    assert revenue_bound < revenue_history / 2
    revenue_values = asyncio.run(_last_values(kafka_bootstrap, f"{app_id}-revenue-changelog"))
    kept = sum(
        len(packed) // 16  # 16-character digests, packed per second (tables.revenue)
        for v, _ in revenue_values.values()
        if b'"ids"' in v
        for packed in json.loads(v)["ids"].values()
    )
    assert 0 < kept <= revenue_bound, (revenue_bound, revenue_history)
