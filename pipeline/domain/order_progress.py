"""Per-order progress through inventory: which lines were reserved or rejected, and the
decision. Keyed by order id, like ``inventory.events``.

An order is confirmed when every line is reserved and rejected as soon as one line is; the
decision never changes. Once settled (decided, every line answered) and its effects are done,
the order's entry is deleted, so the table holds the orders in flight; a late duplicate of an
outcome then re-creates a small entry that can only repeat idempotent effects. Lines reserved
for a rejected order are released (compensation), including those whose reservation arrives
after the decision. Line outcomes are the dedupe state, in the same value as the decision they
drive.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.domain.events import (
    InventoryRejected,
    InventoryReserved,
    LineReleaseRequested,
    LineSettled,
    OrderConfirmed,
    OrderRejected,
    derived_event_id,
)
from pipeline.domain.values import VERSION

CONFIRMED, REJECTED = "confirmed", "rejected"


@dataclass(frozen=True, slots=True)
class OrderProgress:
    order_id: str
    customer_id: str
    customer_email: str
    line_count: int
    # line number -> [sku, quantity, "R" (reserved) or "X" (rejected)]
    lines: dict[int, tuple[str, int, str]] = field(default_factory=dict)
    decision: str | None = None
    reason: str = ""
    # the orders.events partition of the order's events, passed on to what this sends the
    # stock keepers (LineReservationRequested.source)
    source: str = ""
    # Of the stored value this was read from (pipeline.streaming.versions); not part of what it
    # says.
    version: int = field(default=0, compare=False)

    def to_value(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "customer_email": self.customer_email,
            "line_count": self.line_count,
            "lines": {str(n): list(v) for n, v in self.lines.items()},
            "decision": self.decision,
            "reason": self.reason,
            "source": self.source,
        }

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> OrderProgress:
        return cls(
            order_id=value["order_id"],
            customer_id=value["customer_id"],
            customer_email=value["customer_email"],
            line_count=value["line_count"],
            lines={int(n): (v[0], int(v[1]), v[2]) for n, v in value["lines"].items()},
            decision=value["decision"],
            reason=value["reason"],
            source=value.get("source", ""),
            version=value.get(VERSION, 0),
        )


def apply_outcome(
    progress: OrderProgress | None, outcome: InventoryReserved | InventoryRejected
) -> OrderProgress:
    """Record one line's outcome (the first one for a line wins) and decide when possible."""
    current = progress or OrderProgress(
        outcome.order_id, outcome.customer_id, outcome.customer_email, outcome.line_count,
        source=outcome.source,
    )  # fmt: skip
    if outcome.line_no in current.lines:
        return current
    mark = "R" if isinstance(outcome, InventoryReserved) else "X"
    lines = {**current.lines, outcome.line_no: (outcome.sku, outcome.quantity, mark)}
    updated = replace(current, lines=lines)
    if updated.decision is None:
        if mark == "X":
            assert isinstance(outcome, InventoryRejected)
            updated = replace(
                updated,
                decision=REJECTED,
                reason=f"not enough stock of {outcome.sku}: {outcome.quantity} asked, "
                f"{outcome.available} available",
            )
        elif len(lines) == updated.line_count and all(v[2] == "R" for v in lines.values()):
            updated = replace(updated, decision=CONFIRMED)
    return updated


def settled(progress: OrderProgress) -> bool:
    """Decided, and every line has answered: nothing more can change this order."""
    return progress.decision is not None and len(progress.lines) == progress.line_count


def compensations(progress: OrderProgress) -> list[LineReleaseRequested]:
    """Releases for every reserved line of a rejected order (sent again on repeats: the stock
    keeper releases a line once)."""
    if progress.decision != REJECTED:
        return []
    return [
        LineReleaseRequested(
            event_id=derived_event_id(f"{progress.order_id}:{n}", "CompensationRequested"),
            caused_by=progress.order_id,
            order_id=progress.order_id,
            line_no=n,
            sku=sku,
            quantity=qty,
            reason="rejected",
            source=progress.source,
        )
        for n, (sku, qty, mark) in sorted(progress.lines.items())
        if mark == "R"
    ]


def settlements(progress: OrderProgress) -> list[LineSettled]:
    """For a confirmed order, one ``LineSettled`` per line: the stock keepers may forget the
    lines after the dedupe horizon (sent again on repeats: settling is idempotent)."""
    if progress.decision != CONFIRMED:
        return []
    return [
        LineSettled(
            event_id=derived_event_id(f"{progress.order_id}:{n}", LineSettled.event_type),
            caused_by=progress.order_id,
            order_id=progress.order_id,
            line_no=n,
            sku=sku,
            quantity=qty,
            source=progress.source,
        )
        for n, (sku, qty, _) in sorted(progress.lines.items())
    ]


def decision_event(progress: OrderProgress) -> OrderConfirmed | OrderRejected | None:
    if progress.decision == CONFIRMED:
        return OrderConfirmed(
            event_id=derived_event_id(progress.order_id, OrderConfirmed.event_type),
            order_id=progress.order_id,
            customer_id=progress.customer_id,
            customer_email=progress.customer_email,
        )
    if progress.decision == REJECTED:
        return OrderRejected(
            event_id=derived_event_id(progress.order_id, OrderRejected.event_type),
            order_id=progress.order_id,
            customer_id=progress.customer_id,
            customer_email=progress.customer_email,
            reason=progress.reason,
        )
    return None
