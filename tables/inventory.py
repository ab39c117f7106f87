"""Stock per SKU: the table, its value and its pure update rules.

Each SKU's value holds ``available`` and ``reserved`` units and a ledger of the order lines it
has seen, keyed ``"<order_id>:<line_no>"``:

- ``R``: reserved (the units are in ``reserved``);
- ``X``: rejected (not enough stock; nothing was taken);
- ``C``: reserved, then released (cancelled order, or a rejected order's compensation);
- ``T``: released before its reservation arrived (a tombstone: the reservation, when it
  comes, takes nothing).

The ledger is the dedupe state and lives in the same value as the counts it guards (one
changelog record per change). Live reservations (``R``) are kept until released; settled
entries beyond ``window`` are dropped, oldest first. ``StockSet`` ids are remembered in
``seen`` the same way.

Invariant: ``available + reserved`` equals the last stock set plus nothing else, and
``reserved`` is the sum of the lines in state ``R``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.app import app, settings
from pipeline.events import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    LineReleaseRequested,
    LineReservationRequested,
    OrderLineRef,
    StockSet,
    derived_event_id,
)
from tables import versions

RESERVED, REJECTED, RELEASED, TOMBSTONE = "R", "X", "C", "T"
SETTLED = {REJECTED, RELEASED, TOMBSTONE}

Outcome = InventoryReserved | InventoryRejected | InventoryReleased


@dataclass(frozen=True, slots=True)
class Stock:
    sku: str
    available: int = 0
    reserved: int = 0
    lines: dict[str, str] = field(default_factory=dict)
    seen: tuple[str, ...] = ()
    # Of the stored value this was read from (tables.versions); not part of what it says.
    version: int = field(default=0, compare=False)

    def to_value(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "available": self.available,
            "reserved": self.reserved,
            "lines": self.lines,
            "seen": list(self.seen),
        }

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> Stock:
        return cls(
            sku=value["sku"],
            available=value["available"],
            reserved=value["reserved"],
            lines=dict(value["lines"]),
            seen=tuple(value["seen"]),
            version=value.get(versions.VERSION, 0),
        )

    def public(self) -> dict[str, Any]:
        """The body of ``GET /inventory/{sku}``."""
        return {"sku": self.sku, "available": self.available, "reserved": self.reserved}


def _line_key(order_id: str, line_no: int) -> str:
    return f"{order_id}:{line_no}"


def _bounded(lines: dict[str, str], window: int) -> dict[str, str]:
    """Drop the oldest settled entries beyond ``window``; live reservations always stay."""
    excess = len(lines) - window
    if excess <= 0:
        return lines
    kept = dict(lines)
    for key, state in lines.items():
        if excess <= 0:
            break
        if state in SETTLED:
            del kept[key]
            excess -= 1
    return kept


def apply_stock_set(stock: Stock, command: StockSet, window: int) -> Stock:
    if command.event_id in stock.seen:
        return stock
    return replace(
        stock, available=command.available, seen=(*stock.seen, command.event_id)[-window:]
    )


def reserve_line(
    stock: Stock, request: LineReservationRequested, window: int
) -> tuple[Stock, Outcome | None]:
    """Reserve one order line if the stock allows, else reject it. A repeat of the same line
    changes nothing and answers what the first delivery answered."""
    key = _line_key(request.order_id, request.line_no)
    state = stock.lines.get(key)
    if state == TOMBSTONE:
        return stock, None
    if state in (RESERVED, RELEASED):
        return stock, _reserved(request)
    if state == REJECTED:
        return stock, _rejected(request, stock.available)
    if request.quantity <= stock.available:
        updated = replace(
            stock,
            available=stock.available - request.quantity,
            reserved=stock.reserved + request.quantity,
            lines=_bounded({**stock.lines, key: RESERVED}, window),
        )
        return updated, _reserved(request)
    updated = replace(stock, lines=_bounded({**stock.lines, key: REJECTED}, window))
    return updated, _rejected(request, stock.available)


def release_line(
    stock: Stock, request: LineReleaseRequested, window: int
) -> tuple[Stock, Outcome | None]:
    """Give back what one order line reserved; a release that arrives before its reservation
    leaves a tombstone so the reservation takes nothing."""
    key = _line_key(request.order_id, request.line_no)
    state = stock.lines.get(key)
    if state == RESERVED:
        updated = replace(
            stock,
            available=stock.available + request.quantity,
            reserved=stock.reserved - request.quantity,
            lines=_bounded({**stock.lines, key: RELEASED}, window),
        )
        return updated, _released(request)
    if state == RELEASED:
        return stock, _released(request)
    if state is None:
        return replace(stock, lines=_bounded({**stock.lines, key: TOMBSTONE}, window)), None
    return stock, None  # rejected lines took nothing; tombstones are already settled


def _reserved(r: LineReservationRequested) -> InventoryReserved:
    return InventoryReserved(**_answer(r, InventoryReserved.event_type))


def _rejected(r: LineReservationRequested, available: int) -> InventoryRejected:
    return InventoryRejected(**_answer(r, InventoryRejected.event_type), available=available)


def _answer(r: LineReservationRequested, answer_type: str) -> dict[str, Any]:
    """The answer's fields: the request's line, under an id computed from the request."""
    fields = {f.name: getattr(r, f.name) for f in dataclasses.fields(OrderLineRef)}
    fields.update(event_id=derived_event_id(r.event_id, answer_type), caused_by=r.event_id)
    return fields


def _released(r: LineReleaseRequested) -> InventoryReleased:
    return InventoryReleased(
        event_id=derived_event_id(f"{r.order_id}:{r.line_no}", InventoryReleased.event_type),
        caused_by=r.event_id, order_id=r.order_id, line_no=r.line_no, sku=r.sku,
        quantity=r.quantity,
    )  # fmt: skip


# Keys are raw SKU bytes, as on inventory.commands (see tables.customer_stats on routing).
stock_table = app.Table(
    "stock",
    key_type=bytes,
    # Values are our own JSON bytes: Faust's json codec cost more than the encoding itself.
    value_type=bytes,
    partitions=settings.partitions,
    help="Available and reserved units per SKU, with the ledger of order lines seen.",
)


def read_stock(sku: str) -> Stock | None:
    value = versions.stored(stock_table, sku.encode())
    return None if value is None else Stock.from_value(json.loads(value))


async def write_stock(stock: Stock) -> None:
    await versions.write(stock_table, stock.sku.encode(), stock.version + 1, stock.to_value())


async def resend_stock(sku: str) -> None:
    """The stored stock to the changelog again, for a command it already reflects
    (:func:`tables.versions.resend`)."""
    await versions.resend(stock_table, sku.encode())
