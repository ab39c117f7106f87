"""Recovery and memory: a real worker rebuilding ``customer_stats`` from its changelog.

The changelog ``<app_id>-customer_stats-changelog`` is filled directly with the records a
table write produces (key: the customer id's bytes; value: the stats JSON as
``tables.customer_stats`` writes it, one applied event per customer), partitioned as the
producer's default partitioner does. Then:
- a worker on an empty changelog is started and timed to ``/readyz/tables`` (start-up and group join
  alone), and its RSS noted;
- a worker with an empty state directory is started on the filled changelog and timed to
  ``/readyz/tables``, which answers 200 only once table recovery has completed. Recovery time is the
  difference, so start-up is not charged to it; RSS after recovery, less the empty worker's,
  per million keys is the memory figure, with the bounded RocksDB options of
  ``pipeline.app.ROCKSDB_OPTIONS``; the same again with five times the keys, and the ratio of the
  two RSS (``memory.rss_growth_ratio``: flat is 1);
- beside it, ``kafka-consumer-perf-test`` reads the same changelog.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from bench import kafka_tools, profile, report
from pipeline.app import ROCKSDB_OPTIONS
from pipeline.domain.customer_stats import CustomerStats
from tests.integration.workers import Worker, WorkerFactory, create_topics, http_get

WORKER_ENV = {"PIPELINE_AGENTS": "analytics", "PIPELINE_FORWARDER_ENABLED": "false",
              "PIPELINE_LOG_EVENTS": "false"}  # fmt: skip


def stats_record(n: int) -> tuple[bytes, bytes]:
    """The changelog record of customer ``n`` after one order."""
    customer = f"customer-{n:07d}"
    at = datetime(2026, 11, 1, tzinfo=UTC)
    stats = CustomerStats(
        customer_id=customer, order_count=1, total_spent=Decimal(1999 + n % 5000) / 100,
        first_order_at=at, last_order_at=at,
        seen={str(uuid.UUID(int=n)): (int(at.timestamp()), "")},
        milestones={"first_order": str(uuid.UUID(int=n))},
    )  # fmt: skip
    return customer.encode(), json.dumps(stats.to_value(), separators=(",", ":")).encode()


async def fill_changelog(bootstrap: str, topic: str, keys: int, partitions: int) -> float:
    """Write ``keys`` records in whole batches per partition (fast, no per-record coroutine);
    returns the seconds it took."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1,
                                max_batch_size=1024 * 1024)  # fmt: skip
    partitioner = DefaultPartitioner()
    await producer.start()
    started = time.perf_counter()
    try:
        every = list(range(partitions))
        batches = {p: producer.create_batch() for p in every}
        pending = []
        for n in range(keys):
            key, value = stats_record(n)
            p = partitioner(key, every, every)
            if batches[p].append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(batches[p], topic, partition=p))
                batches[p] = producer.create_batch()
                batches[p].append(key=key, value=value, timestamp=None)
            if len(pending) >= 16:
                await asyncio.gather(*pending)
                pending.clear()
        for p, batch in batches.items():
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def time_to_ready(
    factory: WorkerFactory, name: str, timeout: float = 600, profile_after: float | None = None
) -> tuple[Worker, float]:
    """Start a worker on an empty state directory; seconds until ``/readyz/tables`` answers 200.
    With ``profile_after``, py-spy samples it from that many seconds after its start."""
    started = time.perf_counter()
    worker = factory.start(name, wait=False, **WORKER_ENV)
    if profile_after is not None:
        threading.Timer(profile_after, _profile, (worker.proc.pid,)).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            if worker.get("/readyz/tables")[0] == 200:
                return worker, time.perf_counter() - started
        except OSError:
            pass
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"recovery worker {name} not ready; see {worker.log_path}")
        time.sleep(0.05)


PROFILE_SECONDS = 30
GROWTH = 5
_spies: list[Any] = []


def _profile(pid: int) -> None:
    _spies.append(profile.start(pid, "recovery", PROFILE_SECONDS))


def profiled_run(bootstrap: str, keys: int, partitions: int) -> dict[str, Any]:
    """A recovery of its own, sampled by py-spy from just after the worker's start-up (the
    empty worker's time to ready) for ``PROFILE_SECONDS``."""
    result = one_run(bootstrap, None, keys, partitions, profile_recovery=True)
    summary = profile.finish(_spies, ["recovery"])
    _spies.clear()
    return {"keys": keys, "keys_per_s": round(result["keys_per_s"], 1),
            "profile_seconds": PROFILE_SECONDS, **summary}  # fmt: skip


def one_run(
    bootstrap: str, libs_dir: Path | None, keys: int, partitions: int,
    profile_recovery: bool = False,
) -> dict[str, Any]:  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    run_id = uuid.uuid4().hex[:8]

    def factory(app_id: str) -> WorkerFactory:
        return WorkerFactory(bootstrap, root, app_id, f"benchr{run_id}.",
                             f"sqlite+aiosqlite:///{root / 'db.sqlite'}", partitions)  # fmt: skip

    empty, filled = factory(f"bench-empty-{run_id}"), factory(f"bench-rec-{run_id}")
    changelog = f"{filled.app_id}-customer_stats-changelog"
    asyncio.run(create_topics(bootstrap, [changelog, filled.topic("orders.events")], partitions))
    fill_s = asyncio.run(fill_changelog(bootstrap, changelog, keys, partitions))
    try:
        worker, empty_s = time_to_ready(empty, "empty")
        time.sleep(1)
        empty_rss = rss_mib(worker.proc.pid)
        empty.stop_all()
        worker, ready_s = time_to_ready(
            filled, "filled", profile_after=empty_s + 1 if profile_recovery else None
        )
        time.sleep(1)
        rss = rss_mib(worker.proc.pid)
        probe = http_get(f"{worker.url}/customers/customer-{keys - 1:07d}/stats")[0]
        if probe != 200:
            raise RuntimeError(f"recovered worker does not know the last customer ({probe})")
    finally:
        empty.stop_all()
        filled.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    consumer = (
        kafka_tools.consumer_perf(libs_dir, bootstrap, changelog, keys)
        if libs_dir is not None
        else {}
    )
    seconds = max(ready_s - empty_s, 1e-3)
    return {
        "fill_s": fill_s, "ready_s": ready_s, "empty_ready_s": empty_s, "seconds": seconds,
        "keys_per_s": keys / seconds, "rss_mib": rss, "empty_rss_mib": empty_rss,
        "consumer_records_per_s": consumer.get("fetch_records_per_s", float("nan")),
    }  # fmt: skip


def run(bootstrap: str, libs_dir: Path | None, quick: bool, repeats: int,
        partitions: int = 4) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Returns the ``recovery`` and ``memory`` results; ``memory.rss_growth_ratio`` is the RSS
    after recovering ``GROWTH`` times the keys over the RSS after the keys (1M; quick: 100k)."""
    keys = 100_000 if quick else 1_000_000
    runs = sorted((one_run(bootstrap, libs_dir, keys, partitions) for _ in range(repeats)),
                  key=lambda r: r["keys_per_s"])  # fmt: skip
    mid = runs[len(runs) // 2]
    value_bytes = len(stats_record(keys // 2)[1])
    recovery = {
        "keys": keys,
        "value_bytes": value_bytes,
        "seconds": round(mid["seconds"], 2),
        "keys_per_s": round(mid["keys_per_s"], 1),
        "keys_per_s_runs": [round(r["keys_per_s"], 1) for r in runs],
        "worker_ready_s": round(mid["ready_s"], 2),
        "empty_worker_ready_s": round(mid["empty_ready_s"], 2),
        "baseline_consumer_records_per_s": round(mid["consumer_records_per_s"], 1),
        "changelog_fill_s": round(mid["fill_s"], 2),
    }
    grown = mid["rss_mib"] - mid["empty_rss_mib"]
    # RSS flat in the key count: the same recovery with GROWTH times the keys, once.
    big = one_run(bootstrap, None, keys * GROWTH, partitions)
    recovery["keys_per_s_at_growth"] = round(big["keys_per_s"], 1)
    recovery["vs_consumer_tool"] = report.ratio(mid["keys_per_s"], mid["consumer_records_per_s"])
    memory = {
        "keys": keys,
        "rss_mib": round(mid["rss_mib"], 1),
        "empty_rss_mib": round(mid["empty_rss_mib"], 1),
        "rss_mib_per_million_keys": round(grown / keys * 1_000_000, 1),
        "growth_keys": keys * GROWTH,
        "growth_rss_mib": round(big["rss_mib"], 1),
        "rss_growth_ratio": round(big["rss_mib"] / mid["rss_mib"], 2),
        "rocksdb_options": dict(ROCKSDB_OPTIONS),
        "rocksdb_note": "per partition database: block cache, write buffer size and count",
    }
    if profile.enabled():
        recovery["profiled"] = profiled_run(bootstrap, keys // 2, partitions)
    return recovery, memory
