"""Reconcile: the database is the source of truth; do the tables, the outbox and Kafka agree?

Checks, once the pipeline has drained:
- per customer, ``order_count``, ``cancelled_count`` and ``total_spent`` in ``customer_stats``
  equal the database's, less what the analytics agent dead-lettered (every event is applied
  or dead-lettered: never both, never neither);
- per SKU, ``reserved`` equals the quantities of confirmed orders that are not cancelled;
- every order has exactly one ``OrderCreated`` outbox row, and one ``OrderCancelled`` row if
  (and only if) it was cancelled — for orders younger than the outbox retention, whose rows
  are still there; no row is pending or parked;
- every outbox row reached ``orders.events`` (by event id), when Kafka is scanned;
- no order is still ``created`` (inventory answered for every order).

``compare`` is pure; :class:`ReconcileStore` reads the database; the web view
(``GET /admin/reconcile``) reads the tables through the worker's own routed views, so any
worker can run it, and ``python -m pipeline reconcile`` asks a worker.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.db import dead_letters, order_items, orders, outbox
from pipeline.events import money


@dataclass(frozen=True, slots=True)
class CustomerTruth:
    order_count: int = 0
    cancelled_count: int = 0
    total_spent: Decimal = Decimal("0.00")


NOTHING = {"order_count": 0, "cancelled_count": 0, "total_spent": "0.00"}


@dataclass(slots=True)
class Facts:
    """What the database says."""

    customers: dict[str, CustomerTruth] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)  # per SKU, confirmed and live
    undecided: list[str] = field(default_factory=list)  # orders still 'created'
    # per order (young enough to still have its rows): (created rows, cancel rows, cancelled?)
    outbox_rows: dict[str, tuple[int, int, bool]] = field(default_factory=dict)
    outbox_not_published: list[tuple[str, str]] = field(default_factory=list)  # (event, status)
    published_event_ids: set[str] = field(default_factory=set)
    # analytics dead letters still open, per customer: (created, cancelled, net amount)
    dead_lettered: dict[str, CustomerTruth] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Difference:
    kind: str
    key: str
    expected: Any
    actual: Any

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "expected": self.expected,
                "actual": self.actual}  # fmt: skip


@dataclass(slots=True)
class Report:
    checked: dict[str, int] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "differences": [d.to_json() for d in self.differences],
        }


def compare(
    facts: Facts,
    stats: Mapping[str, Mapping[str, Any] | None],
    stock: Mapping[str, Mapping[str, Any] | None],
    kafka_event_ids: Iterable[str] | None,
) -> Report:
    """Every difference between the database's ``facts`` and what the tables and Kafka hold.
    ``stats``/``stock`` are the public table bodies (None for a 404)."""
    report = Report()
    diffs = report.differences
    for customer, truth in sorted(facts.customers.items()):
        lost = facts.dead_lettered.get(customer, CustomerTruth())
        expected = {
            "order_count": truth.order_count - lost.order_count,
            "cancelled_count": truth.cancelled_count - lost.cancelled_count,
            "total_spent": money(truth.total_spent - lost.total_spent),
        }
        body = stats.get(customer)
        if body is None and expected == NOTHING:
            continue  # every event of this customer was dead-lettered: no stats, rightly
        actual = None if body is None else {k: body.get(k) for k in expected}
        if actual != expected:
            diffs.append(Difference("customer_stats", customer, expected, actual))
    for sku, reserved in sorted(facts.reserved.items()):
        body = stock.get(sku)
        actual_reserved = 0 if body is None else body.get("reserved")
        if actual_reserved != reserved:
            diffs.append(Difference("stock_reserved", sku, reserved, actual_reserved))
    for order_id in facts.undecided:
        diffs.append(Difference("order_undecided", order_id, "confirmed or rejected", "created"))
    for order_id, (created, cancels, cancelled) in sorted(facts.outbox_rows.items()):
        expected_rows = (1, 1 if cancelled else 0)
        if (created, cancels) != expected_rows:
            diffs.append(Difference("outbox_rows", order_id, expected_rows, (created, cancels)))
    for event_id, status in facts.outbox_not_published:
        diffs.append(Difference("outbox_unpublished", event_id, "published", status))
    if kafka_event_ids is not None:
        seen = set(kafka_event_ids)
        for event_id in sorted(facts.published_event_ids - seen):
            diffs.append(Difference("not_in_kafka", event_id, "in orders.events", "missing"))
        report.checked["kafka_events"] = len(seen)
    report.checked.update(
        customers=len(facts.customers),
        skus=len(facts.reserved),
        outbox_orders=len(facts.outbox_rows),
        dead_lettered_analytics=sum(
            d.order_count + d.cancelled_count for d in facts.dead_lettered.values()
        ),
    )
    return report


class ReconcileStore:
    """The database side of reconcile."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def facts(self, young_since: datetime) -> Facts:
        facts = Facts()
        async with self.engine.connect() as conn:
            order_rows = (
                await conn.execute(
                    select(
                        orders.c.order_id,
                        orders.c.customer_id,
                        orders.c.status,
                        orders.c.total,
                        orders.c.created_at,
                    )
                )
            ).all()
            lines = (
                await conn.execute(
                    select(order_items.c.sku, func.sum(order_items.c.quantity))
                    .join(orders, orders.c.order_id == order_items.c.order_id)
                    .where(orders.c.status == "confirmed")
                    .group_by(order_items.c.sku)
                )
            ).all()
            all_skus = (await conn.execute(select(order_items.c.sku).distinct())).scalars().all()
            rows = (
                await conn.execute(
                    select(
                        outbox.c.aggregate_id,
                        outbox.c.event_type,
                        outbox.c.event_id,
                        outbox.c.status,
                    )
                )
            ).all()
            letters = (
                await conn.execute(
                    select(
                        dead_letters.c.record_key,
                        dead_letters.c.event_type,
                        dead_letters.c.record_value,
                    ).where(dead_letters.c.agent == "analytics", dead_letters.c.status == "open")
                )
            ).all()
        per_customer: dict[str, list[Any]] = defaultdict(list)
        for r in order_rows:
            per_customer[r.customer_id].append(r)
            if r.status == "created":
                facts.undecided.append(r.order_id)
        for customer, mine in per_customer.items():
            live = [r for r in mine if r.status != "cancelled"]
            facts.customers[customer] = CustomerTruth(
                len(mine), len(mine) - len(live), sum((r.total for r in live), Decimal("0.00"))
            )
        facts.reserved = {sku: 0 for sku in all_skus} | {sku: int(n) for sku, n in lines}
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for row in rows:
            counts[row.aggregate_id][0 if row.event_type == "OrderCreated" else 1] += 1
            if row.status == "published":
                facts.published_event_ids.add(row.event_id)
            else:
                facts.outbox_not_published.append((row.event_id, row.status))
        for r in order_rows:
            if r.created_at >= young_since:
                created, cancels = counts.get(r.order_id, [0, 0])
                facts.outbox_rows[r.order_id] = (created, cancels, r.status == "cancelled")
        facts.dead_lettered = _dead_lettered_by_customer(letters)
        return facts


def _dead_lettered_by_customer(letters: Iterable[Any]) -> dict[str, CustomerTruth]:
    """What the analytics agent set aside, per customer (the record key), so the comparison
    expects it missing from the stats rather than counted."""
    from pipeline.events import InvalidEvent, OrderCreated, decode_order_event

    out: dict[str, CustomerTruth] = {}
    for key, _event_type, value in letters:
        try:
            event = decode_order_event(value)
        except InvalidEvent:
            continue  # a poison pill is no order: it counts nowhere
        customer = event.customer_id if key is None else key.decode("utf-8", "replace")
        t = out.get(customer, CustomerTruth())
        if isinstance(event, OrderCreated):
            out[customer] = CustomerTruth(t.order_count + 1, t.cancelled_count,
                                          t.total_spent + event.total)  # fmt: skip
        else:
            out[customer] = CustomerTruth(t.order_count, t.cancelled_count + 1,
                                          t.total_spent - event.total)  # fmt: skip
    return out


async def scan_event_ids(bootstrap: str, topic: str, **client: Any) -> tuple[set[str], int]:
    """Every ``event_id`` header in ``topic`` from its start to its current end, and how many
    records carried one (the difference is the duplicates the consumers absorbed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    ids: set[str] = set()
    records = 0
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for p in described.get("partitions") or ()]
    if not tps:
        return ids, 0
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                group_id=None, **client)  # fmt: skip
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, batch_records in batch.items():
                for record in batch_records:
                    event_id = dict(record.headers or ()).get("event_id")
                    if event_id is not None:
                        ids.add(event_id.decode())
                        records += 1
                if batch_records and batch_records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return ids, records
