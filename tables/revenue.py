"""Revenue per tumbling window: a Faust windowed table on the one-partition revenue topic.

Each window's value holds its net revenue, its net order count and, per stream the analytics
agent reads (each partition of its source topic and of its redelivery topic), the highest
offset whose revenue record it applied (``marks``). A revenue record carries the position at
which the analytics agent first applied its cause, and every repeat of it (a crash, a
forwarder duplicate, a redelivery) carries the same position; the agent reads each stream in
offset order and sends its records in that order to this one partition, so a record at or
below its stream's mark is a repeat. The value's size is bounded by the number of streams,
whatever the number of records. Windows are assigned by the record's Kafka timestamp, which
the analytics agent sets to the time the order was created or cancelled, and which retries and
replays keep; they expire after ``PIPELINE_REVENUE_WINDOW_EXPIRES_SECONDS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    # stream ("s3": source partition 3, "r3": redelivery partition 3) -> highest offset applied
    marks: dict[str, int] = field(default_factory=dict)
    # ids of records dead-lettered here and not applied since: a replay applies only these
    pending: tuple[str, ...] = ()

    def to_value(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "revenue": money(self.revenue), "orders": self.orders, "marks": self.marks
        }  # fmt: skip
        if self.pending:
            value["pending"] = list(self.pending)
        return value

    @classmethod
    def from_value(cls, value: dict[str, Any] | None) -> Window:
        if not value:
            return cls()
        # Values written before the marks held the ids applied; their records are long past.
        return cls(
            Decimal(value["revenue"]),
            value["orders"],
            dict(value.get("marks", {})),
            tuple(value.get("pending", ())),
        )


def parse_position(position: str) -> tuple[str, int] | None:
    stream, at, offset = position.partition("@")
    if not at or not stream or not offset.isdigit():
        return None
    return stream, int(offset)


def apply_revenue(
    window: Window, record: RevenueRecorded, *, replayed: bool = False
) -> tuple[Window, bool]:
    """Add ``record`` once: a record at or below its stream's mark is a repeat. A record with
    no position (sent before positions existed) is added. A dead-letter replay is added only
    while its id is pending here (its stream has moved on since)."""
    parsed = parse_position(record.position)
    marks = window.marks
    pending = window.pending
    if replayed or record.event_id in pending:
        if record.event_id not in pending:
            return window, False
        pending = tuple(p for p in pending if p != record.event_id)
        if parsed is not None and parsed[1] > marks.get(parsed[0], -1):
            marks = {**marks, parsed[0]: parsed[1]}
    elif parsed is not None:
        stream, offset = parsed
        if offset <= marks.get(stream, -1):
            return window, False
        marks = {**marks, stream: offset}
    return (
        replace(
            window,
            revenue=window.revenue + record.amount,
            orders=window.orders + record.orders,
            marks=marks,
            pending=pending,
        ),
        True,
    )


def set_aside(window: Window, record_id: str) -> Window:
    """Note a dead-lettered record as pending in its window, so its replay adds it once.
    Bounded by the window's own life: windows expire."""
    if record_id in window.pending:
        return window
    return replace(window, pending=(*window.pending, record_id))


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
