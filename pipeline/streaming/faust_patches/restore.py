"""Not a bug but a cost: table recovery one record at a time, found by ``bench/recovery.py``.

Faust restores a table from its changelog record by record (faust-streaming 0.15.3): the
consumer makes a message of each fetched record (``Consumer.getmany``), hands it over through
the fetcher's task and the conductor (``Consumer._drain_messages``, ``Conductor.on_message``),
which decodes it into an event for the changelog queue; ``Recovery._slurp_changelogs`` takes it
from there in a ``wait_for`` of its own, formats two debug lines, buffers it, and sums the
offsets still to read over every partition before the next one. A worker rebuilding
``customer_stats`` did about 15k keys/s, where Kafka's consumer tool reads the same changelog
at ten times that; the profile had the main thread in that per-record path, not in RocksDB.

:func:`_wait_next_records` takes the records of each fetch that belong to a changelog partition
being restored (active or standby) and applies them in one batch, straight from the fetch:
one ``apply_changelog_batch`` of the table per partition and fetch, so one RocksDB write batch,
through the table's store (our version check included). It does what the stock path does for
them: records at or below the offset recovery has read, or below the fetcher's read offset, are
skipped, and recovery's offset for the partition moves to the last record applied. That last
record still goes the stock way, so recovery's own loop sees the partition move: it finds the
record already read (not applied twice), and ends recovery, or declares standbys ready, as it
would have. Records of other partitions, tables with a changelog callback or a store other than
Faust's RocksDB one, and a fetch whose batch fails to apply are left to Faust.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import faust.stores.rocksdb as faust_rocksdb
import faust.transport.consumer as faust_consumer
from faust.types import TP

log = logging.getLogger(__name__)

STOCK_WAIT_NEXT_RECORDS = faust_consumer.Consumer._wait_next_records

# Records applied here since the process started, by table name (``GET /metrics``).
restored: Counter[str] = Counter()


class _Change:
    """A fetched changelog record as a store's ``apply_changelog_batch`` reads an event: its
    ``message`` is itself, with the record's bytes as they came."""

    __slots__ = ("key", "offset", "partition", "topic", "tp", "value")

    def __init__(self, tp: TP, record: Any) -> None:
        self.tp, self.topic, self.partition = tp, tp.topic, tp.partition
        self.offset, self.key, self.value = record.offset, record.key, record.value

    @property
    def message(self) -> _Change:
        return self


async def _wait_next_records(self: Any, timeout: float) -> tuple[Any, Any]:  # noqa: ASYNC109
    """Faust's fetch, with the records of changelog partitions being restored applied here."""
    records, active = await STOCK_WAIT_NEXT_RECORDS(self, timeout)
    recovery = self.app.tables._recovery
    if records and recovery is not None and self.flow_active and not self.should_stop:
        return restore(self, recovery, records, active), active
    return records, active


def restore(consumer: Any, recovery: Any, records: Mapping[TP, Sequence[Any]],
            active: set[TP] | None) -> dict[TP, Sequence[Any]]:  # fmt: skip
    """Apply the records of each partition being restored in one batch; the records left to
    Faust's per-record path (for restored partitions, only the last one)."""
    left: dict[TP, Sequence[Any]] = {}
    for tp, batch in records.items():
        table = _restored_table(recovery, tp)
        fetching = active is None or tp in active or tp in consumer._buffered_partitions
        if table is None or not fetching or len(batch) < 2:
            left[tp] = batch
            continue
        try:
            _apply(consumer, recovery, table, tp, batch)
        except Exception:  # Faust's per-record path gets them, as it would have
            log.exception("%s: batched restore of %s failed; restoring one by one", table, tp)
            left[tp] = batch
            continue
        left[tp] = batch[-1:]  # already applied: recovery's loop only sees the offset move
    return left


def _restored_table(recovery: Any, tp: TP) -> Any:
    """The table ``tp`` restores, when its records can skip the per-record path."""
    if tp not in recovery.active_tps and tp not in recovery.standby_tps:
        return None
    table = recovery.tp_to_table.get(tp)
    if table is None or table._on_changelog_event is not None:
        return None
    return table if isinstance(table.data, faust_rocksdb.Store) else None


def _apply(consumer: Any, recovery: Any, table: Any, tp: TP, batch: Sequence[Any]) -> None:
    active = tp in recovery.active_tps
    offsets = recovery.active_offsets if active else recovery.standby_offsets
    seen = offsets.get(tp)
    read = consumer._read_offset.get(tp)
    floor = max(-1 if seen is None else seen, -1 if read is None else read - 1)
    changes = [_Change(tp, record) for record in batch if record.offset > floor]
    if not changes:
        return
    started = time.monotonic()
    pending = recovery.buffers.get(table)
    if pending:  # records buffered by Faust's own loop go first, in offset order
        table.apply_changelog_batch(pending)
        pending.clear()
    table.apply_changelog_batch(changes)
    offsets[tp] = changes[-1].offset
    restored[table.name] += len(changes)
    now = time.monotonic()
    if active:  # per-record times for recovery's remaining-time estimate
        recovery._active_events_received_at[tp] = now
        times = recovery._processing_times
        times.append((now - started) / len(changes))
        while len(times) > recovery.num_samples_required_for_estimate:
            times.popleft()
        recovery._last_active_event_processed_at = now
    else:
        recovery._standby_events_received_at[tp] = now
    recovery._last_flush_at = now


def install() -> None:
    faust_consumer.Consumer._wait_next_records = _wait_next_records  # type: ignore[method-assign]
