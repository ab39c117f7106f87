"""The revenue table (see :mod:`pipeline.domain.revenue` for its value and rules)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.app import app, settings
from pipeline.domain.events import money
from pipeline.domain.revenue import REVENUE_KEY, Window

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
