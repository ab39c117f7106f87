"""A real worker process on the real local broker: events in, RocksDB table and derived
events out, state rebuilt from the changelog."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from rocksdict import AccessType, Options, Rdict

from pipeline.domain.events import decode_stats_updated, derived_event_id, encode
from pipeline.settings import PROJECT_ROOT
from tests.conftest import order_cancelled, order_created
from tests.integration.workers import WorkerFactory, consume, create_topics, produce, wait_for

ORDERS = "orders.events"
ANALYTICS = "analytics.events"


def _stats(worker_get, customer_id: str):  # type: ignore[no-untyped-def]
    status, body = worker_get(f"/customers/{customer_id}/stats")
    return body if status == 200 else None


def _rocksdb_values(data_dir: Path, table: str) -> dict[bytes, bytes]:
    """Read every key of a Faust RocksDB table from its partition databases on disk."""
    values: dict[bytes, bytes] = {}
    for path in sorted((data_dir / "state").glob(f"v*/tables/{table}-*.db")):
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                if not key.startswith(b"__faust"):
                    values[key] = value
        finally:
            db.close()
    return values


def test_worker_updates_rocksdb_table_and_publishes_derived_events(
    workers: WorkerFactory, kafka_bootstrap: str
) -> None:
    orders, analytics = workers.topic(ORDERS), workers.topic(ANALYTICS)
    asyncio.run(create_topics(kafka_bootstrap, [orders, analytics]))
    worker = workers.start()

    first = order_created("alice", total="12.50")
    second = order_created("alice", total="7.25")
    other = order_created("bob", total="3.00")
    cancel = order_cancelled(first)
    sent = [first, first, second, other, cancel]  # `first` is delivered twice
    asyncio.run(
        produce(kafka_bootstrap, orders, [(e.customer_id.encode(), encode(e)) for e in sent])
    )

    alice = wait_for(
        lambda: (s := _stats(worker.get, "alice")) and s["cancelled_count"] == 1 and s,
        60,
        "alice's stats to include the cancellation",
    )
    assert alice["order_count"] == 2
    assert alice["total_spent"] == "7.25"
    assert alice["average_order_value"] == "7.25"
    assert worker.get("/customers/nobody/stats")[0] == 404

    # One derived event per delivery, with ids computed from the cause: the duplicate delivery
    # of `first` re-sends the same id, so downstream sees four distinct events.
    derived = asyncio.run(consume(kafka_bootstrap, analytics, count=8))
    # Beside the stats updates: one first-order milestone per customer (sent again, same id,
    # on the duplicate delivery of its cause).
    milestones = {
        dict(r.headers)["event_id"]
        for r in derived
        if dict(r.headers)["event_type"] == b"MilestoneReached"
    }
    assert len(milestones) == 2
    derived = [r for r in derived if dict(r.headers)["event_type"] == b"CustomerStatsUpdated"]
    events = [decode_stats_updated(r.value) for r in derived]
    assert len(events) == 5
    assert {e.event_id for e in events} == {
        derived_event_id(e.event_id, "CustomerStatsUpdated") for e in (first, second, other, cancel)
    }
    assert all(r.key == e.customer_id.encode() for r, e in zip(derived, events, strict=True))
    assert next(e for e in events if e.caused_by == cancel.event_id).total_spent == Decimal("7.25")

    # The table lives in RocksDB on disk, under the worker's data dir.
    assert worker.stop() == 0
    on_disk = _rocksdb_values(worker.data_dir, "customer_stats")
    assert set(on_disk) == {b"alice", b"bob"}
    assert json.loads(on_disk[b"alice"])["total_spent"] == "7.25"
    assert json.loads(on_disk[b"bob"])["order_count"] == 1


def test_table_is_rebuilt_from_its_changelog_on_an_empty_data_dir(
    workers: WorkerFactory, kafka_bootstrap: str, tmp_path: Path
) -> None:
    orders = workers.topic(ORDERS)
    asyncio.run(create_topics(kafka_bootstrap, [orders, workers.topic(ANALYTICS)]))
    first = workers.start("first")
    events = [order_created(f"cust-{i % 7}", total=f"{i}.10") for i in range(1, 41)]
    asyncio.run(
        produce(kafka_bootstrap, orders, [(e.customer_id.encode(), encode(e)) for e in events])
    )
    wait_for(
        lambda: all(_stats(first.get, f"cust-{c}") for c in range(7)), 60, "all seven customers"
    )
    wait_for(
        lambda: sum(_stats(first.get, f"cust-{c}")["order_count"] for c in range(7)) == 40,
        60,
        "all forty orders counted",
    )
    before = {c: _stats(first.get, f"cust-{c}") for c in range(7)}
    assert first.stop() == 0

    assert not (tmp_path / "empty").exists()
    second = workers.start("second", data_dir=tmp_path / "empty")
    after = {c: _stats(second.get, f"cust-{c}") for c in range(7)}
    assert after == before


def test_web_server_listens_on_loopback_only_without_raw_table_endpoints(
    workers: WorkerFactory, kafka_bootstrap: str
) -> None:
    asyncio.run(create_topics(kafka_bootstrap, [workers.topic(ORDERS)]))
    worker = workers.start()
    assert _listening_addresses(worker.web_port) == {"127.0.0.1"}
    # Faust's /table endpoints would serve every value, dedupe state included.
    assert worker.get("/table/")[0] == 404
    assert worker.get("/table/customer_stats/alice/")[0] == 404


def test_worker_refuses_a_public_bind_without_a_token(workers: WorkerFactory) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "worker", "--web-bind", "0.0.0.0"],
        cwd=PROJECT_ROOT,
        env=workers.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "PIPELINE_API_TOKEN" in result.stderr


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                if len(address) == 8:
                    found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.add(address)
    return found


def test_a_worker_declares_every_topic_with_its_partition_count(
    workers: WorkerFactory, kafka_bootstrap: str
) -> None:
    # Only the analytics agent runs here, yet the topics it produces to for others exist with
    # their own partition counts (the revenue windows need exactly one).
    workers.start(PIPELINE_AGENTS="analytics")
    shared = ["orders.events", "inventory.commands", "inventory.events", "orders.status",
              "analytics.events", "dead-letters", "retry.1", "retry.2", "retry.3",
              *(f"redeliver.{a}" for a in ("analytics", "inventory-requests", "inventory",
                                           "order-status", "notifications"))]  # fmt: skip
    single = ["analytics.revenue", "redeliver.revenue"]
    expected = {workers.topic(base) for base in shared + single}
    counts = wait_for(
        lambda: (
            (c := asyncio.run(_partition_counts(kafka_bootstrap, workers.topic_prefix)))
            and expected <= set(c)
            and c
        ),
        30,
        "the worker to declare its topics",
    )
    for base in single:
        assert counts[workers.topic(base)] == 1, base
    for base in shared:
        assert counts[workers.topic(base)] == workers.partitions, base


async def _partition_counts(bootstrap: str, prefix: str) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described}
