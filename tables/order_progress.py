"""The order_progress table (see :mod:`pipeline.domain.order_progress` for its value and rules)."""

from __future__ import annotations

import json

from pipeline.app import app, settings
from pipeline.domain.order_progress import OrderProgress
from pipeline.streaming import versions

order_progress_table = app.Table(
    "order_progress",
    key_type=bytes,
    # Values are our own JSON bytes: Faust's json codec cost more than the encoding itself.
    value_type=bytes,
    partitions=settings.partitions,
    help="Line outcomes and the inventory decision per order.",
)


def read_progress(order_id: str) -> OrderProgress | None:
    progress: OrderProgress | None = versions.read(order_progress_table, order_id.encode(), _decode)
    return progress


def _decode(raw: bytes) -> OrderProgress:
    return OrderProgress.from_value(json.loads(raw))


async def forget_progress(order_id: str) -> None:
    """Delete a settled order's entry, its tombstone sent the way its writes go
    (:func:`pipeline.streaming.versions.delete`), so the changelog's recovery mark moves over
    both."""
    await versions.delete(order_progress_table, order_id.encode())


async def write_progress(progress: OrderProgress) -> None:
    await versions.write(
        order_progress_table, progress.order_id.encode(), progress.version + 1, progress
    )


async def resend_progress(order_id: str) -> None:
    """The stored progress to the changelog again, for an outcome it already holds
    (:func:`pipeline.streaming.versions.resend`)."""
    await versions.resend(order_progress_table, order_id.encode())
