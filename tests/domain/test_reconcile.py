"""Reconcile's comparison, offline: each kind of difference, and the dead-letter allowance."""

from __future__ import annotations

from decimal import Decimal

from pipeline.domain.reconcile import CustomerTruth, Facts, compare


def _facts() -> Facts:
    return Facts(
        customers={"c1": CustomerTruth(3, 1, Decimal("20.00")), "c2": CustomerTruth(1, 0,
                                                                                Decimal("5.50"))},
        reserved={"sku-a": 4, "sku-b": 0},
        outbox_rows={"o1": (1, 0, False), "o2": (1, 1, True)},
        published_event_ids={"e1", "e2", "e3"},
    )  # fmt: skip


STATS = {
    "c1": {"order_count": 3, "cancelled_count": 1, "total_spent": "20.00"},
    "c2": {"order_count": 1, "cancelled_count": 0, "total_spent": "5.50"},
}
STOCK = {"sku-a": {"reserved": 4, "available": 6}, "sku-b": None}


def test_a_drained_pipeline_reconciles() -> None:
    report = compare(_facts(), STATS, STOCK, ["e1", "e2", "e3", "e3"])
    assert report.ok, report.differences
    assert report.checked["customers"] == 2 and report.checked["kafka_events"] == 3


def test_every_kind_of_difference_is_reported() -> None:
    facts = _facts()
    facts.undecided = ["o3"]
    facts.outbox_rows["o4"] = (2, 0, False)  # a second OrderCreated row
    facts.outbox_not_published = [("e9", "parked")]
    stats = {**STATS, "c1": {**STATS["c1"], "order_count": 4}}  # a double count
    stock = {**STOCK, "sku-a": {"reserved": 5}}  # a leaked reservation
    report = compare(facts, stats, stock, ["e1", "e3"])
    kinds = {(d.kind, d.key) for d in report.differences}
    assert kinds == {
        ("customer_stats", "c1"), ("stock_reserved", "sku-a"), ("order_undecided", "o3"),
        ("outbox_rows", "o4"), ("outbox_unpublished", "e9"), ("not_in_kafka", "e2"),
    }  # fmt: skip
    assert not report.ok


def test_a_missing_customer_is_a_difference() -> None:
    report = compare(_facts(), {"c1": STATS["c1"]}, STOCK, None)
    [diff] = report.differences
    assert (diff.kind, diff.key, diff.actual) == ("customer_stats", "c2", None)


def test_dead_lettered_events_are_expected_missing_from_the_stats() -> None:
    facts = _facts()
    # c2's only order was dead-lettered by analytics: the stats must not count it...
    facts.dead_lettered = {"c2": CustomerTruth(1, 0, Decimal("5.50"))}
    assert compare(facts, {**STATS, "c2": None}, STOCK, None).ok
    # ...and counting it as well ("applied and dead-lettered") is a difference.
    assert not compare(facts, STATS, STOCK, None).ok
