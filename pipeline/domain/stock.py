"""Stock per SKU: the table, its value and its pure update rules.

Each SKU's value holds ``available`` and ``reserved`` units and a ledger of the order lines it
has seen, keyed ``"<order_id>:<line_no>"``, each entry ``[state, time]``:

- ``R``: reserved, order not yet confirmed (the units are in ``reserved``);
- ``S``: reserved for a confirmed order (settled: the units stay in ``reserved``);
- ``X``: rejected (not enough stock; nothing was taken);
- ``C``: reserved, then released (cancelled order, or a rejected order's compensation);
- ``T``: released before its reservation arrived (a tombstone: the reservation, when it
  comes, takes nothing).

The ledger is the dedupe state and lives in the same value as the counts it guards (one
changelog record per change). Its size does not grow with the SKU's history
(:mod:`pipeline.domain.horizon`): ``R`` entries are the lines of orders in flight; once the order is
confirmed (``LineSettled``) or the line otherwise settles, the entry is kept for the dedupe
horizon and then dropped. A cancellation that arrives after a confirmed line's entry is gone
still releases it, because the cancellation says the order was confirmed (every line reserved).
Stock sets are ordered by their time (``set``: the latest applied), so a retried older set
never overwrites a newer one. Commands that were dead-lettered are ``pending`` until replayed.

Invariant: ``available + reserved`` equals the last stock set plus nothing else, and
``reserved`` is the sum of the lines reserved for orders not cancelled nor rejected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pipeline.domain.events import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    LineReleaseRequested,
    LineReservationRequested,
    LineSettled,
    OrderLineRef,
    StockSet,
    derived_event_id,
)
from pipeline.domain.horizon import Horizon, prune_times
from pipeline.domain.values import VERSION

RESERVED, SETTLED, REJECTED, RELEASED, TOMBSTONE = "R", "S", "X", "C", "T"
TAKEN = {RESERVED, SETTLED}  # the line's units are in ``reserved``

Outcome = InventoryReserved | InventoryRejected | InventoryReleased
StockCommand = LineReservationRequested | LineReleaseRequested | LineSettled | StockSet


@dataclass(frozen=True, slots=True)
class Stock:
    sku: str
    available: int = 0
    reserved: int = 0
    # line key -> [state, time the entry took that state, the order's stream]
    lines: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    # the latest stock set applied: (set_at ISO time, its event id), or None
    last_set: tuple[str, str] | None = None
    # ids of commands dead-lettered and not applied since -> when (replays apply only these)
    pending: dict[str, int] = field(default_factory=dict)
    # stream (the orders.events partition a line's commands derive from) -> the latest record
    # time seen from it: each line's entry expires on its own stream's clock (see _settle)
    clocks: dict[str, int] = field(default_factory=dict)
    # Of the stored value this was read from (pipeline.streaming.versions); not part of what it
    # says.
    version: int = field(default=0, compare=False)

    def to_value(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "available": self.available,
            "reserved": self.reserved,
            "set": None if self.last_set is None else list(self.last_set),
            "clocks": self.clocks,
            "pending": self.pending,
            "lines": self.lines,  # (state, time, stream) tuples encode as JSON arrays
        }

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> Stock:
        last_set = value.get("set")
        return cls(
            sku=value["sku"],
            available=value["available"],
            reserved=value["reserved"],
            lines={key: _entry(entry) for key, entry in value["lines"].items()},
            last_set=None if last_set is None else (last_set[0], last_set[1]),
            pending=dict(value.get("pending", {})),
            clocks=dict(value.get("clocks", {})),
            version=value.get(VERSION, 0),
        )

    def weight(self) -> int:
        """What its encoded size grows with (``pipeline.streaming.versions`` estimates the size from
        it)."""
        return 1 + len(self.lines) + len(self.pending) + len(self.clocks)

    def public(self) -> dict[str, Any]:
        """The body of ``GET /inventory/{sku}``."""
        return {"sku": self.sku, "available": self.available, "reserved": self.reserved}


def _entry(entry: Any) -> tuple[str, int, str]:
    # Values written before the horizon held a bare state; they count as settled long ago.
    if isinstance(entry, str):
        return entry, 0, ""
    return entry[0], int(entry[1]), str(entry[2]) if len(entry) > 2 else ""


def _line_key(order_id: str, line_no: int) -> str:
    return f"{order_id}:{line_no}"


def _settle(
    stock: Stock,
    key: str,
    state: str,
    h: Horizon,
    stream: str,
    taken: int = 0,
    *,
    prune: bool = True,
) -> Stock:
    """``stock`` with line ``key`` in ``state`` from now, and every settled entry older than
    the horizon dropped (live reservations stay, whatever their age).

    Age is measured on each entry's own stream: every command about a line derives from its order's
    events, which come from one ``orders.events`` partition in order and carry their time downstream
    (``pipeline.streaming.delivery.cause_time``). A SKU hears from every partition, and one
    partition can run far ahead of another (a backlog worked off unevenly): measured on the SKU's
    latest time overall, a lagging partition's repeat would find its line expired.

    An entry expires only when the clock of its stream moves, so ``prune=False`` (no clock
    moved since the value was last pruned: :func:`apply_command` knows) skips the walk over
    the ledger and drops exactly what the walk would have dropped: nothing. Clocks are whole
    seconds, so a hot SKU walks its ledger about once per second per partition, not once per
    command.
    """
    clocks, seconds = stock.clocks, h.seconds
    if prune:
        lines = {
            k: entry
            for k, entry in stock.lines.items()
            if entry[0] == RESERVED or entry[1] >= clocks.get(entry[2], 0) - seconds or k == key
        }
    else:
        lines = dict(stock.lines)
    lines[key] = (state, clocks.get(stream, h.now), stream)
    return replace(stock, lines=lines, available=stock.available - taken,
                   reserved=stock.reserved + taken)  # fmt: skip


def apply_command(
    stock: Stock, command: StockCommand, h: Horizon, *, replayed: bool = False
) -> tuple[Stock, Outcome | None]:
    """Apply one command once; ``replayed`` says it comes from a dead-letter replay, which is
    applied only while its id is pending. Returns the new stock and the line's answer (the
    first delivery's answer again for a repeat, when the ledger still holds the line)."""
    stream = getattr(command, "source", "")
    clock = max(stock.clocks.get(stream, 0), h.now)
    clocks = stock.clocks if stock.clocks.get(stream) == clock else {**stock.clocks, stream: clock}
    h = Horizon(max(clock, *clocks.values()), h.seconds, h.replay_seconds)  # for pending
    pending = stock.pending
    if replayed and command.event_id not in pending:
        if isinstance(command, StockSet | LineSettled):
            return stock, None
        return stock, _answer_again(stock, command)
    if command.event_id in pending or (pending and min(pending.values()) < h.replay_cutoff):
        pending = prune_times(
            {k: at for k, at in pending.items() if k != command.event_id}, h.replay_cutoff
        )
    base = replace(stock, pending=pending, clocks=clocks)
    prune = clocks is not stock.clocks  # a clock moved: entries may have expired
    if isinstance(command, StockSet):
        updated: Stock = apply_stock_set(base, command)
        outcome: Outcome | None = None
    elif isinstance(command, LineReservationRequested):
        updated, outcome = reserve_line(base, command, h, prune=prune)
    elif isinstance(command, LineSettled):
        updated, outcome = settle_line(base, command, h, prune=prune), None
    else:
        updated, outcome = release_line(base, command, h, prune=prune)
    # A value that only moved a clock is not worth a changelog record. By identity: each rule
    # returns the value it was given when it changes nothing, and comparing a hot SKU's
    # 8,000-entry ledger for equality on every command was 3% of its worker.
    if updated is base and pending is stock.pending:
        return stock, outcome
    return updated, outcome


def set_aside(stock: Stock, command_id: str, at: int, line: tuple[str, int] | None = None) -> Stock:
    """Note a dead-lettered command as pending, so its replay applies it (once); not when the
    ledger shows its ``line`` (order id, line number) already applied."""
    if command_id in stock.pending:
        return stock
    if line is not None and _line_key(*line) in stock.lines:
        return stock
    return replace(stock, pending={**stock.pending, command_id: at})


def apply_stock_set(stock: Stock, command: StockSet) -> Stock:
    """Set ``available`` unless a later set was applied already (sets are ordered by their
    time, then id): a retried or replayed older set never overwrites a newer one."""
    mark = (command.set_at.isoformat(), command.event_id)
    if stock.last_set is not None and _set_order(mark) <= _set_order(stock.last_set):
        return stock
    return replace(stock, available=command.available, last_set=mark)


def _set_order(mark: tuple[str, str]) -> tuple[datetime, str]:
    return datetime.fromisoformat(mark[0]), mark[1]


def reserve_line(
    stock: Stock, request: LineReservationRequested, h: Horizon, *, prune: bool = True
) -> tuple[Stock, Outcome | None]:
    """Reserve one order line if the stock allows, else reject it. A repeat of the same line
    changes nothing and answers what the first delivery answered."""
    key = _line_key(request.order_id, request.line_no)
    entry = stock.lines.get(key)
    if entry is not None:
        return stock, _repeat_answer(entry[0], request, stock)
    if request.quantity <= stock.available:
        taken = _settle(stock, key, RESERVED, h, request.source, request.quantity, prune=prune)
        return taken, _reserved(request)
    rejected = _settle(stock, key, REJECTED, h, request.source, prune=prune)
    return rejected, _rejected(request, stock.available)


def _repeat_answer(state: str, request: LineReservationRequested, stock: Stock) -> Outcome | None:
    if state == TOMBSTONE:
        return None
    if state == REJECTED:
        return _rejected(request, stock.available)
    return _reserved(request)


def _answer_again(stock: Stock, command: StockCommand) -> Outcome | None:
    if isinstance(command, LineReservationRequested):
        entry = stock.lines.get(_line_key(command.order_id, command.line_no))
        return None if entry is None else _repeat_answer(entry[0], command, stock)
    if isinstance(command, LineReleaseRequested):
        entry = stock.lines.get(_line_key(command.order_id, command.line_no))
        return _released(command) if entry is not None and entry[0] == RELEASED else None
    return None


def settle_line(stock: Stock, command: LineSettled, h: Horizon, *, prune: bool = True) -> Stock:
    """The line's order is confirmed: its reservation stays, its entry now expires with the
    horizon (a cancellation of a confirmed order releases it without the entry)."""
    key = _line_key(command.order_id, command.line_no)
    entry = stock.lines.get(key)
    if entry is None or entry[0] != RESERVED:
        return stock  # settled, released or never reserved: nothing to do
    return _settle(stock, key, SETTLED, h, command.source, prune=prune)


def release_line(
    stock: Stock, request: LineReleaseRequested, h: Horizon, *, prune: bool = True
) -> tuple[Stock, Outcome | None]:
    """Give back what one order line reserved; a release that arrives before its reservation
    leaves a tombstone so the reservation takes nothing. A release of a confirmed order's line
    whose entry has expired gives back the line's quantity: confirmed means reserved."""
    key = _line_key(request.order_id, request.line_no)
    entry = stock.lines.get(key)
    state = None if entry is None else entry[0]
    if state in TAKEN or (state is None and request.confirmed):
        released = _settle(stock, key, RELEASED, h, request.source, -request.quantity,
                           prune=prune)  # fmt: skip
        return released, _released(request)
    if state == RELEASED:
        return stock, _released(request)
    if state is None:
        return _settle(stock, key, TOMBSTONE, h, request.source, prune=prune), None
    return stock, None  # rejected lines took nothing; tombstones are already settled


def _reserved(r: LineReservationRequested) -> InventoryReserved:
    return InventoryReserved(**_answer(r, InventoryReserved.event_type))


def _rejected(r: LineReservationRequested, available: int) -> InventoryRejected:
    return InventoryRejected(**_answer(r, InventoryRejected.event_type), available=available)


def _answer(r: LineReservationRequested, answer_type: str) -> dict[str, Any]:
    """The answer's fields: the request's line, under an id computed from the request."""
    fields = {f.name: getattr(r, f.name) for f in dataclasses.fields(OrderLineRef)}
    fields.update(event_id=derived_event_id(r.event_id, answer_type), caused_by=r.event_id,
                  source=r.source)  # fmt: skip
    return fields


def _released(r: LineReleaseRequested) -> InventoryReleased:
    return InventoryReleased(
        event_id=derived_event_id(f"{r.order_id}:{r.line_no}", InventoryReleased.event_type),
        caused_by=r.event_id, order_id=r.order_id, line_no=r.line_no, sku=r.sku,
        quantity=r.quantity,
    )  # fmt: skip
