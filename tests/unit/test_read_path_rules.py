"""Pure decisions of the read path: line commands, order progress, milestones, revenue,
and the mailbox sender's once-only delivery."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from agents.inventory import line_commands
from pipeline.adapters.mail import MailboxSender
from pipeline.domain.customer_stats import apply_event, milestone_events, revenue_record
from pipeline.domain.events import (
    InventoryRejected,
    InventoryReserved,
    LineReleaseRequested,
    LineReservationRequested,
    OrderConfirmed,
    OrderLine,
    OrderRejected,
)
from pipeline.domain.horizon import Horizon
from pipeline.domain.notifications import compose
from pipeline.domain.order_progress import (
    CONFIRMED,
    REJECTED,
    apply_outcome,
    compensations,
    decision_event,
    settled,
)
from pipeline.domain.revenue import Window, apply_revenue, set_aside
from tests.conftest import T0, order_cancelled, order_created

H = Horizon(int(T0.timestamp()), 300, 86400)


def outcome(order: str, line: int, count: int, ok: bool, sku: str = "s", qty: int = 1):  # type: ignore[no-untyped-def]
    common = dict(event_id=f"{order}-{line}", caused_by="x", order_id=order, customer_id="c",
                  customer_email="c@example.com", line_no=line, line_count=count, sku=sku,
                  quantity=qty)  # fmt: skip
    return InventoryReserved(**common) if ok else InventoryRejected(**common, available=0)


def test_an_order_becomes_one_command_per_line_with_repeatable_ids() -> None:
    lines = (OrderLine("a", 1, Decimal(1)), OrderLine("b", 2, Decimal(2)))
    two_lines = dataclasses.replace(order_created(), items=lines)
    commands = line_commands(two_lines)
    assert [type(c) for c in commands] == [LineReservationRequested] * 2
    assert [(c.sku, c.line_no, c.line_count) for c in commands] == [("a", 1, 2), ("b", 2, 2)]
    assert [c.event_id for c in line_commands(two_lines)] == [c.event_id for c in commands]
    releases = line_commands(order_cancelled(two_lines))
    assert [type(c) for c in releases] == [LineReleaseRequested] * 2
    assert [c.quantity for c in releases] == [1, 2]


def test_an_order_is_confirmed_when_every_line_is_reserved() -> None:
    p = apply_outcome(None, outcome("o", 1, 2, True))
    assert p.decision is None
    p = apply_outcome(p, outcome("o", 1, 2, True))  # a repeat changes nothing
    assert p.decision is None and len(p.lines) == 1
    p = apply_outcome(p, outcome("o", 2, 2, True))
    assert p.decision == CONFIRMED and compensations(p) == []
    assert isinstance(decision_event(p), OrderConfirmed)


def test_an_order_is_settled_once_decided_and_every_line_answered() -> None:
    p = apply_outcome(None, outcome("o", 1, 2, False))
    assert p.decision == REJECTED and not settled(p)  # line 2 may still be reserved
    assert settled(apply_outcome(p, outcome("o", 2, 2, True)))


def test_one_rejected_line_rejects_the_order_and_releases_the_reserved_ones() -> None:
    p = apply_outcome(None, outcome("o", 1, 3, True, sku="a", qty=2))
    p = apply_outcome(p, outcome("o", 2, 3, False, sku="b"))
    assert p.decision == REJECTED
    assert [(r.sku, r.quantity) for r in compensations(p)] == [("a", 2)]
    # a reservation arriving after the decision is released too; the decision stays
    p = apply_outcome(p, outcome("o", 3, 3, True, sku="c", qty=5))
    assert p.decision == REJECTED
    assert [(r.sku, r.quantity) for r in compensations(p)] == [("a", 2), ("c", 5)]
    event = decision_event(p)
    assert isinstance(event, OrderRejected) and "b" in event.reason


def test_milestones_are_reached_once_per_customer() -> None:
    big = order_created(total="900.00")
    stats, _ = apply_event(None, big, H, lifetime_value=Decimal("1000.00"))
    assert [m.milestone for m in milestone_events(stats, big.event_id)] == ["first_order"]
    more = order_created(total="150.00", at=T0 + timedelta(hours=1))
    stats, _ = apply_event(stats, more, H, lifetime_value=Decimal("1000.00"))
    assert [m.milestone for m in milestone_events(stats, more.event_id)] == ["lifetime_value"]
    # falling below and rising again reaches nothing new
    stats, _ = apply_event(stats, order_cancelled(more), H)
    again = order_created(total="500.00")
    stats, _ = apply_event(stats, again, H, lifetime_value=Decimal("1000.00"))
    assert milestone_events(stats, again.event_id) == []
    # a redelivered cause re-sends its milestone with the same id
    assert milestone_events(stats, big.event_id)[0].event_id == milestone_events(
        stats, big.event_id)[0].event_id  # fmt: skip


def test_revenue_windows_add_orders_and_subtract_cancellations_once() -> None:
    created = order_created(total="20.00")
    w, _ = apply_revenue(Window(), revenue_record(created, "s0@10"), H)
    w, applied = apply_revenue(w, revenue_record(created, "s0@10"), H)
    assert not applied and (w.revenue, w.orders) == (Decimal("20.00"), 1)
    w, _ = apply_revenue(w, revenue_record(order_cancelled(created), "s0@11"), H)
    assert (w.revenue, w.orders) == (Decimal("0.00"), 0)


def test_a_revenue_window_stays_bounded_by_the_horizon_not_its_record_count() -> None:
    # The window kept every record id and rewrote them all per record: quadratic, and past
    # 1 MB at ~25k records. Now it keeps the ids of the horizon.
    w = Window()
    short = Horizon(H.now, 10, H.replay_seconds)
    records = [revenue_record(order_created(total="1.00"), "") for _ in range(20_000)]
    for n, record in enumerate(records):
        now = Horizon(short.now + n // 100, short.seconds, short.replay_seconds)  # 100 a second
        w, _ = apply_revenue(w, record, now)
        if n % 1000 == 999:  # a repeat within the horizon changes nothing
            w, applied = apply_revenue(w, records[n - 500], now)
            assert not applied
    assert (w.revenue, w.orders) == (Decimal("20000.00"), 20_000)
    assert w.seen_count() <= 100 * (short.seconds + 1)


def test_a_revenue_window_keeps_about_17_bytes_an_id_and_reads_back_what_it_wrote() -> None:
    # At 100 records a second and a 300 s horizon, full ids (~50 bytes each with their time)
    # made a 1.5 MB window, over the broker's record limit.
    w = Window()
    horizon = Horizon(H.now, 300, H.replay_seconds)
    for n in range(30_000):
        now = Horizon(horizon.now + n // 100, horizon.seconds, horizon.replay_seconds)
        w, _ = apply_revenue(w, revenue_record(order_created(total="1.00"), ""), now)
    raw = json.dumps(w.to_value(), separators=(",", ":")).encode()
    assert w.seen_count() == 30_000 and len(raw) < 18 * 30_000
    assert Window.from_value(json.loads(raw)) == w


def test_a_revenue_window_written_with_full_ids_still_knows_its_records() -> None:
    created = order_created(total="4.00")
    record = revenue_record(created, "")
    old = {"revenue": "4.00", "orders": 1, "clock": H.now, "seen": {record.event_id: H.now}}
    w, applied = apply_revenue(Window.from_value(old), record, H)
    assert not applied and w.revenue == Decimal("4.00")


def test_a_record_re_read_out_of_order_after_later_ones_still_counts() -> None:
    # After a rebalance the stuck-partition re-read applies a range again after later records:
    # windows deduping by a per-stream offset mark dropped those first copies (the soak lost
    # 197 orders in the window of a worker's kill).
    early, late = order_created(total="5.00"), order_created(total="7.00")
    w, _ = apply_revenue(Window(), revenue_record(late, "s0@2531"), H)
    w, applied = apply_revenue(w, revenue_record(early, "s0@2468"), H)
    assert applied and w.revenue == Decimal("12.00")


def test_the_mailbox_delivers_each_event_once(tmp_path: Path) -> None:
    sender = MailboxSender(tmp_path)
    decision = OrderConfirmed("evt-1", "o-1", "c", "c@example.com")

    async def twice() -> list[bool]:
        return [await sender.send(compose(decision)), await sender.send(compose(decision))]

    assert asyncio.run(twice()) == [True, False]
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == ["evt-1.eml"]
    assert "Message-ID: <evt-1@orders-pipeline>" in files[0].read_text()


def test_a_dead_lettered_revenue_record_replays_once_after_its_stream_moved_on() -> None:
    lost = revenue_record(order_created(total="3.00"), "s1@5")
    w = set_aside(Window(), lost.event_id)
    w, _ = apply_revenue(w, revenue_record(order_created(total="1.00"), "s1@9"), H)
    w, applied = apply_revenue(w, lost, H, replayed=True)
    w, again = apply_revenue(w, lost, H, replayed=True)
    assert applied and not again and (w.revenue, w.orders, w.pending) == (Decimal("4.00"), 2, ())
    assert Window.from_value(w.to_value()) == w


def test_a_record_applied_to_a_window_shares_every_older_group_of_ids() -> None:
    """Applying a record copies only the newest group of ids (and the index of groups): a
    window holding a horizon's 28,000 ids was copied whole per record, quadratic in the rate."""
    w = Window()
    for n in range(3_000):
        now = Horizon(H.now + n // 100, 300, H.replay_seconds)  # 100 a second, 30 s
        before = w
        w, _ = apply_revenue(w, revenue_record(order_created(total="1.00"), ""), now)
        older = [at for at in before.seen if at != now.now]
        assert all(w.seen[at] is before.seen[at] for at in older)
    assert len(w.seen) == 30 and w.seen_count() == 3_000
