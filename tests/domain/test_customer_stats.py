from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from pipeline.domain.customer_stats import (
    CustomerStats,
    apply_event,
    set_aside,
    stats_updated_event,
)
from pipeline.domain.horizon import Horizon
from tests.conftest import T0, order_cancelled, order_created

NOW = int(T0.timestamp())
H = Horizon(NOW, 10, 1000)  # a horizon of 10 s, replays within 1,000 s


def at(seconds: int) -> Horizon:
    return Horizon(NOW + seconds, H.seconds, H.replay_seconds)


def test_orders_count_and_sum_and_cancellations_subtract() -> None:
    first = order_created(total="10.00", at=T0)
    second = order_created(total="20.50", at=T0 + timedelta(hours=1))
    stats, _ = apply_event(None, first, H)
    stats, _ = apply_event(stats, second, H)
    stats, _ = apply_event(stats, order_cancelled(first), H)
    assert stats.order_count == 2
    assert stats.cancelled_count == 1
    assert stats.total_spent == Decimal("20.50")
    assert stats.average_order_value == Decimal("20.50")
    assert stats.first_order_at == T0
    assert stats.last_order_at == T0 + timedelta(hours=1)


def test_a_redelivered_event_applies_once() -> None:
    event = order_created(total="5.00")
    stats, applied = apply_event(None, event, H)
    again, applied_again = apply_event(stats, event, H)
    assert applied and not applied_again
    assert again == stats and again.order_count == 1


def test_a_repeat_within_the_horizon_is_caught_however_busy_the_customer() -> None:
    # A count window of 1,000 ids forgot the first event after 1,000 more: a forwarder
    # re-publish or a retry arriving then counted twice.
    first = order_created(total="1.00")
    stats, _ = apply_event(None, first, H)
    for _ in range(2000):
        stats, _ = apply_event(stats, order_created(total="1.00"), at(5))
    stats, applied = apply_event(stats, first, at(9))
    assert not applied and stats.order_count == 2001


def test_dedupe_memory_is_bounded_by_the_horizon_not_the_history() -> None:
    stats = None
    for n in range(10_000):
        stats, _ = apply_event(stats, order_created(), at(n // 100))  # 100 events a second
    assert stats is not None and stats.order_count == 10_000
    # the ids of the last 10 s (and the second being applied) are kept, the rest dropped
    assert len(stats.seen) <= 100 * (H.seconds + 1)
    assert len(stats.to_value()["seen"]) == len(stats.seen)


def test_a_retry_with_its_original_older_time_does_not_run_the_clock_back() -> None:
    stats, _ = apply_event(None, order_created(), at(100))
    retried = order_created()
    stats, _ = apply_event(stats, retried, at(50))
    assert stats.clock == NOW + 100 and stats.seen[retried.event_id][0] == NOW + 100


def test_a_dead_letter_replay_applies_once_however_late() -> None:
    lost = order_created(total="7.00")
    stats, _ = apply_event(None, order_created(total="1.00"), H)
    stats = set_aside(stats, lost.event_id, NOW)
    for n in range(50):  # far beyond the horizon
        stats, _ = apply_event(stats, order_created(total="1.00"), at(20 * n))
    stats, applied = apply_event(stats, lost, at(990), replayed=True)
    assert applied and stats.total_spent == Decimal("58.00")
    assert lost.event_id not in stats.pending
    # a second replay, after the first has left the horizon, changes nothing
    stats, applied = apply_event(stats, lost, at(999), replayed=True)
    stats2, applied2 = apply_event(stats, lost, at(999 + 50), replayed=True)
    assert not applied and not applied2 and stats2.total_spent == Decimal("58.00")


def test_a_replay_of_an_event_that_got_through_another_way_changes_nothing() -> None:
    event = order_created(total="3.00")
    stats = set_aside(CustomerStats("cust-1"), event.event_id, NOW)
    stats, _ = apply_event(stats, event, at(1))  # e.g. the forwarder's duplicate
    assert event.event_id not in stats.pending
    stats, _ = apply_event(stats, order_created(total="1.00"), at(500))  # horizon passes
    stats, applied = apply_event(stats, event, at(600), replayed=True)
    assert not applied and stats.order_count == 2


def test_an_event_already_counted_is_not_set_aside() -> None:
    event = order_created()
    stats, _ = apply_event(None, event, H)
    assert set_aside(stats, event.event_id, NOW) is stats


def test_pending_ids_older_than_the_replay_age_are_dropped() -> None:
    stats = set_aside(CustomerStats("cust-1"), "old", NOW)
    stats, _ = apply_event(stats, order_created(), at(2000))
    assert stats.pending == {}


def test_average_is_zero_when_every_order_was_cancelled() -> None:
    created = order_created(total="9.99")
    stats, _ = apply_event(None, created, H)
    stats, _ = apply_event(stats, order_cancelled(created), H)
    assert stats.total_spent == Decimal("0.00")
    assert stats.public()["average_order_value"] == "0.00"


def test_average_rounds_to_cents() -> None:
    stats = None
    for total in ("10.00", "10.00", "10.01"):
        stats, _ = apply_event(stats, order_created(total=total), H)
    assert stats is not None
    assert stats.average_order_value == Decimal("10.00")


def test_table_value_round_trips_and_public_view_hides_dedupe_state() -> None:
    stats, _ = apply_event(None, order_created(total="3.30"), H)
    stats = set_aside(stats, "later", NOW)
    assert CustomerStats.from_value(stats.to_value()) == stats
    public = stats.public()
    assert public == {
        "customer_id": "cust-1",
        "order_count": 1,
        "cancelled_count": 0,
        "total_spent": "3.30",
        "average_order_value": "3.30",
        "first_order_at": T0.isoformat(),
        "last_order_at": T0.isoformat(),
    }


def test_a_value_written_before_the_horizon_still_reads() -> None:
    old = {"customer_id": "c", "order_count": 1, "cancelled_count": 0, "total_spent": "1.00",
           "first_order_at": None, "last_order_at": None, "seen": ["e1"]}  # fmt: skip
    stats = CustomerStats.from_value(old)
    assert stats.seen == {"e1": (0, "")} and stats.pending == {} and stats.clock == 0


def test_derived_event_id_comes_from_its_cause() -> None:
    event = order_created()
    stats, _ = apply_event(None, event, H)
    one = stats_updated_event(stats, event.event_id)
    two = stats_updated_event(stats, event.event_id)
    assert one.event_id == two.event_id
    assert one.caused_by == event.event_id
