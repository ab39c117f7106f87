"""A worker with empty state rebuilds ``customer_stats`` from its changelog a fetch at a time
(``pipeline.streaming.faust_patches.restore``), and ends with exactly what the changelog holds:
each key's newest version, a late record of a lower version not applied, deleted keys gone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from rocksdict import AccessType, Options, Rdict

from pipeline.domain.customer_stats import CustomerStats
from pipeline.streaming import versions
from pipeline.streaming.versioned_store import version_of
from tests.integration.workers import WorkerFactory, create_topics, metric

CUSTOMERS = 6000  # 1,500 a partition: many fetches each
PARTITIONS = 4
OFFSET_KEY = b"__faust\x00offset__"


def _value(customer: str, version: int, orders: int) -> bytes:
    return versions.encode(version, CustomerStats(customer, order_count=orders).to_value())


def _changelog() -> list[tuple[bytes, bytes | None]]:
    """Every customer's first value; then newer versions, late lower-version records (a zombie's),
    deletions and keys written again after their deletion, in that order."""
    names = [f"customer-{n:05d}" for n in range(CUSTOMERS)]
    log: list[tuple[bytes, bytes | None]] = [(c.encode(), _value(c, 1, 1)) for c in names]
    log += [(c.encode(), _value(c, 2, 2)) for n, c in enumerate(names) if n % 3 == 0]
    log += [(c.encode(), _value(c, 1, 99)) for n, c in enumerate(names) if n % 5 == 0]
    log += [(c.encode(), None) for n, c in enumerate(names) if n % 7 == 0]
    log += [(c.encode(), _value(c, 1, 5)) for n, c in enumerate(names) if n % 77 == 0]
    return log


def _expected(log: list[tuple[bytes, bytes | None]]) -> dict[bytes, bytes]:
    """What a table applying the version rule holds after ``log`` (pipeline.streaming.versions)."""
    table: dict[bytes, bytes] = {}
    for key, value in log:
        if value is None:
            table.pop(key, None)
            continue
        current = version_of(table.get(key))
        if current is None or (version_of(value) or 0) > current:
            table[key] = value
    return table


async def _fill(bootstrap: str, topic: str, log: list[tuple[bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5)  # fmt: skip
    partitioner, every = DefaultPartitioner(), list(range(PARTITIONS))
    await producer.start()
    try:
        sent = [await producer.send(topic, value, key=key, partition=partitioner(key, every, every))
                for key, value in log]  # fmt: skip
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _stored(state: Path) -> dict[bytes, bytes]:
    """Every key and value of the customer_stats RocksDB databases under ``state``."""
    out: dict[bytes, bytes] = {}
    for p in range(PARTITIONS):
        path = next(state.glob(f"**/tables/customer_stats-{p}.db"))
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            out.update((k, v) for k, v in db.items() if k != OFFSET_KEY)
        finally:
            db.close()
    return out


def test_a_rebuilt_table_holds_exactly_what_its_changelog_says(
    kafka_bootstrap: str, workers: WorkerFactory
) -> None:
    changelog = f"{workers.app_id}-customer_stats-changelog"
    asyncio.run(create_topics(kafka_bootstrap, [changelog, workers.topic("orders.events")]))
    log = _changelog()
    asyncio.run(_fill(kafka_bootstrap, changelog, log))
    expected = _expected(log)
    assert len(expected) == CUSTOMERS - CUSTOMERS // 7 - 1 + len(range(0, CUSTOMERS, 77))

    worker = workers.start("w1", PIPELINE_AGENTS="analytics", PIPELINE_FORWARDER_ENABLED="false")
    status, body = worker.get("/customers/customer-00003/stats")  # v2 kept over the late v1
    assert (status, body["order_count"]) == (200, 2), body
    assert worker.get("/customers/customer-00007/stats")[0] == 404  # deleted
    batched = metric(worker.metrics(), "pipeline_table_records_restored_in_batches",
                     table="customer_stats")  # fmt: skip
    assert batched is not None and batched > len(log) // 2, batched  # not record by record
    assert worker.stop() == 0

    stored = _stored(worker.data_dir / "state")
    assert stored.keys() == expected.keys()
    assert stored == expected
    assert json.loads(stored[b"customer-00000"])["order_count"] == 5  # written again after deletion
