"""``make soak``: the guarantees at volume, with the faults on, judged from the outside.

One run: a local broker of its own (free ports), a fresh database on the private PostgreSQL,
two workers (``python -m pipeline worker``, each its own data dir and loopback web port, each
running the outbox forwarder: one leads). Then ``SOAK_ORDERS`` orders (200,000 by default)
go through the order service and the outbox, concentrated: one SKU on a line of ~27% of the
orders, one customer placing ~11% of them, ~10% cancelled — half soon after they are placed
(before inventory answered, mostly) and half once the database says they are confirmed. Under
that load:

- poison records (undecodable JSON with an ``event_id`` header) go to ``orders.events`` at
  20% of the orders, and are replayed at 60% (``POST /dead-letters/replay``, by reason): they
  come back as dead letters again, which is all a poison pill can do;
- the forwarder-leading worker is SIGKILLed at 35% and restarted on its own data dir 5 s later;
- a retried ``StockSet``: the hot SKU's first stock set (sent by this module, older) is sent
  again, same bytes and id, at 50%, after a newer ``PUT /inventory`` was applied; once the group
  has committed past it, ``available + reserved`` must still be the newer stock.

The orders are placed in-process through :class:`pipeline.services.orders.OrderService` on the same
database (the order, its items and the outbox row in one transaction, exactly what ``POST
/orders`` does; the workers' forwarders, woken by NOTIFY, publish them). Measured here with
the agents idle, both ways take about the same CPU per order (4-5 ms, client and workers
together) and both place well over what the pipeline decides (service: 140-157 orders/s at
concurrency 8; HTTP through both workers: 112-251 at 16); in-process keeps that cost out of
the workers' event loops, which the agents being judged share (``SOAK_DRIVER=http`` to
compare). Placing pauses while ``SOAK_MAX_IN_FLIGHT`` orders (3,000) wait for inventory's
answer: the pipeline, not the driver, sets the pace, and what is in flight stays bounded (an
unbounded backlog grows every in-flight ledger entry with it, and measures nothing more).

Once drained (no order left ``created``, the outbox published, no consumer lag, the hot
customer's stats equal to the database's), it judges from the database, the topics and the
public API, not from the pipeline's own reconcile: per SKU ``reserved`` is the sum of the
confirmed orders' lines and ``available`` the stock less it; per customer (the hot one and 300
others) the stats equal the database's; each revenue window holds the orders created and
cancelled in it; then ``GET /admin/reconcile`` must be clean too. Beside that it reads every
changelog topic from its start with a plain consumer (during the run: compaction may drop old
records) and reports per table the largest value ever written against its bound, each
worker's peak RSS (``VmHWM``), orders/s accepted and events/s through the pipeline.

``SOAK_ORDERS``, ``SOAK_RATE`` (a cap on orders/s, 0: none), ``SOAK_DRIVER`` (service|http),
``SOAK_CONCURRENCY``, ``SOAK_MAX_IN_FLIGHT``, ``SOAK_DRAIN_TIMEOUT`` (seconds) or the same
as flags; ``TEST_POSTGRES_PORT`` picks the private PostgreSQL (55432). Exits 1 when a
check fails. Writes ``bench/results/soak.json`` (``soak-<orders>.json`` for another volume).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from pipeline.adapters.db.orders import OrderStore
from pipeline.adapters.db.schema import (
    dead_letters,
    make_engine,
    migrate,
    order_items,
    orders,
    outbox,
)
from pipeline.domain.events import StockSet, encode, utc_now
from pipeline.local.kafka import LocalKafka
from pipeline.local.postgres import LocalPostgres, default_data_dir
from pipeline.services.orders import OrderService
from pipeline.settings import PROJECT_ROOT, load_settings
from pipeline.web.answers import answer
from tests.integration.workers import Worker, WorkerFactory, create_topics, free_port

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
FULL_ORDERS = 200_000
HOT_SKU, HOT_CUSTOMER = "soak-sku-hot", "soak-customer-hot"
SKUS = [f"soak-sku-{i:03d}" for i in range(200)]
CUSTOMERS = [f"soak-customer-{i:04d}" for i in range(5000)]
HOT_SKU_SHARE, HOT_CUSTOMER_SHARE, CANCEL_SHARE, SECOND_LINE_SHARE = 0.27, 0.11, 0.10, 0.2
STOCK = 1_000_000_000  # the most PUT /inventory takes: orders are never short of stock
STALE_STOCK = 777_777_777  # the older set, retried
POISON = 20
# When each fault happens, as a share of the orders accepted.
POISON_AT, KILL_AT, STALE_SET_AT, REPLAY_AT = 0.20, 0.35, 0.50, 0.60
RESTART_AFTER_S = 5.0
LATE_CANCEL_AFTER_S = 20.0
WINDOW_S = 300  # the workers' revenue windows (WORKER_ENV)
WALL_TARGET_S = 30 * 60
MIN_FREE_DISK = 6 << 30  # the broker's directory filling the shared disk stops the run
TOPICS = [
    "orders.events",
    "inventory.commands",
    "inventory.events",
    "orders.status",
    "analytics.events",
]
WORKER_ENV = {
    "PIPELINE_LOG_EVENTS": "false",  # one log line per event per agent, 200k orders: no
    "PIPELINE_SESSION_TIMEOUT_SECONDS": "10",  # the killed worker's partitions move in seconds
    "PIPELINE_HEARTBEAT_SECONDS": "2",
    # Windows of 5 min kept 4 h: the judge sums every window of the run (GET shows 60).
    "PIPELINE_REVENUE_WINDOW_SECONDS": str(WINDOW_S),
    "PIPELINE_REVENUE_WINDOW_EXPIRES_SECONDS": "14400",
}
# The stated bound of one value per table (docs/guarantees.md, "Dedupe horizon and bounded state").
# Stock and stats grow with what their key sees within the dedupe horizon (and, for stock, the lines
# in flight): what is stated for any rate is that a value over
# pipeline.domain.horizon.MAX_VALUE_BYTES is refused. An order's progress: ~200 bytes + ~30 per
# line, at most PIPELINE_MAX_ORDER_ITEMS (100) lines; a revenue window grows with the records it
# receives within the horizon, and the same refusal over pipeline.domain.horizon.MAX_VALUE_BYTES
# applies; a notification marker: 78 bytes, written once.
BOUNDS = {
    "customer_stats": 900_000,
    "notifications_sent": 78,
    "order_progress": 200 + 30 * 100,
    "revenue": 900_000,
    "stock": 900_000,
}


def refused_connection(exc: BaseException | None) -> bool:
    """The database refused the connection (a shared server restarting): nothing was sent, so
    the same request can be made again."""
    while exc is not None:
        if isinstance(exc, ConnectionRefusedError) or type(exc).__name__ == "CannotConnectNowError":
            return True
        exc = exc.__cause__ or getattr(exc, "orig", None)
    return False


class SoakFailed(RuntimeError):
    """The run could not go on (a worker gone for good, the disk filling up)."""


@dataclass(frozen=True)
class Config:
    orders: int = FULL_ORDERS
    rate: float = 0.0
    driver: str = "service"
    concurrency: int = 8
    max_in_flight: int = 3000
    drain_timeout: float = 1800.0
    seed: int = 14

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> Config:
        env = os.environ
        p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
        p.add_argument("--orders", type=int, default=int(env.get("SOAK_ORDERS", FULL_ORDERS)))
        p.add_argument(
            "--rate",
            type=float,
            default=float(env.get("SOAK_RATE", 0)),
            help="cap on orders/s placed (0: as fast as the driver goes)",
        )
        p.add_argument(
            "--driver", choices=("service", "http"), default=env.get("SOAK_DRIVER", "service")
        )
        p.add_argument("--concurrency", type=int, default=int(env.get("SOAK_CONCURRENCY", 8)))
        p.add_argument(
            "--max-in-flight",
            type=int,
            default=int(env.get("SOAK_MAX_IN_FLIGHT", 3000)),
            help="pause placing while this many orders wait for inventory's answer (0: never)",
        )
        p.add_argument(
            "--drain-timeout", type=float, default=float(env.get("SOAK_DRAIN_TIMEOUT", 1800))
        )
        p.add_argument("--seed", type=int, default=14)
        a = p.parse_args(argv)
        if a.orders < 1000 or a.concurrency < 1:
            p.error("--orders must be at least 1000 and --concurrency at least 1")
        return cls(
            a.orders, a.rate, a.driver, a.concurrency, a.max_in_flight, a.drain_timeout, a.seed
        )


# -- the load (pure) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    body: dict[str, Any]
    cancel: str  # "" (kept), "early" (soon after it is placed) or "late" (once confirmed)


def order_plan(seed: int) -> Iterator[Planned]:
    """Endless order bodies, the same for the same seed: the hot customer places a
    ``HOT_CUSTOMER_SHARE`` of them and the hot SKU is on a line of a ``HOT_SKU_SHARE``; a
    ``SECOND_LINE_SHARE`` have a second line (another SKU); a ``CANCEL_SHARE`` are cancelled."""
    rng = random.Random(seed)
    while True:
        customer = HOT_CUSTOMER if rng.random() < HOT_CUSTOMER_SHARE else rng.choice(CUSTOMERS)
        first = HOT_SKU if rng.random() < HOT_SKU_SHARE else rng.choice(SKUS)
        skus = [first]
        if rng.random() < SECOND_LINE_SHARE:
            skus.append(rng.choice([s for s in rng.sample(SKUS, 2) if s != first]))
        items = [
            {
                "sku": sku,
                "quantity": rng.randint(1, 3),
                "unit_price": f"{rng.randrange(199, 9999) / 100:.2f}",
            }
            for sku in skus
        ]
        draw = rng.random()
        cancel = "early" if draw < CANCEL_SHARE / 2 else "late" if draw < CANCEL_SHARE else ""
        yield Planned(
            {"customer_id": customer, "customer_email": f"{customer}@example.com", "items": items},
            cancel,
        )


# -- the judge (pure) ------------------------------------------------------------------------


@dataclass
class Truth:
    """What the database says, after the drain."""

    statuses: Counter[str] = field(default_factory=Counter)
    orders: int = 0
    hot_sku_lines: int = 0
    hot_customer_orders: int = 0
    reserved: dict[str, int] = field(default_factory=dict)  # per SKU: confirmed lines' units
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)  # the stats' figures
    cancelled_from: Counter[str] = field(default_factory=Counter)  # previous status
    revenue: dict[int, list[Any]] = field(default_factory=dict)  # window -> [net, orders]


def customer_figures(rows: list[tuple[str, Decimal]]) -> dict[str, Any]:
    """The public stats' figures from one customer's (status, total) rows."""
    live = [total for status, total in rows if status != "cancelled"]
    return {
        "order_count": len(rows),
        "cancelled_count": len(rows) - len(live),
        "total_spent": f"{sum(live, Decimal('0.00')):.2f}",
    }


def share_failures(t: Truth, planned: int) -> list[str]:
    """The load was what the issue asks for: every order placed is in the database; the hot SKU
    on a line of at least 25% of the orders, the hot customer at least 10%, 8-12% cancelled
    (at the full volume: at least 50,000 lines and 20,000 orders)."""
    out = []
    if t.orders != planned:
        out.append(f"{t.orders} orders in the database, {planned} placed")
    need_lines = max(t.orders // 4, 50_000 if planned >= FULL_ORDERS else 0)
    if t.hot_sku_lines < need_lines:
        out.append(f"hot SKU on {t.hot_sku_lines} lines, fewer than {need_lines}")
    need_orders = max(t.orders // 10, 20_000 if planned >= FULL_ORDERS else 0)
    if t.hot_customer_orders < need_orders:
        out.append(f"hot customer placed {t.hot_customer_orders} orders, fewer than {need_orders}")
    cancelled = t.statuses["cancelled"]
    if not 0.08 * t.orders <= cancelled <= 0.12 * t.orders:
        out.append(f"{cancelled} of {t.orders} orders cancelled, not about 10%")
    if not (t.cancelled_from["created"] and t.cancelled_from["confirmed"]):
        out.append(f"cancellations not both before and after the decision: {t.cancelled_from}")
    return out


def status_failures(t: Truth) -> list[str]:
    out = []
    if t.statuses["created"]:
        out.append(f"{t.statuses['created']} orders still 'created' after the drain")
    if t.statuses["rejected"]:  # stock is plentiful: a rejection is a miscount somewhere
        out.append(f"{t.statuses['rejected']} orders rejected with stock for all of them")
    return out


def stock_failures(reserved: Mapping[str, int], bodies: Mapping[str, Any], stock: int) -> list[str]:
    """Per SKU: ``reserved`` is the confirmed orders' units and ``available`` the rest."""
    out = []
    for sku, units in sorted(reserved.items()):
        want = {"sku": sku, "available": stock - units, "reserved": units}
        if bodies.get(sku) != want:
            out.append(f"stock of {sku}: {bodies.get(sku)}, the database says {want}")
    return out


def customer_failures(
    truth: Mapping[str, Mapping[str, Any]], bodies: Mapping[str, Any]
) -> list[str]:
    out = []
    for customer, want in sorted(truth.items()):
        body = bodies.get(customer) or {}
        got = {k: body.get(k) for k in want}
        if got != want:
            out.append(f"stats of {customer}: {got}, the database says {dict(want)}")
    return out


def window_start(at: datetime) -> int:
    """The start of the tumbling revenue window (``WINDOW_S``) that ``at`` falls in."""
    return int(at.timestamp()) // WINDOW_S * WINDOW_S


def revenue_failures(windows: list[dict[str, Any]], want: Mapping[int, list[Any]]) -> list[str]:
    """Per window: the net revenue and order count the table holds against the database's
    (orders counted in the window they were created in, cancellations in theirs)."""
    got = {
        window_start(datetime.fromisoformat(w["window_start"])): [
            Decimal(w["revenue"]),
            w["orders"],
        ]
        for w in windows
    }
    out = []
    for start in sorted(set(got) | set(want)):
        g, w = got.get(start, [0, 0]), want.get(start, [0, 0])
        if g != w:
            at = datetime.fromtimestamp(start, UTC).strftime("%H:%M:%S")
            out.append(f"revenue window {at}: {g[1]} orders, {g[0]}; the database {w[1]}, {w[0]}")
    return out


def misordered_revenue(records: Iterable[tuple[str, str, int, Decimal, int]]) -> list[Any]:
    """What the windows' rule (``tables.revenue``: a record at or below its stream's highest
    offset applied in its window is a repeat) drops that is no repeat, for ``records`` as
    (event id, position, window, amount, orders) in the revenue topic's order: first copies that
    arrive after a record of the same stream with a higher position. Returns [count, net
    amount, net orders]."""
    marks: dict[tuple[int, str], int] = {}
    seen: set[str] = set()
    dropped: list[Any] = [0, Decimal("0.00"), 0]
    for event_id, position, window, amount, count in records:
        first = event_id not in seen
        seen.add(event_id)
        stream, _, offset = position.partition("@")
        if not offset.isdigit():
            continue
        if int(offset) <= marks.get((window, stream), -1):
            if first:
                dropped = [dropped[0] + 1, dropped[1] + amount, dropped[2] + count]
            continue
        marks[(window, stream)] = int(offset)
    return dropped


@dataclass
class TableSizes:
    """What one table's changelog received: records, bytes, and its largest value."""

    records: int = 0
    total_bytes: int = 0
    largest: int = 0
    largest_key: bytes = b""
    largest_value: bytes = b""

    def add(self, key: bytes | None, value: bytes | None) -> None:
        size = 0 if value is None else len(value)
        self.records += 1
        self.total_bytes += size
        if value is not None and size > self.largest:
            self.largest, self.largest_key, self.largest_value = size, key or b"", value


DIGEST_CHARS = 16  # a revenue window keeps each id as a 16-character digest (tables.revenue)


def entries(table: str, raw: bytes) -> int | None:
    """How many dedupe/ledger entries a value holds (what grows with traffic)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    inner = {
        "stock": "lines",
        "customer_stats": "seen",
        "order_progress": "lines",
        "revenue": "seen",
    }.get(table)
    if table == "revenue" and isinstance(value.get("ids"), dict):  # digests packed per second
        return sum(len(packed) // DIGEST_CHARS for packed in value["ids"].values())
    if inner is None or not isinstance(value.get(inner), dict | list):
        return None
    return len(value[inner])


def size_rows(tables: Mapping[str, TableSizes]) -> list[dict[str, Any]]:
    """Per table: the largest value against its bound, with what the changelog received."""
    rows = []
    for name, s in sorted(tables.items()):
        bound = BOUNDS.get(name)
        rows.append(
            {
                "table": name,
                "largest_bytes": s.largest,
                "bound_bytes": bound,
                "within_bound": bound is not None and s.largest <= bound,
                "largest_key": s.largest_key.decode(errors="replace")[:64],
                "entries_in_largest": entries(name, s.largest_value) if s.largest_value else None,
                "records": s.records,
                "changelog_mib": round(s.total_bytes / 2**20, 1),
            }
        )
    return rows


def rereads(processed: Mapping[str, float], records: Mapping[str, int]) -> dict[str, int]:
    """Per agent: records handled beyond those its sources hold (source and redelivery topics),
    i.e. handled again after the kill (a lower bound: the killed worker's count is read just
    before the kill, so what it handled in the last moment is missing)."""
    return {a: int(processed.get(a, 0)) - n for a, n in sorted(records.items())}


def render(result: Mapping[str, Any]) -> str:
    """The soak's figures and checks as text."""
    r = result
    lines = [
        f"soak: {r['orders']:,} orders ({r['driver']} driver), {r['cancelled']:,} cancelled "
        f"({r['cancelled_from']}), hot SKU on {r['hot_sku_lines']:,} lines, hot customer "
        f"{r['hot_customer_orders']:,} orders",
        f"  orders accepted at {r['orders_per_s']:.1f}/s over {r['placing_s']:.0f} s; "
        f"pipeline {r['events_per_s']:.1f} events/s (orders + cancellations) over "
        f"{r['wall_s']:.0f} s from the first order to drained "
        f"({r['agent_events_per_s']:.0f} agent events/s); drained {r['drain_s']:.0f} s after "
        f"the last order; {r['cpu_ms_per_order']:.1f} ms of the machine's CPU per order",
        f"  the whole run {r['command_s'] / 60:.1f} min: start-up (broker, database, workers) "
        f"{r['startup_s']:.0f} s, judging {r['judging_s']:.0f} s",
        f"  Kafka {r['kafka']}, {r['machine']['cpus']} x {r['machine']['cpu_model']}, "
        f"load average at the end {r['load_average']}",
        "",
        f"  {'table':<16}{'largest value':>15}{'bound':>10}{'entries':>9}{'records':>11}"
        f"{'MiB written':>13}  largest key",
    ]
    for row in r["tables"]:
        ok = "" if row["within_bound"] else "  OVER"
        lines.append(
            f"  {row['table']:<16}{row['largest_bytes']:>15,}{row['bound_bytes'] or 0:>10,}"
            f"{row['entries_in_largest'] if row['entries_in_largest'] is not None else '-':>9}"
            f"{row['records']:>11,}{row['changelog_mib']:>13,.1f}  {row['largest_key']}{ok}"
        )
    lines.append("")
    for w in r["workers"]:
        lines.append(
            f"  worker {w['name']} pid {w['pid']}: peak RSS {w['peak_rss_mib']:.0f} MiB"
            f" ({w['end']})"
        )
    f = r["faults"]
    lines += [
        f"  kill: {f['kill'].get('worker')} SIGKILLed at order {f['kill'].get('at_order', '-')}, "
        f"ready again {f['kill'].get('ready_after_s', '-')} s after; handled again since "
        f"(lower bound) {f['kill'].get('handled_again', {})}",
        f"  retried StockSet: {f['stock_set']}",
        f"  replay: {f['replay']}",
        f"  revenue topic: first copies applied out of stream order (windows dedupe by id "
        f"within the horizon, so these still count): {f.get('revenue_misordered')}",
        f"  reconcile: ok={r['reconcile'].get('ok')} checked={r['reconcile'].get('checked')}",
        "",
    ]
    lines += [f"  FAILED: {x}" for x in r["failures"]] or ["  every check passed"]
    if r["command_s"] > WALL_TARGET_S:
        lines.append(f"  note: {r['command_s'] / 60:.1f} min, over the 30 min the issue allows")
    return "\n".join(lines)


# -- the parts that talk to the world ---------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), "")
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(memory_kib / 2**20, 1)}


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``: every state
    but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def samples(text_: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, float(s.value))
        for fam in text_string_to_metric_families(text_)
        for s in fam.samples
        if s.name == name
    ]


def peak_rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class ChangelogWatch:
    """Every record the app's changelog topics receive, read from their start by a plain
    consumer while the run goes on (the broker's compaction may drop old records later)."""

    def __init__(self, bootstrap: str, app_id: str) -> None:
        self.bootstrap, self.prefix = bootstrap, f"{app_id}-"
        self.tables: dict[str, TableSizes] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._tps: list[TopicPartition] = []

    async def start(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            names = [
                t
                for t in await admin.list_topics()
                if t.startswith(self.prefix) and t.endswith("-changelog")
            ]
            described = await admin.describe_topics(names)
        finally:
            await admin.close()
        for d in described:
            self._tps += [TopicPartition(d["topic"], p["partition"]) for p in d["partitions"]]
            self.tables[d["topic"][len(self.prefix) : -len("-changelog")]] = TableSizes()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            check_crcs=False,
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=4 << 20,
            # No hurry (it only has to read each record before compaction drops it): a fetch
            # waits for 1 MiB or half a second, not for any one record, so the watch costs the
            # broker a couple of requests a second rather than one per changelog write.
            fetch_min_bytes=1 << 20,
            fetch_max_wait_ms=500,
        )
        await self._consumer.start()
        self._consumer.assign(self._tps)
        await self._consumer.seek_to_beginning(*self._tps)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                sizes = self.tables[tp.topic[len(self.prefix) : -len("-changelog")]]
                for record in records:
                    sizes.add(record.key, record.value)

    async def finish(self, within: float = 600) -> None:
        """Read up to the changelogs' current ends, then stop."""
        assert self._consumer is not None and self._task is not None
        ends = await self._consumer.end_offsets(self._tps)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not self._task.done():
            positions = [await self._consumer.position(tp) for tp in self._tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, self._tps, strict=True)):
                break
            await asyncio.sleep(0.5)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._consumer.stop()


class Driver:
    """Places and cancels orders: in-process through the order service on the database, or
    over HTTP through the workers. Either way a success means order, items and outbox row are
    committed together."""

    def __init__(self, kind: str, url: str, concurrency: int, workers: list[Worker]) -> None:
        self.kind, self.workers = kind, workers
        self.engine = make_engine(url, pool_size=concurrency + 4, max_overflow=4)
        self.service = OrderService(OrderStore(self.engine), max_items=100)
        self.session: aiohttp.ClientSession | None = None
        if kind == "http":
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=60),
                connector=aiohttp.TCPConnector(limit=concurrency),
            )
        self._turn = 0

    async def place(self, body: dict[str, Any]) -> tuple[int, Any]:
        if self.session is None:
            status, answered, _ = answer(await self.service.place_order(body))
            return status, answered
        return await self._post("/orders", body)

    async def cancel(self, order_id: str) -> tuple[int, Any]:
        if self.session is None:
            status, answered, _ = answer(await self.service.cancel_order(order_id))
            return status, answered
        return await self._post(f"/orders/{order_id}/cancel", {})

    async def _post(self, path: str, body: Any) -> tuple[int, Any]:
        assert self.session is not None
        for _ in range(100):  # a worker being killed refuses connections: the other answers
            live = [w for w in self.workers if w.proc.poll() is None]
            self._turn += 1
            url = live[self._turn % len(live)].url if live else ""
            try:
                async with self.session.post(url + path, json=body) as resp:
                    return resp.status, await resp.json(content_type=None)
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.1)
        return 0, "no worker answered"

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.engine.dispose()


@dataclass
class Incarnation:
    name: str
    pid: int
    peak_rss_mib: float = float("nan")
    end: str = "running"
    processed: dict[str, float] = field(default_factory=dict)


class Soak:
    def __init__(
        self,
        cfg: Config,
        factory: WorkerFactory,
        workers: list[Worker],
        url: str,
        bootstrap: str,
        broker_dir: Path,
    ) -> None:
        self.cfg, self.factory, self.workers, self.url = cfg, factory, workers, url
        self.bootstrap, self.broker_dir, self.app_id = bootstrap, broker_dir, factory.app_id
        self.incarnations = [Incarnation(w.name, w.proc.pid) for w in workers]
        self.engine = make_engine(url)
        self.driver = Driver(cfg.driver, url, cfg.concurrency, workers)
        self.watch = ChangelogWatch(bootstrap, self.app_id)
        self.plan = order_plan(cfg.seed)
        self.rng = random.Random(cfg.seed + 1)
        self.next_index = 0
        self.accepted: set[str] = set()
        self.cancels: list[tuple[float, int, str, str]] = []  # (due, seq, order id, kind)
        self.cancelled: Counter[str] = Counter()
        self.errors: list[str] = []
        self.first_at = self.last_at = 0.0
        self.first_cpu_s = 0.0  # the machine's busy CPU seconds when the first order was placed
        self.placing_done = asyncio.Event()
        self.faults: dict[str, Any] = {"kill": {}, "stock_set": {}, "replay": {}}
        self.timeline: list[dict[str, Any]] = []
        self.stale_set: tuple[bytes, list[tuple[str, bytes]]] | None = None
        self.checks: list[asyncio.Task[None]] = []
        self.windows: list[dict[str, Any]] = []
        self.undecided = (0, 0)  # orders 'created' at the last count, orders placed then
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    # -- helpers --

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    async def get(self, path: str, within: float = 60) -> tuple[int, Any]:
        for _ in range(100):  # a worker being killed, or a rebalance (503), answers later
            live = self.live()
            if live:
                try:
                    async with self.http.get(
                        live[0].url + path, timeout=aiohttp.ClientTimeout(total=within)
                    ) as r:
                        if r.status != 503:
                            return r.status, await r.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError):
                    pass
            await asyncio.sleep(0.5)
        raise SoakFailed(f"GET {path}: no worker answered")

    async def send(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.live()[0].url + path, json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    async def metrics(self, worker: Worker) -> str:
        async with self.http.get(worker.url + "/metrics") as resp:
            return await resp.text()

    async def rows(self, query: Any) -> list[Any]:
        """The rows of a read, waiting out a database that is restarting (a shared server)."""
        for _ in range(300):
            try:
                async with self.engine.connect() as conn:
                    return list(await conn.execute(query))
            except (DBAPIError, OSError):
                await asyncio.sleep(1)
        raise SoakFailed("the database did not answer for 5 minutes")

    async def scalar(self, query: Any) -> Any:
        return (await self.rows(query))[0][0]

    async def reached(self, share: float) -> None:
        while len(self.accepted) < share * self.cfg.orders and not self.placing_done.is_set():
            await asyncio.sleep(0.2)

    # -- setup: stock, with the older set that is retried later --

    async def set_stock(self) -> None:
        older = StockSet(str(uuid.uuid4()), HOT_SKU, STALE_STOCK, utc_now())
        headers = [("event_id", older.event_id.encode()), ("event_type", b"StockSet")]
        self.stale_set = (encode(older), headers)
        await self.produce("inventory.commands", HOT_SKU.encode(), *self.stale_set)
        await self.wait_stock(HOT_SKU, STALE_STOCK)
        for sku in [HOT_SKU, *SKUS]:  # newer sets, through the API
            status, body = await self.send("PUT", f"/inventory/{sku}", {"available": STOCK})
            if status != 202:
                raise SoakFailed(f"PUT /inventory/{sku}: {status} {body}")
        for sku in [HOT_SKU, *SKUS]:
            await self.wait_stock(sku, STOCK)

    async def wait_stock(self, sku: str, available: int, within: float = 120) -> None:
        deadline = time.monotonic() + within
        body: Any = None
        while time.monotonic() < deadline:
            status, body = await self.get(f"/inventory/{sku}")
            if status == 200 and body["available"] == available:
                return
            await asyncio.sleep(0.2)
        raise SoakFailed(f"stock of {sku} is {body}, not {available}, after {within} s")

    async def produce(
        self, base: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
    ) -> Any:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            return await producer.send_and_wait(
                self.factory.topic(base), value, key=key, headers=headers
            )
        finally:
            await producer.stop()

    # -- the load --

    def in_flight(self) -> int:
        """Orders waiting for inventory's answer: the last count plus those placed since."""
        return self.undecided[0] + len(self.accepted) - self.undecided[1]

    async def count_undecided(self) -> None:
        query = select(func.count()).select_from(orders).where(orders.c.status == "created")
        while True:
            placed = len(self.accepted)
            self.undecided = (int(await self.scalar(query)), placed)
            await asyncio.sleep(2)

    async def attempt(self, call: Any, arg: Any) -> tuple[int, Any]:
        """``call(arg)``, again while the database refuses connections; an error as status 0."""
        for _ in range(300):
            try:
                return tuple(await call(arg))  # type: ignore[return-value]
            except (DBAPIError, OSError, aiohttp.ClientError) as exc:
                if not refused_connection(exc):
                    return 0, repr(exc)
            await asyncio.sleep(1)
        return 0, "the database refused connections for 5 minutes"

    async def place_orders(self) -> None:
        started = time.monotonic()

        async def placer() -> None:
            while self.next_index < self.cfg.orders:
                n, self.next_index = self.next_index, self.next_index + 1
                planned = next(self.plan)
                while 0 < self.cfg.max_in_flight < self.in_flight():
                    await asyncio.sleep(0.2)
                if self.cfg.rate > 0:
                    await asyncio.sleep(max(0.0, started + n / self.cfg.rate - time.monotonic()))
                status, body = await self.attempt(self.driver.place, planned.body)
                now = time.monotonic()
                if status != 201:
                    self.errors.append(f"order {n} refused: {status} {str(body)[:200]}")
                    continue
                if not self.first_at:
                    self.first_at, self.first_cpu_s = now, busy_cpu_s()
                self.last_at = now
                self.accepted.add(body["order_id"])
                if planned.cancel == "early":
                    due = now + self.rng.uniform(0.1, 3.0)
                elif planned.cancel == "late":
                    due = now + LATE_CANCEL_AFTER_S
                else:
                    continue
                heapq.heappush(self.cancels, (due, n, body["order_id"], planned.cancel))

        try:
            await asyncio.gather(*(placer() for _ in range(self.cfg.concurrency)))
        finally:
            self.placing_done.set()

    async def cancel_orders(self) -> None:
        """Early cancellations when due; late ones once the database says confirmed (looked up
        in batches), so some cancellations certainly follow inventory's answer."""
        while not (self.placing_done.is_set() and not self.cancels):
            now = time.monotonic()
            due: list[tuple[float, int, str, str]] = []
            while self.cancels and self.cancels[0][0] <= now and len(due) < 500:
                due.append(heapq.heappop(self.cancels))
            late = [d for d in due if d[3] == "late"]
            status_of: dict[str, str] = {}
            if late:
                ids = [d[2] for d in late]
                query = select(orders.c.order_id, orders.c.status).where(orders.c.order_id.in_(ids))
                status_of = {order_id: status for order_id, status in await self.rows(query)}
            for item in due:
                _, n, order_id, kind = item
                if kind == "late" and status_of.get(order_id) == "created":
                    if self.placing_done.is_set() and now - self.last_at > self.cfg.drain_timeout:
                        self.errors.append(f"order {order_id} never decided: not cancelled")
                    else:
                        heapq.heappush(self.cancels, (now + 5.0, n, order_id, kind))
                    continue
                if kind == "late" and status_of.get(order_id) != "confirmed":
                    self.errors.append(
                        f"order {order_id} is {status_of.get(order_id)}, not confirmed"
                    )
                    continue
                status, body = await self.attempt(self.driver.cancel, order_id)
                if status == 200:
                    self.cancelled[kind] += 1
                else:
                    self.errors.append(f"cancel of {order_id}: {status} {str(body)[:200]}")
            if not due:
                await asyncio.sleep(0.2)

    # -- the faults --

    async def inject_faults(self) -> None:
        await self.reached(POISON_AT)
        await self.poison()
        await self.reached(KILL_AT)
        await self.kill_and_restart()
        await self.reached(STALE_SET_AT)
        await self.retry_stock_set()
        await self.reached(REPLAY_AT)
        await self.replay()

    async def poison(self) -> None:
        ids = [str(uuid.uuid4()) for _ in range(POISON)]
        for n, event_id in enumerate(ids):
            headers = [("event_id", event_id.encode()), ("event_type", b"OrderCreated")]
            await self.produce(
                "orders.events",
                f"soak-poison-{n}".encode(),
                b'{"event_type": "OrderCreated", "order_id": ',
                headers,
            )
        self.faults["replay"].update(poison_sent=POISON, at_order=len(self.accepted))

    async def poison_letters(self, replayed: bool) -> int:
        query = (
            select(func.count())
            .select_from(dead_letters)
            .where(
                dead_letters.c.reason == "poison",
                dead_letters.c.replays > 0 if replayed else dead_letters.c.replays == 0,
            )
        )
        return int(await self.scalar(query))

    async def kill_and_restart(self) -> None:
        leaders = []
        for w in self.live():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                if any(
                    v == 1
                    for _, v in samples(await self.metrics(w), "pipeline_outbox_forwarder_active")
                ):
                    leaders.append(w)
        victim = (leaders or self.live())[0]
        text_ = await self.metrics(victim)
        incarnation = next(i for i in self.incarnations if i.pid == victim.proc.pid)
        incarnation.peak_rss_mib = peak_rss_mib(victim.proc.pid)
        incarnation.processed = {
            lab["agent"]: v for lab, v in samples(text_, "pipeline_events_processed_total")
        }
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        killed_at = time.monotonic()
        incarnation.end = "SIGKILLed"
        self.faults["kill"].update(
            worker=victim.name, at_order=len(self.accepted), forwarder_leader=bool(leaders)
        )
        await asyncio.sleep(RESTART_AFTER_S)
        again = await asyncio.to_thread(
            self.factory.start, victim.name, data_dir=victim.data_dir, wait=False, **WORKER_ENV
        )
        self.workers[self.workers.index(victim)] = again
        self.incarnations.append(Incarnation(again.name, again.proc.pid))
        await asyncio.to_thread(again.wait_ready, 600)
        self.faults["kill"]["ready_after_s"] = round(time.monotonic() - killed_at, 1)

    async def retry_stock_set(self) -> None:
        """The older set again, same bytes and id, after the newer one was applied."""
        assert self.stale_set is not None
        sent = await self.produce("inventory.commands", HOT_SKU.encode(), *self.stale_set)
        self.faults["stock_set"].update(
            at_order=len(self.accepted), partition=sent.partition, offset=sent.offset, applied=None
        )
        self.checks.append(asyncio.create_task(self.check_stock_set(sent.partition, sent.offset)))

    async def check_stock_set(self, partition: int, offset: int) -> None:
        tp = TopicPartition(self.factory.topic("inventory.commands"), partition)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            while True:
                committed = await admin.list_consumer_group_offsets(self.app_id, partitions=[tp])
                if tp in committed and committed[tp].offset > offset:
                    break
                await asyncio.sleep(2)
        finally:
            await admin.close()
        status, body = await self.get(f"/inventory/{HOT_SKU}")
        applied = status == 200 and body["available"] + body["reserved"] != STOCK
        self.faults["stock_set"].update(
            applied=applied, stock_after=body, handled_after_order=len(self.accepted)
        )

    async def replay(self) -> None:
        deadline = time.monotonic() + 300
        while await self.poison_letters(False) < 2 * POISON and time.monotonic() < deadline:
            await asyncio.sleep(1)
        status, body = await self.send("POST", "/dead-letters/replay", {"reason": "poison"})
        self.faults["replay"].update(
            at_order=len(self.accepted),
            http_status=status,
            replayed=len(body.get("replayed", ())) if isinstance(body, dict) else None,
            refused=len(body.get("refused", ())) if isinstance(body, dict) else None,
        )

    # -- progress, drain --

    async def lag(self) -> int | None:
        total = 0
        for w in self.live():
            try:
                total += int(
                    sum(v for _, v in samples(await self.metrics(w), "pipeline_consumer_lag"))
                )
            except (aiohttp.ClientError, TimeoutError):
                return None
        return total

    async def progress(self, started: float) -> None:
        while True:
            await asyncio.sleep(15)
            undecided = await self.scalar(
                select(func.count()).select_from(orders).where(orders.c.status == "created")
            )
            pending = await self.scalar(
                select(func.count()).select_from(outbox).where(outbox.c.status != "published")
            )
            lag = await self.lag()
            sample = {
                "t": round(time.monotonic() - started, 1),
                "accepted": len(self.accepted),
                "cancelled": sum(self.cancelled.values()),
                "undecided": undecided,
                "outbox_waiting": pending,
                "lag": lag,
                "load": round(os.getloadavg()[0], 2),
            }
            self.timeline.append(sample)
            print("  ".join(f"{k} {v}" for k, v in sample.items()), flush=True)
            free = shutil.disk_usage(self.broker_dir).free
            if free < MIN_FREE_DISK:
                raise SoakFailed(f"only {free / 2**30:.1f} GiB left on the broker's disk")

    async def hot_customer_agrees(self) -> bool:
        query = select(orders.c.status, orders.c.total).where(orders.c.customer_id == HOT_CUSTOMER)
        want = customer_figures([(status, total) for status, total in await self.rows(query)])
        status, body = await self.get(f"/customers/{HOT_CUSTOMER}/stats")
        return status == 200 and {k: body.get(k) for k in want} == want

    async def drained(self) -> float:
        """Seconds from now until nothing is in flight; raises after the drain timeout."""
        began = time.monotonic()
        state: dict[str, Any] = {}
        while time.monotonic() - began < self.cfg.drain_timeout:
            state = {
                "undecided": await self.scalar(
                    select(func.count()).select_from(orders).where(orders.c.status == "created")
                ),
                "outbox_waiting": await self.scalar(
                    select(func.count()).select_from(outbox).where(outbox.c.status != "published")
                ),
                "lag": await self.lag(),
            }
            idle = state == {"undecided": 0, "outbox_waiting": 0, "lag": 0}
            if idle and await self.hot_customer_agrees():
                return time.monotonic() - began
            await asyncio.sleep(2)
        raise SoakFailed(f"not drained within {self.cfg.drain_timeout:.0f} s: {state}")

    # -- the judge --

    async def truth(self) -> Truth:
        t = Truth()
        columns = (orders.c.customer_id, orders.c.status, orders.c.total, orders.c.created_at)
        rows = await self.rows(select(*columns))
        confirmed = await self.rows(
            select(order_items.c.sku, func.sum(order_items.c.quantity))
            .join(orders, orders.c.order_id == order_items.c.order_id)
            .where(orders.c.status == "confirmed")
            .group_by(order_items.c.sku)
        )
        hot = select(func.count()).select_from(order_items).where(order_items.c.sku == HOT_SKU)
        t.hot_sku_lines = int(await self.scalar(hot))
        previous = text(
            "SELECT payload::json->>'previous_status', count(*) FROM outbox "
            "WHERE event_type = 'OrderCancelled' GROUP BY 1"
        )
        t.cancelled_from = Counter({k: int(v) for k, v in await self.rows(previous)})
        per_customer: dict[str, list[tuple[str, Decimal]]] = {}
        for customer, status, total, created_at in rows:
            per_customer.setdefault(customer, []).append((status, total))
            t.statuses[status] += 1
            window = t.revenue.setdefault(window_start(created_at), [Decimal("0.00"), 0])
            window[0], window[1] = window[0] + total, window[1] + 1
        cancels = select(outbox.c.payload).where(outbox.c.event_type == "OrderCancelled")
        for (payload,) in await self.rows(cancels):
            event = json.loads(payload)
            at = window_start(datetime.fromisoformat(event["cancelled_at"]))
            window = t.revenue.setdefault(at, [Decimal("0.00"), 0])
            window[0], window[1] = window[0] - Decimal(event["total"]), window[1] - 1
        t.orders = len(rows)
        t.hot_customer_orders = len(per_customer.get(HOT_CUSTOMER, ()))
        t.reserved = {sku: 0 for sku in [HOT_SKU, *SKUS]} | {s: int(n) for s, n in confirmed}
        sample = self.rng.sample(sorted(per_customer), min(300, len(per_customer)))
        t.customers = {
            c: customer_figures(per_customer[c])
            for c in {HOT_CUSTOMER, *sample}
            if c in per_customer
        }
        return t

    async def judge(self, t: Truth) -> tuple[list[str], dict[str, Any]]:
        failures = [*self.errors[:20], *share_failures(t, len(self.accepted)), *status_failures(t)]
        if len(self.errors) > 20:
            failures.append(f"... and {len(self.errors) - 20} more refusals")
        limit = asyncio.Semaphore(16)

        async def read(path: str) -> Any:
            async with limit:
                status, body = await self.get(path)
                return body if status == 200 else None

        skus = sorted(t.reserved)
        stock = await asyncio.gather(*(read(f"/inventory/{quote(s)}") for s in skus))
        failures += stock_failures(t.reserved, dict(zip(skus, stock, strict=True)), STOCK)
        names = sorted(t.customers)
        stats = await asyncio.gather(*(read(f"/customers/{quote(c)}/stats") for c in names))
        failures += customer_failures(t.customers, dict(zip(names, stats, strict=True)))
        status, revenue = await self.get("/analytics/revenue")
        self.windows = revenue["windows"] if status == 200 else []
        failures += revenue_failures(self.windows, t.revenue)
        records = await self.revenue_topic()
        count, amount, net = misordered_revenue(records)
        self.faults["revenue_misordered"] = {
            "records": len(records),
            "first_copies_below_mark": count,
            "amount": str(amount),
            "orders": net,
        }
        status, report = await self.get("/admin/reconcile", within=1200)
        if status != 200 or not report.get("ok"):
            diffs = report.get("differences", report) if isinstance(report, dict) else report
            failures.append(f"reconcile is not clean ({status}): {str(diffs)[:2000]}")
        return failures, report if isinstance(report, dict) else {}

    async def fault_failures(self) -> list[str]:
        out = []
        if "ready_after_s" not in self.faults["kill"]:
            out.append("the killed worker did not come back")
        s = self.faults["stock_set"]
        if s.get("applied") is not False:
            out.append(f"the retried older StockSet was applied or never handled: {s}")
        r = self.faults["replay"]
        r["letters_back_after_replay"] = back = await self.poison_letters(True)
        if r.get("replayed") != 2 * POISON or back != 2 * POISON:
            out.append(f"replay of the {2 * POISON} poison dead letters: {r}")
        return out

    async def revenue_topic(self) -> list[tuple[str, str, int, Decimal, int]]:
        """Every record of the revenue topic, in order, as ``misordered_revenue`` takes them."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        tp = TopicPartition(self.factory.topic("analytics.revenue"), 0)
        out = []
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while await consumer.position(tp) < end:
                for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, ()):
                    value = json.loads(record.value)
                    window = record.timestamp // 1000 // WINDOW_S * WINDOW_S
                    out.append(
                        (
                            value["event_id"],
                            value.get("position", ""),
                            window,
                            Decimal(value["amount"]),
                            int(value["orders"]),
                        )
                    )
        finally:
            await consumer.stop()
        return out

    async def source_records(self) -> dict[str, int]:
        """Per agent, the records its source and redelivery topics hold."""
        sources = {
            "analytics": "orders.events",
            "inventory-requests": "orders.events",
            "inventory": "inventory.commands",
            "order-status": "inventory.events",
            "notifications": "orders.status",
            "revenue": "analytics.revenue",
        }
        names = {
            a: [self.factory.topic(b), self.factory.topic(f"redeliver.{a}")]
            for a, b in sources.items()
        }
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(
                sorted({n for ns in names.values() for n in ns})
            )
        finally:
            await admin.close()
        tps = {
            d["topic"]: [TopicPartition(d["topic"], p["partition"]) for p in d["partitions"]]
            for d in described
        }
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        await consumer.start()
        try:
            every = [tp for group in tps.values() for tp in group]
            ends, starts = (
                await consumer.end_offsets(every),
                await consumer.beginning_offsets(every),
            )
        finally:
            await consumer.stop()
        return {
            a: sum(ends[tp] - starts[tp] for n in ns for tp in tps.get(n, ()))
            for a, ns in names.items()
        }

    # -- the run --

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        await self.watch.start()
        await self.set_stock()
        print(
            f"stock set; placing {self.cfg.orders:,} orders ({self.cfg.driver} driver, "
            f"concurrency {self.cfg.concurrency}, rate cap {self.cfg.rate or 'none'}, "
            f"at most {self.cfg.max_in_flight or 'any number of'} orders in flight)",
            flush=True,
        )
        watchers = [
            asyncio.create_task(self.progress(started)),
            asyncio.create_task(self.count_undecided()),
        ]
        faults = asyncio.create_task(self.inject_faults())
        try:
            work = asyncio.gather(self.place_orders(), self.cancel_orders())
            await _first_failure(work, [*watchers, faults])
            await _first_failure(faults, watchers)
            drain_s = await _first_failure(asyncio.ensure_future(self.drained()), watchers)
            drained_at, drained_cpu_s = time.monotonic(), busy_cpu_s()
            for check in self.checks:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(check, 60)
        finally:
            for task in [*watchers, faults]:
                task.cancel()
        print("drained; judging", flush=True)
        judging_from = time.monotonic()
        truth = await self.truth()
        failures, report = await self.judge(truth)
        failures += await self.fault_failures()
        totals: Counter[str] = Counter()
        for w in self.live():
            incarnation = next(i for i in self.incarnations if i.pid == w.proc.pid)
            incarnation.peak_rss_mib = peak_rss_mib(w.proc.pid)
            incarnation.processed = {
                lab["agent"]: v
                for lab, v in samples(await self.metrics(w), "pipeline_events_processed_total")
            }
        for i in self.incarnations:
            totals.update(i.processed)
        self.faults["kill"]["handled_again"] = rereads(totals, await self.source_records())
        await self.watch.finish()
        tables = size_rows(self.watch.tables)
        failures += [
            f"table {r['table']}: largest value {r['largest_bytes']:,} bytes, over its "
            f"bound {r['bound_bytes']}"
            for r in tables
            if not r["within_bound"]
        ]
        wall = drained_at - self.first_at
        judging_s = time.monotonic() - judging_from
        events = truth.orders + truth.statuses["cancelled"]
        return {
            "orders": truth.orders,
            "cancelled": truth.statuses["cancelled"],
            "cancelled_from": dict(truth.cancelled_from),
            "statuses": dict(truth.statuses),
            "hot_sku_lines": truth.hot_sku_lines,
            "hot_customer_orders": truth.hot_customer_orders,
            "driver": self.cfg.driver,
            "judging_s": round(judging_s, 1),
            "concurrency": self.cfg.concurrency,
            "rate_cap": self.cfg.rate,
            "placing_s": round(self.last_at - self.first_at, 1),
            "orders_per_s": round(truth.orders / max(self.last_at - self.first_at, 1e-9), 1),
            "wall_s": round(wall, 1),
            "drain_s": round(drain_s, 1),
            "events_per_s": round(events / wall, 1),
            "agent_events_per_s": round(sum(totals.values()) / wall, 1),
            # Every process on the machine (workers, broker, database, this driver): on two
            # saturated cores this, not any one process, sets how many orders fit in a minute.
            "cpu_ms_per_order": round((drained_cpu_s - self.first_cpu_s) * 1000 / truth.orders, 2),
            "agent_events": {a: int(v) for a, v in sorted(totals.items())},
            "tables": tables,
            "workers": [
                {
                    "name": i.name,
                    "pid": i.pid,
                    "end": i.end,
                    "peak_rss_mib": round(i.peak_rss_mib, 1),
                }
                for i in self.incarnations
            ],
            "faults": self.faults,
            "reconcile": {k: report.get(k) for k in ("ok", "checked")},
            "revenue_windows": self.windows,
            "timeline": self.timeline,
            "failures": failures,
        }

    async def close(self) -> None:
        await self.http.close()
        await self.driver.close()
        await self.engine.dispose()


async def _first_failure(work: asyncio.Future[Any], watchers: list[asyncio.Task[None]]) -> Any:
    """``work``'s result; if a watcher fails first (the disk guard), its error."""
    pending = {work, *watchers}
    while work in pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not work and task.exception() is not None:
                work.cancel()
                raise task.exception()  # type: ignore[misc]
    return work.result()


async def _soak(
    cfg: Config,
    factory: WorkerFactory,
    workers: list[Worker],
    url: str,
    bootstrap: str,
    broker_dir: Path,
) -> dict[str, Any]:
    soak = Soak(cfg, factory, workers, url, bootstrap, broker_dir)
    try:
        return await soak.run()
    finally:
        await soak.close()


async def _drop_database(admin_url: str, name: str) -> None:
    engine = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    cfg = Config.parse(argv)
    launched = time.monotonic()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop what it started, then exit
    settings = load_settings()
    run_id = uuid.uuid4().hex[:8]
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    broker = LocalKafka(
        version=settings.kafka_version,
        port=free_port(),
        controller_port=free_port(),
        data_dir=root / "kafka",
        cache_dir=settings.cache_dir,
    )
    pg_port = int(os.environ.get("TEST_POSTGRES_PORT", "55432"))
    pg = LocalPostgres(port=pg_port, data_dir=default_data_dir(pg_port, settings.cache_dir))
    factory: WorkerFactory | None = None
    database = f"soak_{run_id}"
    result: dict[str, Any] = {}
    try:
        print(f"starting local Kafka {settings.kafka_version} and PostgreSQL ...", flush=True)
        bootstrap = broker.start()
        pg.start()
        url = pg.create_database(database)
        migrate(url)
        factory = WorkerFactory(
            bootstrap, root, f"soak-{run_id}", f"soak{run_id}.", url, settings.partitions
        )
        asyncio.run(
            create_topics(bootstrap, [factory.topic(t) for t in TOPICS], settings.partitions)
        )
        asyncio.run(create_topics(bootstrap, [factory.topic("analytics.revenue")], 1))
        workers = [factory.start(name, wait=False, **WORKER_ENV) for name in ("w1", "w2")]
        for worker in workers:
            worker.wait_ready(180)
        time.sleep(2)  # the second join's rebalance
        for worker in workers:
            worker.wait_ready(180)
        began = time.monotonic()
        startup_s = began - launched
        result = asyncio.run(_soak(cfg, factory, workers, url, bootstrap, broker.data_dir))
        result["duration_s"] = round(time.monotonic() - began)
        result["startup_s"] = round(startup_s, 1)
    except SoakFailed as exc:
        result = {"failures": [f"the run stopped: {exc}"]}
    finally:
        if factory is not None:
            factory.stop_all()
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)  # GBs of topic data
    result.update(
        command_s=round(time.monotonic() - launched, 1),
        kafka=settings.kafka_version,
        machine=machine(),
        load_average=[round(x, 2) for x in os.getloadavg()],
        python=sys.version.split()[0],
        seed=cfg.seed,
        planned_orders=cfg.orders,
    )
    name = "soak.json" if cfg.orders == FULL_ORDERS else f"soak-{cfg.orders}.json"
    (RESULTS_DIR / name).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if "tables" in result:
        print(render(result))
    else:
        print("\n".join(f"FAILED: {x}" for x in result["failures"]))
    print(f"written to {(RESULTS_DIR / name).relative_to(PROJECT_ROOT)}")
    if result["failures"]:
        print(f"kept for a look: {root} (worker logs), database {database}")
        return 1
    asyncio.run(_drop_database(pg.url(), database))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
