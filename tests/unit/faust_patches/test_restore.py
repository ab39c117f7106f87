"""Tables restored one record at a time (:mod:`pipeline.streaming.faust_patches.restore`), on
Faust's own recovery bookkeeping and a real RocksDB store of ours."""

from __future__ import annotations

import inspect
import itertools
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.tables.recovery import Recovery
from faust.types import TP
from yarl import URL

from pipeline.app import app
from pipeline.domain.customer_stats import CustomerStats
from pipeline.streaming import versions
from pipeline.streaming.faust_patches import restore
from pipeline.streaming.versioned_store import VersionedRocksDBStore
from tables.customer_stats import customer_stats_table

_names = itertools.count()
CHANGELOG = TP(customer_stats_table.changelog_topic.get_topic_name(), 0)


class _Table:
    """What recovery reads of a table: its store, its changelog callback and Faust's
    ``Table.apply_changelog_batch`` (every call recorded)."""

    def __init__(self, store: Any) -> None:
        self.name, self.data, self._on_changelog_event = "customer_stats", store, None
        self.batches: list[list[int]] = []

    def apply_changelog_batch(self, batch: Any) -> None:
        batch = list(batch)
        self.batches.append([event.message.offset for event in batch])
        self.data.apply_changelog_batch(batch, to_key=None, to_value=None)


@pytest.fixture
def table() -> Iterator[_Table]:
    url = URL.build(scheme="rocksdb", path=f"restore-{next(_names)}")
    store = VersionedRocksDBStore(url, app, table=customer_stats_table)
    yield _Table(store)
    store._dbs.clear()


def _recovery(table: _Table, *, active: bool = True, seen: int | None = None) -> Any:
    """Faust's recovery, restoring ``CHANGELOG`` into ``table`` (read up to ``seen``)."""
    recovery = Recovery(app, tables=app.tables)
    recovery.tp_to_table[CHANGELOG] = table
    (recovery.active_tps if active else recovery.standby_tps).add(CHANGELOG)
    if seen is not None:
        (recovery.active_offsets if active else recovery.standby_offsets)[CHANGELOG] = seen
    return recovery


def _consumer(read_offset: int | None = None) -> Any:
    return SimpleNamespace(_read_offset={CHANGELOG: read_offset}, _buffered_partitions=set())


def _record(offset: int, key: bytes, value: bytes | None, tp: TP = CHANGELOG) -> Any:
    return SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=offset, key=key,
                           value=value)  # fmt: skip


def _stats(version: int, orders: int) -> bytes:
    return versions.encode(version, CustomerStats("c", order_count=orders).to_value())


def _stored(table: _Table, key: bytes) -> Any:
    raw = table.data._db_for_partition(0).get(key)
    return None if raw is None else json.loads(raw)


def test_fausts_recovery_skips_a_record_at_or_below_the_offset_it_has_read() -> None:
    """Pins what the patch relies on: the last record of a batch, left to Faust's loop after
    the batch moved recovery's offset past it, is read there but not applied again."""
    source = inspect.getsource(Recovery._slurp_changelogs.fun)
    assert "if seen_offset is None or offset > seen_offset:" in source
    assert "await _maybe_signal_recovery_end()" in source


def test_a_fetch_is_applied_in_one_batch_and_only_its_last_record_goes_to_faust(
    table: _Table,
) -> None:
    recovery = _recovery(table)
    fetched = [_record(n, f"c-{n}".encode(), _stats(1, 1)) for n in range(5)]
    other = TP("orders.events", 0)
    records = {CHANGELOG: fetched, other: [_record(0, b"o", b"{}", other)]}
    left = restore.restore(_consumer(), recovery, records, active=None)
    assert table.batches == [[0, 1, 2, 3, 4]]
    assert left == {CHANGELOG: fetched[-1:], other: records[other]}
    assert recovery.active_offsets[CHANGELOG] == 4
    assert table.data.persisted_offset(CHANGELOG) == 4
    assert _stored(table, b"c-3")["order_count"] == 1
    assert restore.restored["customer_stats"] >= 5  # served at GET /metrics


def test_a_late_lower_version_is_not_applied_and_a_tombstone_is(table: _Table) -> None:
    recovery = _recovery(table)
    changelog = [_record(0, b"c-1", _stats(1, 1)), _record(1, b"c-1", _stats(3, 3)),
                 _record(2, b"c-2", _stats(1, 1)), _record(3, b"c-1", _stats(2, 2)),
                 _record(4, b"c-2", None), _record(5, b"c-3", _stats(1, 1))]  # fmt: skip
    restore.restore(_consumer(), recovery, {CHANGELOG: changelog[:3]}, active=None)
    restore.restore(_consumer(), recovery, {CHANGELOG: changelog[3:]}, active=None)
    assert _stored(table, b"c-1")["order_count"] == 3  # the zombie's v2 lost to v3
    assert _stored(table, b"c-2") is None
    assert _stored(table, b"c-3")["order_count"] == 1
    assert table.data.persisted_offset(CHANGELOG) == 5


def test_records_recovery_or_the_fetcher_has_read_are_skipped(table: _Table) -> None:
    fetched = [_record(n, b"c-1", _stats(n + 1, n + 1)) for n in range(6)]
    restore.restore(_consumer(), _recovery(table, seen=2), {CHANGELOG: fetched}, active=None)
    restore.restore(_consumer(read_offset=5), _recovery(table), {CHANGELOG: fetched}, None)
    assert table.batches == [[3, 4, 5], [5]]


def test_records_faust_buffered_are_applied_first(table: _Table) -> None:
    recovery = _recovery(table)
    recovery.buffers[table].append(SimpleNamespace(message=restore._Change(
        CHANGELOG, _record(0, b"c-1", None))))  # fmt: skip
    fetched = [_record(1, b"c-1", _stats(1, 1)), _record(2, b"c-2", _stats(1, 1))]
    restore.restore(_consumer(), recovery, {CHANGELOG: fetched}, None)
    assert table.batches == [[0], [1, 2]]
    assert recovery.buffers[table] == []
    assert _stored(table, b"c-1")["order_count"] == 1


def test_standby_partitions_are_restored_in_batches_too(table: _Table) -> None:
    recovery = _recovery(table, active=False)
    fetched = [_record(n, f"c-{n}".encode(), _stats(1, 1)) for n in range(3)]
    assert restore.restore(_consumer(), recovery, {CHANGELOG: fetched}, None) == {
        CHANGELOG: fetched[-1:]
    }
    assert recovery.standby_offsets[CHANGELOG] == 2


def test_what_the_batch_path_does_not_take_is_left_to_faust(table: _Table) -> None:
    fetched = [_record(n, f"c-{n}".encode(), _stats(1, 1)) for n in range(3)]
    records = {CHANGELOG: fetched}
    not_restored = Recovery(app, tables=app.tables)
    assert restore.restore(_consumer(), not_restored, records, None) == records
    paused = _recovery(table)
    assert restore.restore(_consumer(), paused, records, active={TP("other", 0)}) == records
    one = {CHANGELOG: fetched[:1]}
    assert restore.restore(_consumer(), _recovery(table), one, None) == one
    table._on_changelog_event = lambda event: None
    assert restore.restore(_consumer(), _recovery(table), records, None) == records
    assert table.batches == []


def test_a_batch_that_fails_to_apply_is_left_whole_to_faust(table: _Table) -> None:
    recovery = _recovery(table)

    def refuse(batch: Any) -> None:
        raise OSError("disk full")

    table.apply_changelog_batch = refuse  # type: ignore[method-assign]
    fetched = [_record(n, f"c-{n}".encode(), _stats(1, 1)) for n in range(3)]
    assert restore.restore(_consumer(), recovery, {CHANGELOG: fetched}, None) == {
        CHANGELOG: fetched
    }
    assert CHANGELOG not in recovery.active_offsets
