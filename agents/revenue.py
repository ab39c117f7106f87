"""Revenue windows: consumes the one-partition revenue topic, one owner for all windows.

Guarantees: each revenue record counts once in its window (ids in the window's value).
"""

from __future__ import annotations

import faust

from pipeline.app import app
from pipeline.consume import consume
from pipeline.events import RevenueRecorded
from pipeline.topics import agent_source
from tables.revenue import REVENUE_KEY, Window, apply_revenue, revenue_table


async def add_to_window(record: RevenueRecorded) -> None:
    current = Window.from_value(revenue_table[REVENUE_KEY].current())
    updated, applied = apply_revenue(current, record)
    if applied:
        revenue_table[REVENUE_KEY] = updated.to_value()


@app.agent(agent_source("revenue"), concurrency=1)
async def revenue_windows(stream: faust.StreamT[bytes]) -> None:
    await consume(stream, "revenue", add_to_window, RevenueRecorded)
