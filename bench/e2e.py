"""End to end: ``POST /orders`` → the customer's stats show it, on two real workers.

Two workers run every agent and the outbox forwarder on PostgreSQL (woken by NOTIFY). Orders
of about 300 bytes as events, one line each, over 1,000 customers with a skewed distribution
(fixed seed), are posted to the workers in turn. An order counts as visible when
``GET /customers/{id}/stats`` (on either worker, routed to the owner) shows an ``order_count``
at least the order's number for that customer. Customers with orders in flight are polled in
turn, each at most every ``POLL_S`` by ``POLLERS`` readers, so a figure may be late by about
that interval, never early, and the reads stay a small load beside the orders.

1. warm-up; 2. the maximum rate: an open-loop ramp, each step faster, until the orders of a
step are no longer visible soon after it (what the whole pipeline sustains, not only the HTTP
front; a closed-loop burst overstates it, since a backlog is drained in larger batches);
3. open loop at 50% and 80% of it: each order has an intended send time on a fixed schedule
and its latency is measured from that time, so a stall that holds the sender back is counted.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench import profile
from bench.report import open_loop_schedule, percentile
from tests.integration.workers import Worker, WorkerFactory, create_topics

POLL_S = 0.01
POLLERS = 2
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
class Tracker:
    """Orders in flight per customer, and ``POLLERS`` pollers taking turns over the customers
    with orders in flight: at most ``POLLERS`` reads at a time, each customer at most once per
    ``POLL_S``, so the measuring does not itself load the workers with reads."""

    session: aiohttp.ClientSession
    urls: list[str]
    posted: dict[str, int] = field(default_factory=dict)  # customer -> orders assigned
    pending: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    last_poll: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    visible_at: float = 0.0
    errors: int = 0
    polls: int = 0

    def assign(self, customer: str) -> int:
        self.posted[customer] = self.posted.get(customer, 0) + 1
        return self.posted[customer]

    def sent(self, customer: str, number: int, intended: float) -> None:
        waiting = self.pending.setdefault(customer, [])
        waiting.append((number, intended))
        if len(waiting) == 1:
            self.queue.put_nowait(customer)

    def in_flight(self) -> int:
        return sum(len(w) for w in self.pending.values())

    async def poller(self) -> None:
        while True:
            customer = await self.queue.get()
            wait = self.last_poll.get(customer, 0.0) + POLL_S - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            url = self.urls[self.polls % len(self.urls)]
            self.polls += 1
            count = await self._order_count(url, customer)
            now = self.last_poll[customer] = time.perf_counter()
            waiting = self.pending[customer]
            done = [t for n, t in waiting if n <= count]
            if done:
                self.latencies.extend((now - t) * 1000 for t in done)
                self.pending[customer] = waiting = [(n, t) for n, t in waiting if n > count]
                self.visible_at = now
            if waiting:
                self.queue.put_nowait(customer)

    async def _order_count(self, url: str, customer: str) -> int:
        try:
            async with self.session.get(f"{url}/customers/{customer}/stats") as resp:
                if resp.status != 200:
                    return 0
                return int((await resp.json())["order_count"])
        except (aiohttp.ClientError, TimeoutError):
            return 0

    async def post(self, url: str, body: dict[str, Any], intended: float) -> None:
        number = self.assign(body["customer_id"])
        try:
            async with self.session.post(f"{url}/orders", json=body) as resp:
                ok = resp.status == 201
                await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            self.sent(body["customer_id"], number, intended)
        else:
            self.posted[body["customer_id"]] -= 1
            self.errors += 1

    async def drained(self, within: float) -> bool:
        deadline = time.perf_counter() + within
        while self.in_flight() and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return not self.in_flight()


async def closed_loop(tracker: Tracker, orders: Any, count: int, concurrency: int) -> None:
    """``count`` orders by ``concurrency`` senders, until all are visible (the warm-up)."""
    todo = iter(range(count))

    async def sender(i: int) -> None:
        for n in todo:
            await tracker.post(tracker.urls[(i + n) % len(tracker.urls)], next(orders),
                               time.perf_counter())  # fmt: skip

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
        step = await open_loop(tracker, orders, rate, step_s, drain=False)
        backlog = tracker.in_flight()
        steps.append([round(rate, 1), backlog, step["p99_ms"]])
        if not kept_up(backlog, rate, step["errors"]):
            break
        best, rate = rate, rate * RAMP_FACTOR
    if not await tracker.drained(120):
        raise RuntimeError("orders not visible within 120 s of the ramp")
    return best, steps


async def open_loop(tracker: Tracker, orders: Any, rate: float, seconds: float,
                    drain: bool = True) -> dict[str, Any]:  # fmt: skip
    tracker.latencies.clear()
    errors = tracker.errors
    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    schedule = open_loop_schedule(rate, seconds)
    for n, offset in enumerate(schedule):
        intended = started + offset
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(tracker.post(tracker.urls[n % 2], next(orders), intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*list(tasks))
    drained = await tracker.drained(120) if drain else False
    values = tracker.latencies
    return {
        "orders_per_s": round(rate, 1),
        "orders": len(schedule),
        "visible": len(values),
        "errors": tracker.errors - errors,
        "drained": drained,
        "p50_ms": round(percentile(values, 50), 1),
        "p99_ms": round(percentile(values, 99), 1),
        "p999_ms": round(percentile(values, 99.9), 1),
        "max_ms": round(max(values, default=float("nan")), 1),
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


async def _measure(workers: list[Worker], quick: bool) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for sku in SKUS:  # stock for every SKU, so orders are confirmed, not rejected
            async with session.put(f"{workers[0].url}/inventory/{sku}",
                                   json={"available": 1_000_000_000}) as resp:  # fmt: skip
                await resp.read()
        tracker = Tracker(session, [w.url for w in workers])
        pollers = [asyncio.create_task(tracker.poller()) for _ in range(POLLERS)]
        orders = order_stream()
        await closed_loop(tracker, orders, 60 if quick else 300, 8)  # warm-up
        max_rate, steps = await find_max(tracker, orders, 3)
        if max_rate <= 0:
            raise RuntimeError(f"the pipeline did not keep up even at {RAMP_START} orders/s")
        seconds = 6 if quick else 20
        await settle(session, [w.url for w in workers])
        half = await open_loop(tracker, orders, max_rate * 0.5, seconds)
        await settle(session, [w.url for w in workers])
        eighty = await open_loop(tracker, orders, max_rate * 0.8, seconds)
        polls = tracker.polls
        profiled = None
        if profile.enabled():  # a phase of its own: sampling slows the workers a little
            await settle(session, [w.url for w in workers])
            names = [f"e2e-half-load-{w.name}" for w in workers]
            spies = [
                profile.start(w.proc.pid, n, seconds) for w, n in zip(workers, names, strict=True)
            ]
            profiled = await open_loop(tracker, orders, max_rate * 0.5, seconds)
            profiled["profiles"] = profile.finish(spies, names)
        for task in pollers:
            task.cancel()
    return {"max_orders_per_s": max_rate, "half": half, "eighty": eighty, "polls": polls,
            "steps": steps, "seconds": seconds, "profiled": profiled}  # fmt: skip


def run(bootstrap: str, database_url: str, quick: bool, partitions: int = 4) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    run_id = uuid.uuid4().hex[:8]
    factory = WorkerFactory(bootstrap, root, f"bench-e2e-{run_id}", f"benche{run_id}.",
                            database_url, partitions)  # fmt: skip
    asyncio.run(create_topics(bootstrap, [factory.topic(t) for t in TOPICS], partitions))
    asyncio.run(create_topics(bootstrap, [factory.topic(t) for t in SINGLE_PARTITION_TOPICS], 1))
    try:
        workers = [factory.start(name, wait=False, **WORKER_ENV) for name in ("w1", "w2")]
        for worker in workers:
            worker.wait_ready(180)
        time.sleep(2)  # the second join's rebalance
        for worker in workers:
            worker.wait_ready(180)
        m = asyncio.run(_measure(workers, quick))
    finally:
        factory.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    out: dict[str, Any] = {
        "workers": 2,
        "poll_interval_ms": POLL_S * 1000,
        "max_orders_per_s": round(m["max_orders_per_s"], 1),
        "ramp_steps_rate_backlog_p99": m["steps"],
        "polls": m["polls"],
        "phase_seconds": m["seconds"],
    }
    for label, phase in (("half", m["half"]), ("80pct", m["eighty"])):
        out[f"{label}_load_orders_per_s"] = phase["orders_per_s"]
        out[f"p50_ms_{label}_load"] = phase["p50_ms"]
        out[f"p99_ms_{label}_load"] = phase["p99_ms"]
        out[f"p999_ms_{label}_load"] = phase["p999_ms"]
        out[f"max_ms_{label}_load"] = phase["max_ms"]
        out[f"{label}_load_samples"] = phase["visible"]
        out[f"{label}_load_errors"] = phase["errors"]
    if m["profiled"] is not None:
        out["profiled_half_load"] = m["profiled"]
    return out
