from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from tables.customer_stats import CustomerStats, apply_event, stats_updated_event
from tests.conftest import T0, order_cancelled, order_created


def test_orders_count_and_sum_and_cancellations_subtract() -> None:
    first = order_created(total="10.00", at=T0)
    second = order_created(total="20.50", at=T0 + timedelta(hours=1))
    stats, _ = apply_event(None, first, window=100)
    stats, _ = apply_event(stats, second, window=100)
    stats, _ = apply_event(stats, order_cancelled(first), window=100)
    assert stats.order_count == 2
    assert stats.cancelled_count == 1
    assert stats.total_spent == Decimal("20.50")
    assert stats.average_order_value == Decimal("20.50")
    assert stats.first_order_at == T0
    assert stats.last_order_at == T0 + timedelta(hours=1)


def test_a_redelivered_event_applies_once() -> None:
    event = order_created(total="5.00")
    stats, applied = apply_event(None, event, window=100)
    again, applied_again = apply_event(stats, event, window=100)
    assert applied and not applied_again
    assert again == stats and again.order_count == 1


def test_dedupe_memory_is_bounded_by_the_window() -> None:
    stats = None
    for _ in range(10):
        stats, _ = apply_event(stats, order_created(), window=3)
    assert stats is not None
    assert len(stats.seen) == 3 and stats.order_count == 10


def test_average_is_zero_when_every_order_was_cancelled() -> None:
    created = order_created(total="9.99")
    stats, _ = apply_event(None, created, window=10)
    stats, _ = apply_event(stats, order_cancelled(created), window=10)
    assert stats.total_spent == Decimal("0.00")
    assert stats.public()["average_order_value"] == "0.00"


def test_average_rounds_to_cents() -> None:
    stats = None
    for total in ("10.00", "10.00", "10.01"):
        stats, _ = apply_event(stats, order_created(total=total), window=10)
    assert stats is not None
    assert stats.average_order_value == Decimal("10.00")


def test_table_value_round_trips_and_public_view_hides_dedupe_state() -> None:
    stats, _ = apply_event(None, order_created(total="3.30"), window=10)
    assert CustomerStats.from_value(stats.to_value()) == stats
    public = stats.public()
    assert "seen" not in public
    assert public == {
        "customer_id": "cust-1",
        "order_count": 1,
        "cancelled_count": 0,
        "total_spent": "3.30",
        "average_order_value": "3.30",
        "first_order_at": T0.isoformat(),
        "last_order_at": T0.isoformat(),
    }


def test_derived_event_id_comes_from_its_cause() -> None:
    event = order_created()
    stats, _ = apply_event(None, event, window=10)
    one = stats_updated_event(stats, event.event_id)
    two = stats_updated_event(stats, event.event_id)
    assert one.event_id == two.event_id
    assert one.caused_by == event.event_id
