"""Revenue windows: consumes the one-partition revenue topic, one owner for all windows.

Guarantees: each revenue record counts once in its window (the window keeps the ids applied
within the dedupe horizon, ``tables.revenue``); a dead-lettered record is pending in its
window, and its replay counts once.
"""

from __future__ import annotations

from typing import Any

import faust

from pipeline.app import app
from pipeline.consume import consume
from pipeline.events import RevenueRecorded
from pipeline.topics import agent_source
from tables import delivery
from tables.revenue import REVENUE_KEY, Window, apply_revenue, revenue_table, set_aside


async def add_to_window(record: RevenueRecorded) -> None:
    current = Window.from_value(revenue_table[REVENUE_KEY].current())
    updated, applied = apply_revenue(
        current, record, delivery.horizon(), replayed=delivery.is_replay()
    )
    if applied:
        revenue_table[REVENUE_KEY] = updated.to_value()


async def note_dead_letter(message: Any) -> None:
    """The record's window (by its time, which the dead letter keeps) notes it as pending."""
    record_id = delivery.event_id(message)
    if record_id is None:
        return
    current = Window.from_value(revenue_table[REVENUE_KEY].current())
    noted = set_aside(current, record_id)
    if noted is not current:
        revenue_table[REVENUE_KEY] = noted.to_value()


@app.agent(agent_source("revenue"), concurrency=1)
async def revenue_windows(stream: faust.StreamT[bytes]) -> None:
    await consume(stream, "revenue", add_to_window, RevenueRecorded,
                  on_dead_letter=note_dead_letter)  # fmt: skip
