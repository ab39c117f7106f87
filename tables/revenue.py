"""Revenue per tumbling window: a Faust windowed table on the one-partition revenue topic.

Each window's value holds its net revenue, its net order count and the ids of the revenue
records applied to it (the dedupe state, in the same value). Windows are assigned by the
record's Kafka timestamp, which the analytics agent sets to the time the order was created or
cancelled; they expire after ``PIPELINE_REVENUE_WINDOW_EXPIRES_SECONDS``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pipeline.app import app, settings
from pipeline.events import RevenueRecorded, money

REVENUE_KEY = "revenue"


@dataclass(frozen=True, slots=True)
class Window:
    revenue: Decimal = Decimal("0.00")
    orders: int = 0
    seen: tuple[str, ...] = ()

    def to_value(self) -> dict[str, Any]:
        return {"revenue": money(self.revenue), "orders": self.orders, "seen": list(self.seen)}

    @classmethod
    def from_value(cls, value: dict[str, Any] | None) -> Window:
        if not value:
            return cls()
        return cls(Decimal(value["revenue"]), value["orders"], tuple(value["seen"]))


def apply_revenue(window: Window, record: RevenueRecorded) -> tuple[Window, bool]:
    if record.event_id in window.seen:
        return window, False
    return (
        replace(
            window,
            revenue=window.revenue + record.amount,
            orders=window.orders + record.orders,
            seen=(*window.seen, record.event_id),
        ),
        True,
    )


revenue_table = (
    app.Table(
        "revenue",
        default=dict,
        partitions=1,
        help="Net revenue and order count per tumbling window.",
    )
    .tumbling(
        timedelta(seconds=settings.revenue_window_seconds),
        expires=timedelta(seconds=settings.revenue_window_expires_seconds),
    )
    .relative_to_stream()
)


def recent_windows(limit: int = 60) -> list[dict[str, Any]]:
    """The newest windows this worker holds, newest first (the owner holds them all)."""
    windows = []
    for key, value in revenue_table.table.items():
        name, (start, end) = key
        if name != REVENUE_KEY or not value:
            continue
        w = Window.from_value(value)
        windows.append(
            {
                "window_start": datetime.fromtimestamp(start, UTC).isoformat(),
                "window_end": datetime.fromtimestamp(round(end), UTC).isoformat(),
                "revenue": money(w.revenue),
                "orders": w.orders,
            }
        )
    windows.sort(key=lambda w: str(w["window_start"]), reverse=True)
    return windows[:limit]
