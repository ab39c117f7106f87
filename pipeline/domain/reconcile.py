"""Reconcile's judgement, pure: the database's facts against what the tables and the topic
say, as a report of every difference (see :mod:`pipeline.services.reconcile`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipeline.domain.events import InvalidEvent, OrderCreated, decode_order_event, money


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


@dataclass(slots=True)
class TopicIds:
    """What a topic holds: the distinct event ids, the records that carried one, and the
    records whose ``event_id`` header is missing or unreadable (not UTF-8, empty)."""

    ids: set[str] = field(default_factory=set)
    records: int = 0
    undecodable: int = 0


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


def dead_lettered_by_customer(letters: Iterable[Any]) -> dict[str, CustomerTruth]:
    """What the analytics agent set aside, per customer (the record key), so the comparison
    expects it missing from the stats rather than counted."""
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
