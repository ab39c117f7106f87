"""End to end: ``POST /orders`` → the customer's stats show it, on two real workers.

Two workers run every agent and the outbox forwarder on PostgreSQL (woken by NOTIFY). Orders
of about 300 bytes as events, one line each, over 1,000 customers with a skewed distribution
(fixed seed), are posted to the workers in turn.

**When an order counts as visible.** The analytics agent stages a customer's new stats (what
``GET /customers/{id}/stats`` answers from at once, routed to the owner) and then publishes a
``CustomerStatsUpdated`` whose ``caused_by`` is the order event's id. A plain aiokafka consumer
in this process, of no group, reads ``orders.events`` (event id → order id) and
``analytics.events`` from their ends; an order is visible when the stats update caused by its
``OrderCreated`` arrives, stamped on arrival, matched by order id (:class:`Visibility`). The
matching does not depend on how many orders a customer has in flight nor on the order in which
partitions, commits or the POST's answer come back, and the workers serve no reads for it.

What the method adds to the true time of visibility: the stats update leaves after the staged
write, so an order is never counted early; it is counted late by the worker producer's linger
(``PIPELINE_PRODUCER_LINGER_MS``, 5 ms by default) and its produce request (acks=all), plus
this consumer's fetch: ``fetch_min_bytes=1`` makes the broker answer a waiting fetch as soon as
a record is appended, and ``fetch_max_wait_ms`` (:data:`FETCH_MAX_WAIT_MS`, 5 ms) bounds how long
an idle fetch is held, so a record waits at most about one fetch round trip; plus how late this
process's event loop runs (measured per phase: ``bench_loop_lag_p99_ms``). A few milliseconds
in all, the same at any backlog; the old HTTP pollers' lateness grew with it.

The same records give each order's hops (:class:`Hops`): its intended send time, the POST's
answer (the transaction committed), the forwarder's send (the ``orders.events`` record's
timestamp), that record's arrival here, and its stats update's arrival. Each phase reports the
percentiles of each hop and the timelines of its slowest orders.

1. warm-up; 2. the maximum rate: an open-loop ramp, each step faster, until the orders of a
step are no longer visible soon after it (what the whole pipeline sustains, not only the HTTP
front; a closed-loop burst overstates it, since a backlog is drained in larger batches);
3. open loop at 50% and 80% of it, each after every agent caught up (:func:`settle`): each order
has an intended send time on a fixed schedule and its latency is measured from that time, so a
stall that holds the sender back is counted.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench import profile
from bench.report import open_loop_schedule, percentile
from tests.integration.workers import Worker, WorkerFactory, create_topics

FETCH_MAX_WAIT_MS = 5
RAMP_START, RAMP_FACTOR = 20.0, 1.25
CUSTOMERS = 1000
SKUS = [f"sku-{i:03d}" for i in range(50)]
TOPICS = ["orders.events", "inventory.commands", "inventory.events", "orders.status",
          "analytics.events"]  # fmt: skip
# The revenue windows are one table partition, fed by a one-partition topic
# (pipeline.streaming.topics); Faust refuses a source topic whose partition count differs from its
# table's changelog.
SINGLE_PARTITION_TOPICS = ["analytics.revenue"]
WORKER_ENV = {"PIPELINE_LOG_EVENTS": "false"}


def order_stream(seed: int = 7) -> Any:
    """Endless order bodies: skewed customers, one line each, fixed seed."""
    rng = random.Random(seed)
    customers = [f"e2e-customer-{i:04d}" for i in range(CUSTOMERS)]
    weights = [1 / (i + 1) ** 0.8 for i in range(CUSTOMERS)]
    while True:
        customer = rng.choices(customers, weights)[0]
        yield {
            "customer_id": customer,
            "customer_email": f"{customer}@example.com",
            "items": [{"sku": rng.choice(SKUS), "quantity": rng.randint(1, 3),
                       "unit_price": f"{rng.randrange(199, 9999) / 100:.2f}"}],
        }  # fmt: skip


@dataclass
class Hops:
    """One order's way to visibility, in ``time.perf_counter()`` seconds."""

    intended: float  # its place on the open-loop schedule
    answered: float = math.nan  # the 201 came back: the order, its items and outbox row committed
    published: float = math.nan  # the forwarder sent its OrderCreated (the record's timestamp)
    read: float = math.nan  # that record reached the benchmark's consumer
    visible: float = math.nan  # its CustomerStatsUpdated reached the benchmark's consumer
    partition: int = -1  # of orders.events (and analytics.events: both keyed by customer)

    def split_ms(self) -> dict[str, float]:
        """Where the time went: send and HTTP with its transaction; commit to the forwarder's
        send; that send to our consumer; the analytics agent from the order event to its
        stats update reaching our consumer; and the whole."""
        ms = lambda a, b: round((b - a) * 1000, 1)  # noqa: E731 - a local shorthand
        return {
            "post": ms(self.intended, self.answered),
            "forwarder": ms(self.answered, self.published),
            "orders_topic": ms(self.published, self.read),
            "analytics": ms(self.read, self.visible),
            "total": ms(self.intended, self.visible),
        }


@dataclass
class Visibility:
    """Matches orders to the stats updates that show them, whatever order the three sources
    answer in: the POST's answer (order id), the ``OrderCreated`` record on ``orders.events``
    (its event id and order id) and the ``CustomerStatsUpdated`` on ``analytics.events``
    (``caused_by``: the event id). Under load a stats update can be read before the POST's
    answer comes back, and partitions are read in no fixed order. An order is visible once all
    three are in; its latency runs from its intended send time to its stats update's arrival.
    Pure: the caller passes the times."""

    orders: dict[str, Hops] = field(default_factory=dict)  # order id -> hops, in flight
    phase_of: dict[str, str] = field(default_factory=dict)  # order id -> phase
    event_order: dict[str, str] = field(default_factory=dict)  # event id -> order id
    order_event_id: dict[str, str] = field(default_factory=dict)  # order id -> event id
    early: dict[str, tuple[float, int]] = field(default_factory=dict)  # event id -> stats seen
    done: dict[str, list[Hops]] = field(default_factory=dict)  # phase -> visible orders
    visible_at: float = 0.0

    def posted(self, order_id: str, phase: str, intended: float, answered: float) -> None:
        hops = self.orders.setdefault(order_id, Hops(intended))
        hops.intended, hops.answered = intended, answered
        self.phase_of[order_id] = phase
        self._resolve(order_id)

    def order_event(self, event_id: str, order_id: str, published: float, read: float,
                    partition: int) -> None:  # fmt: skip
        if event_id in self.event_order:
            return  # a forwarder's re-publish: the first one counts
        self.event_order[event_id] = order_id
        self.order_event_id[order_id] = event_id
        hops = self.orders.setdefault(order_id, Hops(math.nan))
        hops.published, hops.read, hops.partition = published, read, partition
        self._resolve(order_id)

    def stats_updated(self, caused_by: str, at: float, partition: int) -> None:
        order_id = self.event_order.get(caused_by)
        if order_id is None:
            self.early.setdefault(caused_by, (at, partition))
            return
        hops = self.orders.get(order_id)
        if hops is not None and math.isnan(hops.visible):  # a repeat of a visible one: ignored
            hops.visible = at
            self._resolve(order_id)

    def _resolve(self, order_id: str) -> None:
        hops = self.orders[order_id]
        event_id = self.order_event_id.get(order_id)
        if math.isnan(hops.visible) and event_id in self.early:
            hops.visible = self.early.pop(event_id)[0]
        if math.isnan(hops.visible) or math.isnan(hops.read) or order_id not in self.phase_of:
            return
        del self.orders[order_id]
        self.done.setdefault(self.phase_of.pop(order_id), []).append(hops)
        self.visible_at = max(self.visible_at, hops.visible)

    def in_flight(self) -> int:
        """Orders answered 201 and not yet visible."""
        return len(self.phase_of)

    def latencies(self, phase: str) -> list[float]:
        return [(h.visible - h.intended) * 1000 for h in self.done.get(phase, [])]


def phase_figures(done: list[Hops], slowest: int = 3) -> dict[str, Any]:
    """Percentiles of the latency and of each hop, and the slowest orders' timelines."""
    splits = [h.split_ms() for h in done]
    total = [s["total"] for s in splits]
    figures: dict[str, Any] = {
        "p50_ms": round(percentile(total, 50), 1),
        "p99_ms": round(percentile(total, 99), 1),
        "p999_ms": round(percentile(total, 99.9), 1),
        "max_ms": round(max(total, default=float("nan")), 1),
        "hops_p50_p99_ms": {
            hop: [round(percentile([s[hop] for s in splits], q), 1) for q in (50, 99)]
            for hop in ("post", "forwarder", "orders_topic", "analytics")
        },
    }
    if done:
        start = min(h.intended for h in done)
        ranked = sorted(done, key=lambda h: h.visible - h.intended, reverse=True)[:slowest]
        figures["slowest"] = [
            {"at_s": round(h.intended - start, 3), "partition": h.partition, **h.split_ms()}
            for h in ranked
        ]
    return figures


@dataclass
class Tracker:
    """Posts orders and hands their answers to the :class:`Visibility` that the consumer
    (:func:`watch`) feeds with what the pipeline publishes."""

    session: aiohttp.ClientSession
    urls: list[str]
    seen: Visibility = field(default_factory=Visibility)
    errors: int = 0

    async def post(self, url: str, body: dict[str, Any], intended: float, phase: str) -> None:
        try:
            async with self.session.post(f"{url}/orders", json=body) as resp:
                answer = await resp.json() if resp.status == 201 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            answer = None
        if answer is None:
            self.errors += 1
        else:
            self.seen.posted(answer["order_id"], phase, intended, time.perf_counter())

    def in_flight(self) -> int:
        return self.seen.in_flight()

    async def drained(self, within: float) -> bool:
        deadline = time.perf_counter() + within
        while self.in_flight() and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return not self.in_flight()


async def watch(consumer: AIOKafkaConsumer, orders_topic: str, seen: Visibility) -> None:
    """Feed ``seen`` with every ``OrderCreated`` and ``CustomerStatsUpdated`` as it arrives,
    stamped on arrival (one stamp per fetched batch: ``getmany`` hands over what one fetch
    brought)."""
    wall_minus_perf = time.time() - time.perf_counter()
    while True:
        batches = await consumer.getmany(timeout_ms=1000)
        at = time.perf_counter()
        for tp, records in batches.items():
            for record in records:
                kind = dict(record.headers).get("event_type", b"")
                if tp.topic == orders_topic and kind == b"OrderCreated":
                    body = orjson.loads(record.value)
                    published = record.timestamp / 1000 - wall_minus_perf
                    seen.order_event(body["event_id"], body["order_id"], published, at,
                                     tp.partition)  # fmt: skip
                elif kind == b"CustomerStatsUpdated":
                    seen.stats_updated(orjson.loads(record.value)["caused_by"], at, tp.partition)


async def loop_lag(lags: list[float], every: float = 0.01) -> None:
    """How late this process's event loop wakes up: a bound on how late an arrival is
    stamped (the load generator shares the two cores too)."""
    while True:
        before = time.perf_counter()
        await asyncio.sleep(every)
        lags.append((time.perf_counter() - before - every) * 1000)


async def closed_loop(tracker: Tracker, orders: Any, count: int, concurrency: int) -> None:
    """``count`` orders by ``concurrency`` senders, until all are visible (the warm-up)."""
    todo = iter(range(count))

    async def sender(i: int) -> None:
        for n in todo:
            await tracker.post(tracker.urls[(i + n) % len(tracker.urls)], next(orders),
                               time.perf_counter(), "warm-up")  # fmt: skip

    await asyncio.gather(*(sender(i) for i in range(concurrency)))
    if not await tracker.drained(120):
        raise RuntimeError("orders not visible within 120 s of the closed loop")


def kept_up(backlog: int, rate: float, errors: int) -> bool:
    """A step of the ramp was sustained: no errors, and right after its last send no more
    than half a second of orders still waiting to be visible."""
    return errors == 0 and backlog <= max(2.0, rate * 0.5)


async def find_max(tracker: Tracker, orders: Any, step_s: float) -> tuple[float, list[Any]]:
    """Open-loop ramp, each step ``RAMP_FACTOR`` faster, until a step is not kept up with;
    the maximum is the last rate that was (what the whole pipeline sustains)."""
    rate, best, steps = RAMP_START, 0.0, []
    while rate < 5000:
        step = await open_loop(tracker, orders, rate, step_s, f"ramp {rate:.1f}", drain=False)
        backlog = step["waiting_at_last_send"]
        steps.append([round(rate, 1), backlog, step["p99_ms"]])
        if not kept_up(backlog, rate, step["errors"]):
            break
        best, rate = rate, rate * RAMP_FACTOR
    if not await tracker.drained(120):
        raise RuntimeError("orders not visible within 120 s of the ramp")
    return best, steps


async def open_loop(tracker: Tracker, orders: Any, rate: float, seconds: float, phase: str,
                    drain: bool = True) -> dict[str, Any]:  # fmt: skip
    errors = tracker.errors
    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    schedule = open_loop_schedule(rate, seconds)
    for n, offset in enumerate(schedule):
        intended = started + offset
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        url = tracker.urls[n % len(tracker.urls)]
        task = asyncio.create_task(tracker.post(url, next(orders), intended, phase))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    # Right after the last send: orders whose POST has not answered yet, and those answered
    # but not yet visible. (Counted after the answers instead, a step whose POSTs queue for
    # seconds looks kept up: the pipeline drains while the last answers come back.)
    waiting = len(tasks) + tracker.in_flight()
    await asyncio.gather(*list(tasks))
    drained = await tracker.drained(120) if drain else False
    done = tracker.seen.done.get(phase, [])
    dump(phase, done)
    return {
        "orders_per_s": round(rate, 1),
        "orders": len(schedule),
        "visible": len(done),
        "errors": tracker.errors - errors,
        "waiting_at_last_send": waiting,
        "drained": drained,
        **phase_figures(done),
    }


async def settle(session: aiohttp.ClientSession, urls: list[str], within: float = 180) -> int:
    """Wait until every agent has caught up, not only the stats the tracker sees: the ramp's
    last step leaves the other agents (inventory, order status, notifications) a backlog that
    would otherwise be measured as the next phase's latency. Returns the lag left."""
    deadline = time.perf_counter() + within
    lag = -1
    while time.perf_counter() < deadline:
        lag = 0
        for url in urls:
            async with session.get(f"{url}/metrics") as resp:
                text = await resp.text()
            lag += int(sum(s.value for f in text_string_to_metric_families(text)
                           for s in f.samples if s.name == "pipeline_consumer_lag"))  # fmt: skip
        if lag <= 10:
            break
        await asyncio.sleep(1.0)
    return lag


async def settled(session: aiohttp.ClientSession, urls: list[str]) -> int:
    """:func:`settle`, saying so when the agents did not catch up: the phase that follows
    then measures a backlog too, and its figures are marked with the lag it started on."""
    lag = await settle(session, urls)
    if lag > 10:
        print(f"  agents still {lag} records behind after 180 s; the next phase starts anyway")
    return lag


async def _watcher(bootstrap: str, topics: list[str], partitions: int) -> AIOKafkaConsumer:
    """A plain consumer of no group, at the end of ``topics`` before any order is posted."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="latest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS, fetch_min_bytes=1,
    )  # fmt: skip
    await consumer.start()
    assigned = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    consumer.assign(assigned)
    await consumer.seek_to_end(*assigned)
    for tp in assigned:
        await consumer.position(tp)
    return consumer


async def _measure(workers: list[Worker], quick: bool, bootstrap: str,
                   topics: dict[str, str], partitions: int) -> dict[str, Any]:  # fmt: skip
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=64)
    urls = [w.url for w in workers]
    consumer = await _watcher(bootstrap, [topics["orders.events"], topics["analytics.events"]],
                              partitions)  # fmt: skip
    lags: list[float] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for sku in SKUS:  # stock for every SKU, so orders are confirmed, not rejected
            async with session.put(f"{workers[0].url}/inventory/{sku}",
                                   json={"available": 1_000_000_000}) as resp:  # fmt: skip
                await resp.read()
        tracker = Tracker(session, urls)
        background = [asyncio.create_task(watch(consumer, topics["orders.events"], tracker.seen)),
                      asyncio.create_task(loop_lag(lags))]  # fmt: skip
        try:
            orders = order_stream()
            await closed_loop(tracker, orders, 60 if quick else 300, 8)  # warm-up
            max_rate, steps = await find_max(tracker, orders, 3)
            if max_rate <= 0:
                raise RuntimeError(f"the pipeline did not keep up even at {RAMP_START} orders/s")
            seconds = 6 if quick else 20
            phases: dict[str, Any] = {}
            for label, share in (("half", 0.5), ("80pct", 0.8)):
                lag = await settled(session, urls)
                lags.clear()
                phases[label] = await open_loop(tracker, orders, max_rate * share, seconds, label)
                phases[label]["lag_at_start"] = lag
                phases[label]["bench_loop_lag_p99_ms"] = round(percentile(lags, 99), 1)
            profiled = None
            if profile.enabled():  # a phase of its own: sampling slows the workers a little
                await settled(session, urls)
                names = [f"e2e-half-load-{w.name}" for w in workers]
                spies = [profile.start(w.proc.pid, n, seconds)
                         for w, n in zip(workers, names, strict=True)]  # fmt: skip
                profiled = await open_loop(tracker, orders, max_rate * 0.5, seconds, "profiled")
                profiled["profiles"] = profile.finish(spies, names)
        finally:
            for task in background:
                task.cancel()
            await consumer.stop()
    return {"max_orders_per_s": max_rate, "phases": phases, "steps": steps, "seconds": seconds,
            "profiled": profiled}  # fmt: skip


def dump(phase: str, done: list[Hops]) -> None:
    """Every order's hops of ``phase`` as JSON lines into the directory ``BENCH_E2E_DUMP``
    names, if set: to line a tail up with the commit interval, a partition or a worker."""
    folder = os.environ.get("BENCH_E2E_DUMP")
    if not folder or not done:
        return
    start = min(h.intended for h in done)
    path = Path(folder) / f"{phase.replace(' ', '-')}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for h in sorted(done, key=lambda h: h.intended):
            row = {"at_s": round(h.intended - start, 4), "partition": h.partition, **h.split_ms()}
            f.write(json.dumps(row) + "\n")


def worker_env() -> dict[str, str]:
    """The workers' environment: :data:`WORKER_ENV` and, to try a setting without editing
    code, ``BENCH_E2E_ENV`` (``"PIPELINE_COMMIT_INTERVAL_MS=500 PIPELINE_..."``); the run
    records what it used."""
    extra = dict(item.split("=", 1) for item in os.environ.get("BENCH_E2E_ENV", "").split())
    return {**WORKER_ENV, **extra}


def run(bootstrap: str, database_url: str, quick: bool, partitions: int = 4) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    run_id = uuid.uuid4().hex[:8]
    factory = WorkerFactory(bootstrap, root, f"bench-e2e-{run_id}", f"benche{run_id}.",
                            database_url, partitions)  # fmt: skip
    asyncio.run(create_topics(bootstrap, [factory.topic(t) for t in TOPICS], partitions))
    asyncio.run(create_topics(bootstrap, [factory.topic(t) for t in SINGLE_PARTITION_TOPICS], 1))
    env = worker_env()
    try:
        workers = [factory.start(name, wait=False, **env) for name in ("w1", "w2")]
        for worker in workers:
            worker.wait_ready(180)
        time.sleep(2)  # the second join's rebalance
        for worker in workers:
            worker.wait_ready(180)
        topics = {t: factory.topic(t) for t in TOPICS}
        m = asyncio.run(_measure(workers, quick, bootstrap, topics, partitions))
    finally:
        factory.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    out: dict[str, Any] = {
        "workers": 2,
        "method": "CustomerStatsUpdated read by a plain consumer, matched by order id",
        "consumer_fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        "worker_env": env,
        "max_orders_per_s": round(m["max_orders_per_s"], 1),
        "ramp_steps_rate_backlog_p99": m["steps"],
        "phase_seconds": m["seconds"],
    }
    for label, phase in m["phases"].items():
        out[f"{label}_load_orders_per_s"] = phase["orders_per_s"]
        out[f"p50_ms_{label}_load"] = phase["p50_ms"]
        out[f"p99_ms_{label}_load"] = phase["p99_ms"]
        out[f"p999_ms_{label}_load"] = phase["p999_ms"]
        out[f"max_ms_{label}_load"] = phase["max_ms"]
        out[f"{label}_load_samples"] = phase["visible"]
        out[f"{label}_load_errors"] = phase["errors"]
        out[f"{label}_load_hops_p50_p99_ms"] = phase["hops_p50_p99_ms"]
        out[f"{label}_load_slowest"] = phase.get("slowest", [])
        out[f"{label}_load_lag_at_start"] = phase["lag_at_start"]
        out[f"{label}_load_bench_loop_lag_p99_ms"] = phase["bench_loop_lag_p99_ms"]
    if m["profiled"] is not None:
        out["profiled_half_load"] = m["profiled"]
    return out
