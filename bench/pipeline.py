"""Pipeline benchmark: one worker on the full analytics path, beside a plain aiokafka loop.

The same events (about 300-byte orders, skewed over customers, fixed seed) are consumed from
the same broker by:
- a plain aiokafka consume→produce loop doing the same work: decode, dedupe and aggregate per
  customer in RocksDB (rocksdict), then produce the stats update, the revenue record and the
  changelog record a Faust table write produces;
- a real worker process running only the analytics agent (Faust agent, RocksDB table with its
  changelog, the same pure functions), without its one log line per event
  (``PIPELINE_LOG_EVENTS=false``, as the loop writes none);
- a Quix Streams application doing the same work (``bench/quix_app.py``), the peer a user
  would compare Faust with, in a process of its own like the worker;
- the same worker on stock faust-streaming, none of this project's Faust patches installed
  (``bench/stock_faust.py`` says what stays);
- two such workers of one app sharing the partitions (one run: on two cores they share the
  CPU with the broker, so this shows how far a second process helps, not linear scaling).
Each reports events/s (from first to last event processed) and CPU µs per event; the processes
are measured alike (see :func:`_measure`). The topics are the app's own
(``python -m pipeline topics create``): the revenue topic has one partition, as the app declares.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rocksdict import Options, Rdict

from bench.report import against, ratio
from pipeline.domain.customer_stats import (
    CustomerStats,
    applied_at,
    apply_event,
    milestone_events,
    revenue_record,
    stats_updated_event,
)
from pipeline.domain.events import Contact, OrderCreated, OrderLine, decode_order_event, encode
from pipeline.domain.horizon import Horizon
from pipeline.settings import PROJECT_ROOT, load_settings
from tests.integration.workers import create_topics, free_port, http_get

CLK_TCK = os.sysconf("SC_CLK_TCK")


def horizon(now: int) -> Horizon:
    """The worker's default horizon (pipeline.domain.horizon), at a record's time."""
    return Horizon(now, 300, 7 * 86400)


def make_events(count: int, seed: int = 42) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    customers = [f"customer-{i:05d}" for i in range(10_000)]
    weights = [1 / (i + 1) ** 0.8 for i in range(len(customers))]
    start = datetime(2026, 11, 1, tzinfo=UTC)
    out = []
    for n in range(count):
        customer = rng.choices(customers, weights)[0]
        line = OrderLine(f"sku-{rng.randrange(500):04d}", rng.randint(1, 3),
                         Decimal(rng.randrange(199, 9999)) / 100)  # fmt: skip
        event = OrderCreated(
            event_id=str(uuid.UUID(int=rng.getrandbits(128))),
            order_id=str(uuid.UUID(int=rng.getrandbits(128))),
            customer_id=customer, contact=Contact(f"{customer}@example.com"), items=(line,),
            total=line.unit_price * line.quantity, created_at=start + timedelta(seconds=n),
        )  # fmt: skip
        out.append((customer.encode(), encode(event)))
    return out


async def prefill(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=512 * 1024)  # fmt: skip
    await producer.start()
    try:
        for i in range(0, len(events), 2000):
            futures = [await producer.send(topic, v, key=k) for k, v in events[i : i + 2000]]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _cpu_seconds(pid: int | None = None) -> float:
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def plain_loop(bootstrap: str, source: str, prefix: str, count: int) -> dict[str, float]:
    """What a hand-written aiokafka service doing the same work achieves."""
    state_dir = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    db = Rdict(str(state_dir), Options(raw_mode=True))
    consumer = AIOKafkaConsumer(
        source, bootstrap_servers=bootstrap, group_id=f"plain-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=2000,
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=512 * 1024)  # fmt: skip
    await consumer.start()
    await producer.start()
    processed = 0
    started = cpu0 = 0.0
    # The values changed in this fetched batch, by key, written (to RocksDB and the changelog)
    # once per key when the batch is done, as Quix's state and the worker's table do per
    # checkpoint: a value holds the customer's dedupe ledger, so encoding it at every event
    # costs in proportion to the customer's recent events (quadratic for a hot customer).
    changed: dict[bytes, dict[str, Any]] = {}
    try:
        while processed < count:
            batch = await consumer.getmany(timeout_ms=1000)
            futures = []
            for records in batch.values():
                for record in records:
                    if processed == 0:
                        started, cpu0 = time.perf_counter(), _cpu_seconds()
                    event = decode_order_event(record.value)
                    value = changed.get(record.key)
                    if value is None:
                        raw = db.get(record.key)
                        value = None if raw is None else orjson.loads(raw)
                    current = None if value is None else CustomerStats.from_value(value)
                    position = f"s{record.partition}@{record.offset}"
                    stats, applied = apply_event(current, event, horizon(record.timestamp // 1000),
                                                 position=position)  # fmt: skip
                    sends: list[tuple[str, bytes, bytes]] = []
                    if applied:
                        changed[record.key] = stats.to_value()
                    update = stats_updated_event(stats, event.event_id)
                    sends.append(("analytics.events", encode(update), record.key))
                    for milestone in milestone_events(stats, event.event_id):
                        sends.append(("analytics.events", encode(milestone), record.key))
                    first = applied_at(stats, event.event_id)
                    if first is not None:
                        revenue = encode(revenue_record(event, first))
                        sends.append(("analytics.revenue", revenue, b"revenue"))
                    for topic, payload, key in sends:
                        futures.append(await producer.send(prefix + topic, payload, key=key))
                    processed += 1
            for key, value in changed.items():
                payload = orjson.dumps(value)
                db[key] = payload
                futures.append(await producer.send(prefix + "changelog", payload, key=key))
            changed.clear()
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu0
    finally:
        await consumer.stop()
        await producer.stop()
        db.close()
        shutil.rmtree(state_dir, ignore_errors=True)
    return {"events_per_s": processed / elapsed, "cpu_us_per_event": cpu / processed * 1e6}


async def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in range(partitions)]
        )
        return sum(max(meta.offset, 0) for meta in offsets.values() if meta is not None)
    finally:
        await admin.close()


async def _output(
    bootstrap: str, topic: str, beyond: int | None, procs: Sequence[subprocess.Popen[bytes]] = ()
) -> tuple[int, float]:
    """How many records ``topic`` holds beyond ``beyond``, and when: at once for ``beyond=None``
    (then the whole count), else once there are more. Raises if one of ``procs`` (what should
    produce them) exits or two minutes pass first."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        # How many partitions ``topic`` has: ``consumer.topics()`` fetches the metadata but leaves
        # the consumer's own cluster view (what ``partitions_for_topic`` reads) without it.
        metadata = await consumer._client.fetch_all_metadata()
        numbers = metadata.partitions_for_topic(topic)
        if not numbers:
            raise RuntimeError(f"{topic} does not exist")
        partitions = [TopicPartition(topic, p) for p in sorted(numbers)]
        consumer.assign(partitions)
        deadline = time.monotonic() + 120
        while True:
            out = sum((await consumer.end_offsets(partitions)).values()) - (beyond or 0)
            if beyond is None or out > 0:
                return out, time.perf_counter()
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"nothing came out to {topic}")
            await asyncio.sleep(0.02)
    finally:
        await consumer.stop()


def _app_env(bootstrap: str, prefix: str, partitions: int) -> dict[str, str]:
    """The environment of the app's processes: this one's, less its pipeline and Kafka settings,
    on the bench's broker and topics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "KAFKA_"))}
    env.update(KAFKA_BOOTSTRAP_SERVERS=bootstrap, PIPELINE_TOPIC_PREFIX=prefix,
               PIPELINE_PARTITIONS=str(partitions))  # fmt: skip
    return env


def _measure(
    bootstrap: str, prefix: str, count: int, partitions: int, group: str,
    launch: Any, data_dir: Path, fill: Any = None,
) -> dict[str, float]:  # fmt: skip
    """Run the processes ``launch(data_dir)`` starts (a list of (process, web port or None))
    as consumer group ``group`` over the prefilled topic, and time them.

    The clock starts when the first events come out (one revenue record per event), as the
    loop's starts at its first record: no side is charged for starting or joining the group.
    It stops when the group has committed every event, as the loop's after its last commit.
    (Starting at the first commit instead counted the events handled before it as if handled
    after: a first commit held back for a while made a short run look several times faster
    than it was.) CPU is the processes' own, user and system, from /proc over the same span.

    ``fill``, when given, writes the events once every process is ready (the topic is empty
    until then): several workers must all have joined the group before the first event, or the
    first to join handles the whole topic alone before the others are in (a quick run's
    12,000 events were gone before the second worker had its partitions)."""
    # The other runs wrote their revenue records to the same topic first.
    before, _ = asyncio.run(_output(bootstrap, prefix + "analytics.revenue", None))
    started_procs: list[tuple[subprocess.Popen[bytes], int | None]] = launch(data_dir)
    procs = [proc for proc, _ in started_procs]
    try:
        deadline = time.monotonic() + 120
        for proc, port in started_procs:
            while port is not None:
                try:
                    if http_get(f"http://127.0.0.1:{port}/readyz/tables")[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("did not start")
                time.sleep(0.1)
        if fill is not None:
            _wait_all_ready(started_procs, deadline)
            fill()
        first, started = asyncio.run(
            _output(bootstrap, prefix + "analytics.revenue", before, procs)
        )
        cpu0 = sum(_cpu_seconds(p.pid) for p in procs)
        source, done = prefix + "orders.events", 0
        while done < count:
            time.sleep(0.1)
            done = asyncio.run(_committed(bootstrap, group, source, partitions))
            if time.monotonic() > deadline + 600:
                raise RuntimeError(f"stalled at {done}/{count}")
        elapsed = time.perf_counter() - started
        cpu = sum(_cpu_seconds(p.pid) for p in procs) - cpu0
        count -= first
    except RuntimeError as exc:
        logs = sorted(data_dir.glob("*.log"))
        tail = logs[0].read_text(errors="replace")[-3000:] if logs else ""
        raise RuntimeError(f"bench {group}: {exc}\n{tail}") from None
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"events_per_s": count / elapsed, "cpu_us_per_event": cpu / count * 1e6}


def _wait_all_ready(
    started_procs: Sequence[tuple[subprocess.Popen[bytes], int | None]], deadline: float
) -> None:
    """Every process answers ``/readyz/tables`` 200 twice, a second apart: each joining worker moves
    the partitions again, and a worker is not ready while they move."""
    ports = [port for _, port in started_procs if port is not None]
    steady = 0
    while steady < 2:
        ready = all(_ready(port) for port in ports)
        steady = steady + 1 if ready else 0
        if time.monotonic() > deadline or any(p.poll() is not None for p, _ in started_procs):
            raise RuntimeError("the workers did not all get ready")
        time.sleep(1.0)


def _ready(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/readyz/tables")[0] == 200
    except OSError:
        return False


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def faust_worker(
    bootstrap: str, prefix: str, count: int, partitions: int, extra_env: dict[str, str],
    workers: int = 1, entry: str = "pipeline", fill: Any = None,
) -> dict[str, float]:  # fmt: skip
    """Real worker processes (one app, ``workers`` of them sharing the partitions) running the
    analytics agent over the prefilled topic (or the one ``fill`` writes once they are all
    ready, see :func:`_measure`); ``entry`` is the module they run (``bench.stock_faust`` for
    stock Faust)."""
    app_id = f"bench-{uuid.uuid4().hex[:8]}"
    env = _app_env(bootstrap, prefix, partitions)
    env.update(
        PIPELINE_APP_ID=app_id, PIPELINE_AGENTS="analytics", PIPELINE_FORWARDER_ENABLED="false",
        PIPELINE_LOG_EVENTS="false", **extra_env,
    )  # fmt: skip

    def launch(data_dir: Path) -> list[tuple[subprocess.Popen[bytes], int | None]]:
        started: list[tuple[subprocess.Popen[bytes], int | None]] = []
        for n in range(workers):
            (data_dir / f"w{n}").mkdir()
            port = free_port()
            command = [sys.executable, "-m", entry, "worker", "-l", "warn", "--web-port", str(port)]
            proc = _start(command, {**env, "PIPELINE_DATA_DIR": str(data_dir / f"w{n}")},
                          data_dir / f"worker-{n}.log")  # fmt: skip
            started.append((proc, port))
        return started

    data_dir = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    return _measure(bootstrap, prefix, count, partitions, app_id, launch, data_dir, fill)


def quix_app(bootstrap: str, prefix: str, count: int, partitions: int) -> dict[str, float]:
    """The Quix Streams application (``bench/quix_app.py``) in a process of its own, committing
    as often as the worker does."""
    group = f"bench-quix-{uuid.uuid4().hex[:8]}"
    # The workers run on the defaults (their environment has no PIPELINE_ settings).
    commit_s = str(load_settings({}).commit_interval_ms / 1000)

    def launch(data_dir: Path) -> list[tuple[subprocess.Popen[bytes], int | None]]:
        command = [sys.executable, "-m", "bench.quix_app", bootstrap, prefix, group,
                   str(data_dir / "state"), commit_s]  # fmt: skip
        return [(_start(command, dict(os.environ), data_dir / "quix.log"), None)]

    data_dir = Path(tempfile.mkdtemp(prefix="bench-quix-"))
    return _measure(bootstrap, prefix, count, partitions, group, launch, data_dir)


def _setup(bootstrap: str, prefix: str, partitions: int, events: list[Any]) -> None:
    """The app's topics, created by the app's own command (so with its partition counts), the
    loop's stand-in changelog, and the prefilled orders."""
    subprocess.run([sys.executable, "-m", "pipeline", "topics", "create"], cwd=PROJECT_ROOT,
                   env=_app_env(bootstrap, prefix, partitions), check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    asyncio.run(create_topics(bootstrap, [prefix + "changelog"], partitions=partitions))
    asyncio.run(prefill(bootstrap, prefix + "orders.events", events))


def run(bootstrap: str, quick: bool, repeats: int, partitions: int = 4) -> dict[str, Any]:
    count = 12_000 if quick else 60_000
    events = make_events(count)
    loops, workers, quixes, stocks = [], [], [], []
    for _ in range(repeats):
        # Every side reads the same prefilled topic, each as its own consumer group.
        prefix = f"benchp{uuid.uuid4().hex[:6]}."
        _setup(bootstrap, prefix, partitions, events)
        loops.append(asyncio.run(plain_loop(bootstrap, prefix + "orders.events", prefix, count)))
        workers.append(faust_worker(bootstrap, prefix, count, partitions, {}))
        quixes.append(quix_app(bootstrap, prefix, count, partitions))
        stocks.append(faust_worker(bootstrap, prefix, count, partitions, {},
                                   entry="bench.stock_faust"))  # fmt: skip
    # Two workers of one app share the partitions; one run (it is the slowest part). The events
    # are written once both have joined (the writing overlaps the run's first moments, a small
    # cost charged to the two workers), see _measure.
    prefix = f"benchp{uuid.uuid4().hex[:6]}."
    _setup(bootstrap, prefix, partitions, [])
    source = prefix + "orders.events"
    two = faust_worker(bootstrap, prefix, count, partitions, {}, workers=2,
                       fill=lambda: asyncio.run(prefill(bootstrap, source, events)))  # fmt: skip
    median = _median_by("events_per_s")
    loop, worker, quix, stock = median(loops), median(workers), median(quixes), median(stocks)
    runs = lambda rows: [round(r["events_per_s"], 1) for r in rows]  # noqa: E731
    return {
        "source_topic": prefix + "orders.events",
        "events": count,
        "event_bytes": round(sum(len(v) for _, v in events) / len(events)),
        "events_per_s": round(worker["events_per_s"], 1),
        "events_per_s_runs": runs(workers),
        "cpu_us_per_event": round(worker["cpu_us_per_event"], 1),
        "baseline_loop_events_per_s": round(loop["events_per_s"], 1),
        "baseline_loop_events_per_s_runs": runs(loops),
        "baseline_loop_cpu_us_per_event": round(loop["cpu_us_per_event"], 1),
        "ratio": ratio(worker["events_per_s"], loop["events_per_s"]),
        "quix_events_per_s": round(quix["events_per_s"], 1),
        "quix_events_per_s_runs": runs(quixes),
        "quix_cpu_us_per_event": round(quix["cpu_us_per_event"], 1),
        "vs_quix": ratio(worker["events_per_s"], quix["events_per_s"]),
        "quix_vs_loop": ratio(quix["events_per_s"], loop["events_per_s"]),
        "stock_faust_events_per_s": round(stock["events_per_s"], 1),
        "stock_faust_events_per_s_runs": runs(stocks),
        "stock_faust_cpu_us_per_event": round(stock["cpu_us_per_event"], 1),
        "stock_faust_ratio": ratio(stock["events_per_s"], loop["events_per_s"]),
        "stock_faust_vs_quix": ratio(stock["events_per_s"], quix["events_per_s"]),
        "two_workers_events_per_s": round(two["events_per_s"], 1),
        "two_workers_cpu_us_per_event": round(two["cpu_us_per_event"], 1),
        "two_workers_ratio": ratio(two["events_per_s"], worker["events_per_s"]),
        # The same figure under its earlier name, for readers of older results.
        "two_workers_scaling": ratio(two["events_per_s"], worker["events_per_s"]),
    }


def _median_by(key: str) -> Any:
    def pick(runs: list[dict[str, float]]) -> dict[str, float]:
        return sorted(runs, key=lambda r: r[key])[len(runs) // 2]

    return pick


def table(result: dict[str, Any]) -> str:
    """Each row's events/s and CPU, and its ratio to the plain loop and to Quix."""
    loop, quix = result["baseline_loop_events_per_s"], result.get("quix_events_per_s")
    rows = [
        ("plain aiokafka loop (same work)", "baseline_loop_events_per_s",
         "baseline_loop_cpu_us_per_event", ""),
        ("Quix Streams app (same work)", "quix_events_per_s", "quix_cpu_us_per_event", ""),
        ("Faust worker, analytics agent", "events_per_s", "cpu_us_per_event", ""),
        ("the same on stock Faust", "stock_faust_events_per_s", "stock_faust_cpu_us_per_event",
         ""),
        ("two Faust workers, one app", "two_workers_events_per_s",
         "two_workers_cpu_us_per_event",
         f", {result.get('two_workers_ratio') or float('nan'):.2f}x one worker"),
    ]  # fmt: skip
    lines = []
    for name, rate_key, cpu_key, extra in rows:
        if result.get(rate_key) is None:
            continue
        rate = result[rate_key]
        lines.append((name, f"{rate:>9,.0f} events/s  {result[cpu_key]:>4.0f} us CPU/event  "
                            f"{against(rate, {'loop': loop, 'Quix': quix})}{extra}"))  # fmt: skip
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in lines)
