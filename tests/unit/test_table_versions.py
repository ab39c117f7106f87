"""Versioned table values: a late changelog record of a worker that lost the partition (a
zombie) never replaces a newer value, on a real RocksDB store."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import faust.stores.rocksdb as faust_rocksdb
import pytest
from faust.types import TP
from yarl import URL

from pipeline.app import app
from pipeline.domain import horizon
from pipeline.domain.customer_stats import CustomerStats, revenue_record
from pipeline.streaming import versioned_store, versions
from pipeline.streaming.versioned_store import VersionedRocksDBStore, store_url
from tables.customer_stats import customer_stats_table

_names = itertools.count()


def _new_store() -> Any:
    """A RocksDB store of the customer_stats table, new files in the unit tests' data dir."""
    url = URL.build(scheme="rocksdb", path=f"versions-{next(_names)}")
    return VersionedRocksDBStore(url, app, table=customer_stats_table)


@pytest.fixture
def store() -> Iterator[Any]:
    store = _new_store()
    yield store
    store._dbs.clear()


def _tp(store: Any) -> TP:
    return TP(customer_stats_table.changelog_topic.get_topic_name(), 0)


def _records(store: Any, *values: tuple[bytes, bytes | None]) -> list[Any]:
    tp = _tp(store)
    return [
        SimpleNamespace(message=_message(tp, n, key, value))
        for n, (key, value) in enumerate(values)
    ]


def _message(tp: TP, offset: int, key: bytes, value: bytes | None) -> Any:
    return SimpleNamespace(tp=tp, topic=tp.topic, partition=0, offset=offset, key=key, value=value)


def _stats(version: int, orders: int) -> bytes:
    return versions.encode(version, CustomerStats("c-1", order_count=orders).to_value())


def _stored(store: Any, key: bytes = b"c-1") -> Any:
    raw = store._db_for_partition(0).get(key)
    return None if raw is None else json.loads(raw)


def test_the_version_is_read_from_the_start_of_the_value() -> None:
    assert versioned_store.version_of(_stats(12, 3)) == 12
    assert versioned_store.version_of(b'{"v":7}') == 7
    assert versioned_store.version_of(b'{"customer_id":"c-1"}') is None  # written before versions
    assert versioned_store.version_of(b'{"v":"x",') is None
    assert versioned_store.version_of(None) is None


def test_a_zombies_late_record_does_not_replace_the_new_owners_value(store: Any) -> None:
    # The zombie wrote v2 (2 orders) and froze with it unsent; the new owner redid that event
    # (v2) and the next (v3); the zombie's v2 arrives last.
    changelog = [(b"c-1", _stats(1, 1)), (b"c-1", _stats(2, 2)), (b"c-1", _stats(3, 3)),
                 (b"c-1", _stats(2, 2))]  # fmt: skip
    faust_rocksdb.Store.apply_changelog_batch(store, _records(store, *changelog), None, None)
    assert _stored(store)["order_count"] == 2  # Faust's: the last record wins, stats go back

    fresh = _new_store()
    fresh.apply_changelog_batch(_records(fresh, *changelog), None, None)
    assert _stored(fresh)["order_count"] == 3
    assert fresh.persisted_offset(_tp(fresh)) == 3  # the skipped record counts as read


def test_a_zombies_late_revenue_window_does_not_replace_the_owners() -> None:
    # The nemesis (seed 22): a window's changelog ended with a frozen worker's record of 31
    # orders, sent 2 s after the new owner's of 95; the worker that recovered it showed 31.
    from pipeline.domain.revenue import REVENUE_KEY, Window, apply_revenue
    from tables.revenue import revenue_table
    from tests.conftest import T0, order_created

    table = revenue_table.table
    store = VersionedRocksDBStore(
        URL.build(scheme="rocksdb", path=f"versions-{next(_names)}"), app, table=table
    )
    h = horizon.Horizon(int(T0.timestamp()), 300, 86400)
    window, values = Window(), []
    for n in range(95):
        record = revenue_record(order_created(total="1.00"), f"s0@{n}")
        window, _ = apply_revenue(window, record, h)
        values.append(app.serializers.dumps_value(None, window.to_value(), serializer="json"))
    key = app.serializers.dumps_key(None, [REVENUE_KEY, [0.0, 9.9]], serializer="json")
    tp = TP(table.changelog_topic.get_topic_name(), 0)
    changelog = [values[30], values[94], values[30]]  # the zombie's 31 orders arrive last
    records = [SimpleNamespace(message=_message(tp, n, key, v)) for n, v in enumerate(changelog)]
    try:
        store.apply_changelog_batch(records, None, None)
        stored = Window.from_value(json.loads(store._db_for_partition(0).get(key)))
        assert (stored.orders, stored.version) == (95, 95)
    finally:
        store._dbs.clear()


def test_records_across_batches_compare_with_the_store(store: Any) -> None:
    store.apply_changelog_batch(_records(store, (b"c-1", _stats(5, 5))), None, None)
    store.apply_changelog_batch(_records(store, (b"c-1", _stats(4, 4))), None, None)
    assert _stored(store)["order_count"] == 5
    store.apply_changelog_batch(_records(store, (b"c-1", _stats(6, 6))), None, None)
    assert _stored(store)["order_count"] == 6


def test_deletions_and_unversioned_values_apply_as_before(store: Any) -> None:
    changelog = [(b"c-1", _stats(4, 4)), (b"c-1", None), (b"c-1", _stats(1, 1)),
                 (b"c-2", b'{"customer_id":"c-2"}'), (b"c-2", _stats(1, 9))]  # fmt: skip
    store.apply_changelog_batch(_records(store, *changelog), None, None)
    assert _stored(store)["order_count"] == 1  # recreated after its deletion
    assert _stored(store, b"c-2")["order_count"] == 9


def test_values_carry_their_version_and_equality_ignores_it() -> None:
    stats = CustomerStats("c-1", order_count=2, total_spent=Decimal("3.00"))
    read = CustomerStats.from_value(json.loads(versions.encode(8, stats.to_value())))
    assert read.version == 8 and read == stats
    assert "v" not in read.public()


def test_rocksdb_means_the_versioned_store_registered_with_faust() -> None:
    import faust.stores

    assert faust.stores.by_url(store_url("rocksdb:///data")) is VersionedRocksDBStore
    assert store_url("memory://") == "memory://"
    assert faust_rocksdb.Store.apply_changelog_batch is not (
        VersionedRocksDBStore.apply_changelog_batch
    )  # Faust's own store is left as it is


def _delivery(tp: TP, offset: int | None, error: Exception | None = None) -> Any:
    """What the producer's send resolves to: the broker's acknowledgement, or its failure."""
    import asyncio

    from aiokafka.structs import RecordMetadata, TopicPartition

    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    if error is not None:
        fut.set_exception(error)
    elif offset is None:
        fut.cancel()
    else:
        fut.set_result(RecordMetadata(tp.topic, tp.partition, TopicPartition(*tp), offset,
                                      -1, 0, 0))  # fmt: skip
    return fut


async def test_an_acknowledged_changelog_write_moves_the_recovery_mark_a_failed_one_not(
    store: Any,
) -> None:
    """``versions.write`` sends the changelog record itself; its acknowledgement moves the
    recovery mark as Faust's ``_on_changelog_sent`` (with faust_patches' fix) did."""
    import asyncio

    table = SimpleNamespace(name="customer_stats", app=app, data=store)
    tp = _tp(store)
    store.set_persisted_offset(tp, 4)
    versions._on_changelog_sent(table, _delivery(tp, 5))
    await asyncio.sleep(0)  # the acknowledgements of one turn move it at the end of the turn
    assert store.persisted_offset(tp) == 5
    versions._on_changelog_sent(table, _delivery(tp, None))  # cancelled: nothing known
    versions._on_changelog_sent(table, _delivery(tp, 6, RuntimeError("broker gone")))
    await asyncio.sleep(0)
    assert store.persisted_offset(tp) == 5  # (the failure stops the commits: test_send_failures)
    versions._on_changelog_sent(table, _delivery(tp, 9))  # another worker wrote 6..8
    await asyncio.sleep(0)
    assert store.persisted_offset(tp) == 5


async def test_one_turns_acknowledgements_move_the_mark_once_and_never_over_a_gap(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    table = SimpleNamespace(name="customer_stats", app=app, data=store)
    tp = _tp(store)
    store.set_persisted_offset(tp, 4)
    writes: list[int] = []
    monkeypatch.setattr(store, "set_persisted_offset",
                        lambda tp, offset: writes.append(offset))  # fmt: skip
    for offset in (5, 6, 7):
        versions._on_changelog_sent(table, _delivery(tp, offset))
    assert writes == []  # not per record
    await asyncio.sleep(0)
    assert writes == [7]
    monkeypatch.undo()
    store.set_persisted_offset(tp, 7)
    for offset in (8, 11, 12):  # 9 and 10 are another worker's: stop before them
        versions._on_changelog_sent(table, _delivery(tp, offset))
    await asyncio.sleep(0)
    assert store.persisted_offset(tp) == 8


async def test_a_table_is_written_only_for_an_event() -> None:
    with pytest.raises(RuntimeError, match="inside an agent"):
        await versions.write(customer_stats_table, b"c-1", 1, {"customer_id": "c-1"})


async def test_an_orders_write_and_deletion_acknowledged_together_move_the_mark_past_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The order-status agent writes an order's progress (changelog offset n) and, the order
    settled, deletes it (n + 1), both for one event. The broker acknowledges them in one batch,
    in order; the recovery mark must end at n + 1 and move on with the next write, never stick
    below a record this worker wrote (each restart would read the changelog again from it)."""
    import asyncio

    from pipeline.domain.order_progress import OrderProgress
    from tables.order_progress import order_progress, order_progress_table
    from tests.unit.test_send_failures import KafkaClient, handling

    url = URL.build(scheme="rocksdb", path=f"versions-{next(_names)}")
    store = faust_rocksdb.Store(url, app, table=order_progress_table)
    monkeypatch.setattr(order_progress_table, "_data", store)
    kafka = KafkaClient()
    monkeypatch.setattr(app.producer, "_producer", kafka)
    changelog = order_progress_table.changelog_topic.get_topic_name()
    tp = TP(changelog, 0)
    store.set_persisted_offset(tp, 4)
    kafka.next_offset[(changelog, 0)] = 5

    def progress(order_id: str) -> OrderProgress:
        return OrderProgress(order_id, "c-1", "c-1@example.com", 1)

    try:
        with handling(offset=7, tp=TP("inventory.events", 0)):
            await order_progress.save(None, progress("o-1"))
        await versions.flush()  # changelog offset 5
        with handling(offset=8, tp=TP("inventory.events", 0)):
            await order_progress.delete("o-1")
        await versions.flush()  # 6
        kafka.acknowledge()  # one batch: 5, then 6
        for _ in range(3):
            await asyncio.sleep(0)
        assert store.persisted_offset(tp) == 6
        with handling(offset=9, tp=TP("inventory.events", 0)):
            await order_progress.save(None, progress("o-2"))
            await order_progress.save(None, progress("o-3"))
            await order_progress.delete(
                "o-3"
            )  # written and deleted between two commits: one record
        await versions.flush()  # 7 and 8
        kafka.acknowledge()
        for _ in range(3):
            await asyncio.sleep(0)
        assert store.persisted_offset(tp) == 8
        assert [r.value for r in kafka.sent if r.key == b"o-3"] == [None]
        assert store._db_for_partition(0).get(b"o-1") is None
        assert store._db_for_partition(0).get(b"o-2") is not None
    finally:
        store._dbs.clear()


async def test_values_are_staged_until_the_flush_and_read_back_as_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Write-behind: a hot key's value is encoded, stored and sent once per commit, however
    many events change it; its reads in between get the written object itself."""
    from pipeline.domain.stock import Stock
    from tables.inventory import stock as stock_values
    from tables.inventory import stock_table
    from tests.unit.test_send_failures import KafkaClient, handling

    kafka = KafkaClient()
    monkeypatch.setattr(app.producer, "_producer", kafka)
    stock = Stock("sku-w", available=10)
    with handling(offset=1, tp=TP("inventory.commands", 0)):
        for n in range(50):
            await stock_values.save(None, stock)
            stock = stock_values.get("sku-w")
            assert stock is not None and stock.version == n + 1
            stock = Stock("sku-w", available=stock.available - 1, version=stock.version)
    assert kafka.sent == [] and versions.staged() == 1
    await versions.flush()
    [record] = kafka.sent
    assert (
        json.loads(record.value)["available"] == 10 - 49
        and versioned_store.version_of(record.value) == 50
    )
    with handling(offset=2, tp=TP("inventory.commands", 0)):
        assert stock_table.data.get(b"sku-w") == record.value
    versions.forget({0})  # the partition is revoked: what is read next comes from the store
    with handling(offset=2, tp=TP("inventory.commands", 0)):
        assert stock_values.get("sku-w") == Stock("sku-w", available=-39)


async def test_a_value_growing_past_the_bound_is_refused_at_the_write_that_grows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sizes are estimated from the last exact encoding and the value's weight; near the
    bound the value is encoded at the write, so the event that makes it too large is the one
    refused (dead-lettered), not the flush."""
    from pipeline.domain.horizon import ValueTooLarge
    from pipeline.domain.stock import Stock
    from tables.inventory import stock as stock_values
    from tests.unit.test_send_failures import KafkaClient, handling

    monkeypatch.setattr(app.producer, "_producer", KafkaClient())
    monkeypatch.setattr(horizon_module(), "MAX_VALUE_BYTES", 20_000)
    lines: dict[str, tuple[str, int, str]] = {}
    with handling(offset=1, tp=TP("inventory.commands", 0)), pytest.raises(ValueTooLarge):
        for n in range(10_000):
            lines = {**lines, f"order-{n:06d}:1": ("C", 1_800_000_000, "0")}
            await stock_values.save(None, Stock("sku-big", lines=lines, version=n))

    # Refused at exactly the line that took it past 20,000 bytes.
    def size(held: dict[str, tuple[str, int, str]]) -> int:
        return len(versions.encode(len(held), Stock("sku-big", lines=held).to_value()))

    assert size(dict(list(lines.items())[:-1])) <= 20_000 < size(lines)


def horizon_module() -> Any:
    from pipeline.domain import horizon

    return horizon
