"""Stock per SKU: reservations, rejections, releases and their ledger (pure rules)."""

from __future__ import annotations

import uuid

from pipeline.events import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    LineReleaseRequested,
    LineReservationRequested,
    StockSet,
)
from tables.inventory import Stock, apply_stock_set, release_line, reserve_line
from tests.conftest import T0

W = 100


def stock(available: int) -> Stock:
    return apply_stock_set(Stock("sku-1"), StockSet(str(uuid.uuid4()), "sku-1", available, T0), W)


def reserve(order: str, qty: int, line: int = 1, count: int = 1) -> LineReservationRequested:
    return LineReservationRequested(
        event_id=f"{order}-r{line}", caused_by=order, order_id=order, customer_id="c",
        customer_email="c@example.com", line_no=line, line_count=count, sku="sku-1", quantity=qty,
    )  # fmt: skip


def release(order: str, qty: int, line: int = 1, reason: str = "cancelled") -> LineReleaseRequested:
    return LineReleaseRequested(
        event_id=f"{order}-x{line}-{reason}", caused_by=order, order_id=order, line_no=line,
        sku="sku-1", quantity=qty, reason=reason,
    )  # fmt: skip


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


def test_ledger_keeps_live_reservations_and_drops_old_settled_lines() -> None:
    s = stock(1000)
    for i in range(10):
        s, _ = reserve_line(s, reserve(f"live{i}", 1), 5)
    for i in range(10):
        s, _ = reserve_line(s, reserve(f"big{i}", 10_000), 5)  # rejected: settled
    assert sum(1 for v in s.lines.values() if v == "R") == 10
    assert s.reserved == 10
    # settled entries are trimmed; live reservations are never dropped
    assert len(s.lines) <= 10 + 5


def test_stock_set_is_absolute_and_applied_once() -> None:
    command = StockSet("set-1", "sku-1", 7, T0)
    s = apply_stock_set(Stock("sku-1", available=3), command, W)
    assert s.available == 7
    s, _ = reserve_line(s, reserve("o1", 2), W)
    assert apply_stock_set(s, command, W).available == 5  # a redelivered PUT changes nothing


def test_value_round_trips() -> None:
    s, _ = reserve_line(stock(5), reserve("o1", 2), W)
    assert Stock.from_value(s.to_value()) == s
    assert s.public() == {"sku": "sku-1", "available": 3, "reserved": 2}
