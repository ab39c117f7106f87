"""Revenue windows: consumes the one-partition revenue topic, one owner for all windows.

Guarantees: each revenue record counts once in its window (the window keeps the ids applied
within the dedupe horizon, ``tables.revenue``); a dead-lettered record is pending in its
window, and its replay counts once.
"""

from __future__ import annotations

import weakref
from typing import Any

import faust
import faust.streams
from faust.streams import current_event

from pipeline.app import app
from pipeline.domain.events import RevenueRecorded
from pipeline.domain.horizon import MAX_VALUE_BYTES, ValueTooLarge
from pipeline.domain.revenue import REVENUE_KEY, Window, apply_revenue, set_aside
from pipeline.streaming import delivery, faust_patches
from pipeline.streaming.consume import consume
from pipeline.streaming.topics import agent_source
from tables.revenue import revenue_table

# Write-behind, as ``pipeline.streaming.versions`` does for the other tables. The revenue windows
# have one owner, and every revenue record changes the current window, whose value holds the ids of
# the dedupe horizon: decoding and re-encoding it whole per record was most of this worker's time at
# a hundred orders a second. The owner keeps its windows decoded here and writes each one changed to
# the table (Faust's windowed path, as the record that last changed it) once per offset commit,
# before Faust picks the offsets; a revoked partition drops them all.
KEPT_WINDOWS = 8
_windows: dict[Any, tuple[Window, Any]] = {}  # window range -> (window, last event to change it)
_dirty: set[Any] = set()
# A window's encoded size grows by about this much per id it holds (a 16-character digest, its
# share of the time it is grouped under: 17 measured), checked before the write rather than
# refused by the broker.
BYTES_PER_ID = 20


def _current() -> tuple[Any, Window]:
    event = current_event()
    window = revenue_table.table.window
    assert window is not None  # a tumbling table
    window_range = window.current(revenue_table.get_timestamp(event))
    cached = _windows.get(window_range)
    if cached is not None:
        return window_range, cached[0]
    return window_range, Window.from_value(revenue_table[REVENUE_KEY].current())


def _stage(window_range: Any, window: Window) -> None:
    size = BYTES_PER_ID * (window.seen_count() + len(window.pending)) + 200
    if size > MAX_VALUE_BYTES:
        raise ValueTooLarge(
            f"revenue window {window_range}: about {size:,} bytes, over {MAX_VALUE_BYTES:,}: "
            "more records within the dedupe horizon than one window holds; shorten "
            "PIPELINE_DEDUPE_HORIZON_SECONDS"
        )
    _windows.pop(window_range, None)
    _windows[window_range] = (window, current_event())
    _dirty.add(window_range)
    for old in [r for r in _windows if r not in _dirty][: max(0, len(_windows) - KEPT_WINDOWS)]:
        del _windows[old]


async def flush() -> None:
    """Write each window changed since the last commit, as the record that last changed it."""
    for window_range in list(_dirty):
        window, event = _windows[window_range]
        token = faust.streams._current_event.set(weakref.ref(event))
        try:
            revenue_table[REVENUE_KEY] = window.to_value()
        finally:
            faust.streams._current_event.reset(token)
    _dirty.clear()


def forget(partitions: set[int]) -> None:
    if 0 in partitions:  # the topic's only partition: the windows are another worker's now
        _windows.clear()
        _dirty.clear()


faust_patches.before_commit(flush)
faust_patches.on_revoked(forget)


async def add_to_window(record: RevenueRecorded) -> None:
    window_range, current = _current()
    updated, applied = apply_revenue(
        current, record, delivery.horizon(), replayed=delivery.is_replay()
    )
    if applied:
        _stage(window_range, updated)


async def note_dead_letter(message: Any) -> None:
    """The record's window (by its time, which the dead letter keeps) notes it as pending."""
    record_id = delivery.event_id(message)
    if record_id is None:
        return
    window_range, current = _current()
    noted = set_aside(current, record_id)
    if noted is not current:
        _stage(window_range, noted)


@app.agent(agent_source("revenue"), concurrency=1)
async def revenue_windows(stream: faust.StreamT[bytes]) -> None:
    await consume(stream, "revenue", add_to_window, RevenueRecorded,
                  on_dead_letter=note_dead_letter)  # fmt: skip
