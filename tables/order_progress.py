"""The order_progress table (see :mod:`pipeline.domain.order_progress` for its value and rules)."""

from __future__ import annotations

from pipeline.app import app, settings
from pipeline.domain.order_progress import OrderProgress
from pipeline.streaming.versioned_table import VersionedTable

order_progress_table = app.Table(
    "order_progress",
    key_type=bytes,
    # Values are our own JSON bytes: Faust's json codec cost more than the encoding itself.
    value_type=bytes,
    partitions=settings.partitions,
    help="Line outcomes and the inventory decision per order.",
)


order_progress: VersionedTable[OrderProgress] = VersionedTable(
    order_progress_table, lambda _key, fields: OrderProgress.from_value(fields),
    lambda progress: progress.order_id,
)  # fmt: skip
