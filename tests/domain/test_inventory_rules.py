"""Stock per SKU: reservations, rejections, releases and their ledger (pure rules)."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

from pipeline.domain.events import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    LineReleaseRequested,
    LineReservationRequested,
    LineSettled,
    StockSet,
)
from pipeline.domain.horizon import Horizon
from pipeline.domain.stock import (
    RESERVED,
    Stock,
    apply_command,
    apply_stock_set,
    release_line,
    reserve_line,
    set_aside,
)
from tests.conftest import T0

NOW = int(T0.timestamp())
W = Horizon(NOW, 10, 1000)  # settled lines kept 10 s, replays within 1,000 s


def at(seconds: int) -> Horizon:
    return Horizon(NOW + seconds, W.seconds, W.replay_seconds)


def stock(available: int) -> Stock:
    return apply_stock_set(Stock("sku-1"), StockSet(str(uuid.uuid4()), "sku-1", available, T0))


def reserve(
    order: str, qty: int, line: int = 1, count: int = 1, source: str = "0"
) -> LineReservationRequested:
    return LineReservationRequested(
        event_id=f"{order}-r{line}", caused_by=order, order_id=order, customer_id="c",
        customer_email="c@example.com", line_no=line, line_count=count, sku="sku-1", quantity=qty,
        source=source,
    )  # fmt: skip


def release(
    order: str, qty: int, line: int = 1, reason: str = "cancelled", confirmed: bool = False
) -> LineReleaseRequested:
    return LineReleaseRequested(
        event_id=f"{order}-x{line}-{reason}", caused_by=order, order_id=order, line_no=line,
        sku="sku-1", quantity=qty, reason=reason, confirmed=confirmed, source="0",
    )  # fmt: skip


def settle(order: str, qty: int, line: int = 1, source: str = "0") -> LineSettled:
    return LineSettled(event_id=f"{order}-s{line}", caused_by=order, order_id=order,
                       line_no=line, sku="sku-1", quantity=qty, source=source)  # fmt: skip


def test_reserve_takes_stock_until_there_is_not_enough() -> None:
    s, out = reserve_line(stock(5), reserve("o1", 3), W)
    assert isinstance(out, InventoryReserved) and (s.available, s.reserved) == (2, 3)
    s, out = reserve_line(s, reserve("o2", 3), W)
    assert isinstance(out, InventoryRejected) and out.available == 2
    assert (s.available, s.reserved) == (2, 3)


def test_a_repeated_reservation_answers_the_same_and_takes_nothing() -> None:
    s, first = reserve_line(stock(5), reserve("o1", 2), W)
    again, second = reserve_line(s, reserve("o1", 2), W)
    assert again == s and second == first
    s, rejected = reserve_line(s, reserve("o2", 9), W)
    _, rejected_again = reserve_line(s, reserve("o2", 9), W)
    assert rejected_again == rejected


def test_release_gives_back_once() -> None:
    s, _ = reserve_line(stock(5), reserve("o1", 2), W)
    s, out = release_line(s, release("o1", 2), W)
    assert isinstance(out, InventoryReleased) and (s.available, s.reserved) == (5, 0)
    # the compensation and the cancellation may both ask: the second changes nothing
    again, out2 = release_line(s, release("o1", 2, reason="rejected"), W)
    assert again == s and out2 is not None and out is not None
    assert out2.event_id == out.event_id  # one InventoryReleased per line, whoever asked


def test_a_release_before_its_reservation_leaves_a_tombstone() -> None:
    s, out = release_line(stock(5), release("o1", 2), W)
    assert out is None
    s, out = reserve_line(s, reserve("o1", 2), W)
    assert out is None and (s.available, s.reserved) == (5, 0)


def test_releasing_a_rejected_line_gives_back_nothing() -> None:
    s, _ = reserve_line(stock(1), reserve("o1", 2), W)
    s2, out = release_line(s, release("o1", 2), W)
    assert out is None and (s2.available, s2.reserved) == (1, 0)


def test_settled_entries_survive_however_many_lines_are_live() -> None:
    # The old ledger kept live reservations and trimmed settled entries to a count window:
    # with more live lines than the window, a rejection, a release or a tombstone was dropped
    # in the very write that made it, and its repeat took stock again.
    s = stock(1000)
    for i in range(20):
        s, _ = reserve_line(s, reserve(f"live{i}", 1), W)
    s, out = reserve_line(s, reserve("big", 10_000), W)
    assert isinstance(out, InventoryRejected)
    s, _ = release_line(s, release("early", 5), W)  # a tombstone
    s, _ = release_line(s, release("live0", 1), W)  # released
    s, again = reserve_line(s, reserve("big", 1), W)  # the rejected line, asked again
    assert isinstance(again, InventoryRejected)
    s, late = reserve_line(s, reserve("early", 5), W)  # its reservation, after the release
    assert late is None
    s, twice = reserve_line(s, reserve("live0", 1), W)  # redelivered after its release
    assert isinstance(twice, InventoryReserved)
    assert (s.available, s.reserved) == (981, 19)


def test_a_hot_sku_ledger_is_bounded_by_the_horizon_not_its_history() -> None:
    s = stock(10**9)
    for i in range(50_000):
        now = at(i // 10)  # 10 lines a second
        s, _ = apply_command(s, reserve(f"o{i}", 1), now)
        s, _ = apply_command(s, settle(f"o{i}", 1), now)
    assert s.reserved == 50_000
    assert len(s.lines) <= 10 * (W.seconds + 2)
    assert all(state != RESERVED for state, _, _ in s.lines.values())


def test_live_reservations_are_kept_whatever_their_age() -> None:
    s, _ = apply_command(stock(10), reserve("slow", 2), W)
    for i in range(100):
        s, _ = apply_command(s, reserve(f"o{i}", 0), at(i))
    assert s.lines["slow:1"][0] == RESERVED


def test_cancelling_a_confirmed_line_after_its_entry_expired_releases_it() -> None:
    s, _ = apply_command(stock(10), reserve("o1", 3), W)
    s, _ = apply_command(s, settle("o1", 3), W)
    s, _ = apply_command(s, reserve("o2", 1), at(60))  # the horizon passes: o1 is forgotten
    assert "o1:1" not in s.lines
    s, out = apply_command(s, release("o1", 3, confirmed=True), at(61))
    assert isinstance(out, InventoryReleased) and (s.available, s.reserved) == (9, 1)
    s, again = apply_command(s, release("o1", 3, confirmed=True), at(62))  # a repeat
    assert isinstance(again, InventoryReleased) and (s.available, s.reserved) == (9, 1)


def test_a_release_racing_its_settlement_releases_once() -> None:
    s, _ = apply_command(stock(10), reserve("o1", 3), W)
    s, _ = apply_command(s, release("o1", 3, confirmed=True), W)
    s, _ = apply_command(s, settle("o1", 3), W)  # arrives after the cancellation
    assert (s.available, s.reserved) == (10, 0)


def test_a_retried_older_stock_set_does_not_overwrite_a_newer_one() -> None:
    older = StockSet("set-old", "sku-1", 5, T0)
    newer = StockSet("set-new", "sku-1", 9, T0 + timedelta(seconds=1))
    s, _ = apply_command(Stock("sku-1"), newer, W)
    s, _ = apply_command(s, older, at(2))
    assert s.available == 9
    s, _ = apply_command(s, newer, at(3))  # a repeat of the newer
    assert s.available == 9


def test_a_dead_lettered_reservation_replays_once_however_late() -> None:
    s = set_aside(stock(10), "o1-r1", NOW)
    s, _ = apply_command(s, reserve("o2", 1), at(500))
    s, out = apply_command(s, reserve("o1", 2), at(900), replayed=True)
    assert isinstance(out, InventoryReserved) and s.reserved == 3 and s.pending == {}
    s, _ = apply_command(s, settle("o1", 2), at(900))
    s, _ = apply_command(s, reserve("o3", 0), at(950))  # o1's entry expires
    s, again = apply_command(s, reserve("o1", 2), at(999), replayed=True)
    assert again is None and s.reserved == 3


def test_a_replay_not_pending_changes_nothing() -> None:
    s, _ = apply_command(stock(10), reserve("o1", 2), W)
    s2, out = apply_command(s, reserve("o1", 2), at(1), replayed=True)
    assert s2 is s and isinstance(out, InventoryReserved)


def test_stock_set_is_absolute_and_applied_once() -> None:
    command = StockSet("set-1", "sku-1", 7, T0)
    s = apply_stock_set(Stock("sku-1", available=3), command)
    assert s.available == 7
    s, _ = reserve_line(s, reserve("o1", 2), W)
    assert apply_stock_set(s, command).available == 5  # a redelivered PUT changes nothing


def test_value_round_trips() -> None:
    s, _ = reserve_line(stock(5), reserve("o1", 2), W)
    s = set_aside(s, "x", NOW)
    assert Stock.from_value(s.to_value()) == s
    assert s.public() == {"sku": "sku-1", "available": 3, "reserved": 2}


def test_a_value_written_before_the_horizon_still_reads() -> None:
    old = {"sku": "s", "available": 1, "reserved": 2, "lines": {"o:1": "R", "p:1": "C"},
           "seen": ["set-1"]}  # fmt: skip
    s = Stock.from_value(old)
    assert s.lines == {"o:1": ("R", 0, ""), "p:1": ("C", 0, "")} and s.last_set is None


def test_a_line_expires_on_its_own_partition_clock_not_the_fastest_one() -> None:
    # Partition 1 works off a backlog behind partition 0: the SKU's latest time overall runs
    # far ahead of partition 1's, whose repeat must still find its line.
    s, _ = apply_command(stock(100), reserve("slow", 2, source="1"), W)
    s, _ = apply_command(s, settle("slow", 2, source="1"), W)
    for i in range(50):  # partition 0, 100 s ahead
        s, _ = apply_command(s, reserve(f"fast{i}", 1, source="0"), at(100 + i))
    s, again = apply_command(s, reserve("slow", 2, source="1"), at(3))  # the repeat, 3 s later
    assert isinstance(again, InventoryReserved) and s.reserved == 52
    # on partition 1's own clock, the horizon does pass
    s, _ = apply_command(s, reserve("later", 1, source="1"), at(30))
    assert "slow:1" not in s.lines and "fast49:1" in s.lines


def test_the_ledger_is_walked_only_when_a_clock_moves_and_drops_what_every_walk_would() -> None:
    """The ledger is pruned only when the command moves a partition's clock (once per second
    per partition on a hot SKU, not once per command). Entries expire only as clocks move, so
    after every command no settled entry older than the horizon on its partition's clock may
    remain, and every live reservation does: what pruning on every command kept."""
    rng = random.Random(14)
    s = stock(10**9)
    clock = {"0": 0, "1": 0, "2": 0}
    reserved: set[tuple[str, int]] = set()
    walks = 0
    for n in range(3000):
        part = rng.choice("012")
        clock[part] += rng.random() < 0.15  # a few commands per second per partition
        h = at(clock[part])
        order = f"o{n}"
        kind = rng.random()
        if kind < 0.5 or not reserved:
            command: object = reserve(order, 1, source=part)
        else:
            order, line = rng.choice(sorted(reserved))
            if kind < 0.8:
                command = settle(order, 1, line=line, source=part)
            else:
                command = LineReleaseRequested(
                    event_id=f"{order}-x{line}-cancelled", caused_by=order, order_id=order,
                    line_no=line, sku="sku-1", quantity=1, reason="cancelled", confirmed=False,
                    source=part,
                )  # fmt: skip
            reserved.discard((order, line))
        before = s
        s, _ = apply_command(s, command, h)  # type: ignore[arg-type]
        walks += s.clocks is not before.clocks
        if isinstance(command, LineReservationRequested) and s.lines[f"{order}:1"][0] == RESERVED:
            reserved.add((order, 1))
        for key, (state, seen, stream) in s.lines.items():
            assert state == RESERVED or seen >= s.clocks.get(stream, 0) - W.seconds, key
        live = {k for k, e in s.lines.items() if e[0] == RESERVED}
        assert live == {f"{o}:{ln}" for o, ln in reserved}
    assert walks < 3000 * 0.2  # the walk ran on about one command in seven
    assert len(s.lines) < 3000 / 3  # bounded by the horizon, not the history
