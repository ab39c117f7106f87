"""Probes and addresses on real workers: a rebalance takes no worker out of service (liveness
and readiness stay 200, orders and cancellations keep being taken; only table readiness and
table reads wait), readiness names the database it cannot reach, and workers bound to 0.0.0.0
route table reads to the address each advertises."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pipeline.adapters.db.schema import migrate
from tests.integration.workers import (
    Worker,
    WorkerFactory,
    consume,
    free_port,
    http_get,
    wait_for,
)

PROBES = ("/livez", "/healthz", "/readyz", "/readyz/tables")
SKUS = ("sku-0", "sku-1", "sku-2")


class Poller(threading.Thread):
    """Calls ``sample()`` every ``interval`` seconds until stopped, keeping each answer with
    the time it was taken."""

    def __init__(self, sample: Callable[[], Any], interval: float) -> None:
        super().__init__(daemon=True)
        self.sample, self.interval = sample, interval
        self.samples: list[tuple[float, Any]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.monotonic(), self.sample()))
            self.stopped.wait(self.interval)

    def stop(self) -> list[tuple[float, Any]]:
        self.stopped.set()
        self.join(30)
        return self.samples


def _status(call: Callable[[], tuple[int, Any]]) -> Any:
    try:
        return call()[0]
    except OSError as exc:  # refused, reset or timed out: as much a failure as a 503
        return f"{type(exc).__name__}: {exc}"


def _probe(worker: Worker) -> dict[str, Any]:
    return {path: _status(lambda p=path: worker.get(p)) for path in PROBES}


def _order(worker: Worker, n: int) -> dict[str, Any]:
    """Place an order, then cancel every other one: what each answered."""
    try:
        status, body = worker.post("/orders", {
            "customer_id": f"cust-{n % 7}", "customer_email": f"c{n % 7}@example.com",
            "items": [{"sku": SKUS[n % 3], "quantity": 1, "unit_price": "2.50"}],
        })  # fmt: skip
    except OSError as exc:
        return {"placed": f"{type(exc).__name__}: {exc}"}
    answered: dict[str, Any] = {"placed": status, "order_id": body.get("order_id")}
    if status == 201 and n % 2:
        answered["cancelled"] = _status(
            lambda: worker.post(f"/orders/{body['order_id']}/cancel", {})
        )
    return answered


def _sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1]


def test_a_rebalance_takes_no_worker_out_of_service(
    workers: WorkerFactory, sqlite_url: str
) -> None:
    migrate(sqlite_url)
    w1 = workers.start("w1")
    # Stock for every order, set before the first: no order is rejected, so a cancellation
    # never races inventory's decision (a rejected order is rightly a 409 to cancel).
    for sku in SKUS:
        assert w1.put(f"/inventory/{sku}", {"available": 1_000_000})[0] == 202
    wait_for(lambda: all((w1.get(f"/inventory/{s}")[1] or {}).get("available") == 1_000_000
                         for s in SKUS), 30, "the stock to be set")  # fmt: skip
    counter = iter(range(1_000_000))
    probes = Poller(lambda: _probe(w1), 0.05)
    orders = Poller(lambda: _order(w1, next(counter)), 0.05)
    probes.start()
    orders.start()
    try:
        time.sleep(1.0)
        joined = time.monotonic()
        w2 = workers.start("w2")  # joins the group: w1's partitions move
        wait_for(lambda: w1.get("/readyz/tables")[0] == 200, 90, "w1's tables after the join")
        time.sleep(1.0)
        left = time.monotonic()
        w2.stop()  # leaves the group: its partitions move back to w1
        wait_for(lambda: any(t > left and s["/readyz/tables"] != 200 for t, s in probes.samples),
                 60, "w1 to see the leave as a rebalance")  # fmt: skip
        wait_for(lambda: w1.get("/readyz/tables")[0] == 200, 90, "w1's tables after the leave")
        time.sleep(1.0)
    finally:
        probe_samples, order_samples = probes.stop(), orders.stop()

    # Liveness and readiness for traffic never wavered.
    for path in ("/livez", "/healthz", "/readyz"):
        seen = {s[path] for _, s in probe_samples}
        assert seen == {200}, f"{path} answered {seen}"
    # Table readiness went down with each move and came back.
    tables = [(t, s["/readyz/tables"]) for t, s in probe_samples]
    assert any(t > joined and s == 503 for t, s in tables if t < left), "no 503 on the join"
    assert any(t > left and s == 503 for t, s in tables), "no 503 on the leave"
    assert tables[-1][1] == 200
    # Orders and cancellations were taken throughout, while the tables were unavailable too.
    placed = {a["placed"] for _, a in order_samples}
    assert placed == {201}, f"POST /orders answered {placed}"
    cancels = [a["cancelled"] for _, a in order_samples if "cancelled" in a]
    assert cancels and set(cancels) == {200}, f"cancel answered {set(cancels)}"
    down = [t for t, s in tables if s == 503]
    during = [a for t, a in order_samples if down[0] <= t <= down[-1]]
    assert during, "no order was placed while the tables moved"

    # The database, not the answers, says what was taken.
    with sqlite3.connect(_sqlite_path(sqlite_url)) as db:
        rows = dict(db.execute("SELECT order_id, status FROM orders").fetchall())
    assert "rejected" not in rows.values()  # the stock held: no cancellation raced a rejection
    ids = {a["order_id"]: "cancelled" in a for _, a in order_samples}
    assert set(rows) == set(ids)
    assert {i for i, cancelled in ids.items() if cancelled} == {
        i for i, status in rows.items() if status == "cancelled"
    }


def test_readiness_names_the_database_it_cannot_reach(workers: WorkerFactory) -> None:
    # A PostgreSQL URL on a loopback port nothing listens on: every connection is refused.
    closed = free_port()
    worker = workers.start(
        "w1", wait=False, DATABASE_URL=f"postgresql://pipeline@127.0.0.1:{closed}/pipeline"
    )

    def services_up() -> tuple[int, Any] | None:
        """/readyz's answer once the worker's own services are up (while they start, that
        check fails too)."""
        assert worker.proc.poll() is None, f"exited:\n{worker.log()[-3000:]}"
        try:
            status, body = worker.get("/readyz")
        except OSError:
            return None
        return None if "services" in body.get("failed", ["services"]) else (status, body)

    wait_for(lambda: _up(worker), 90, "the web server")
    status, body = wait_for(services_up, 90, "the worker's services to start")
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["failed"] == ["database"]
    assert "database is unavailable" in body["checks"]["database"]
    assert body["checks"]["kafka"] == "ok"
    assert worker.get("/livez")[0] == 200  # alive: restarting it would not bring the database
    status, refused = worker.post("/orders", {
        "customer_id": "c", "customer_email": "c@example.com",
        "items": [{"sku": "s", "quantity": 1, "unit_price": "1.00"}],
    })  # fmt: skip
    assert (status, refused["error"]) == (503, "database_unavailable")


def test_a_worker_is_not_ready_until_its_database_is_migrated(
    workers: WorkerFactory, sqlite_url: str
) -> None:
    worker = workers.start("w1", wait=False)  # on a database nobody migrated yet
    wait_for(lambda: _up(worker), 90, "the web server")

    def answer() -> tuple[int, Any] | None:
        status, body = worker.get("/readyz")
        return None if "services" in body.get("failed", ["services"]) else (status, body)

    status, body = wait_for(answer, 90, "the worker's services to start")
    assert (status, body["failed"]) == (503, ["database"]), body
    assert body["checks"]["database"].startswith("the database has no schema")
    assert body["checks"]["database"].endswith("run `python -m pipeline migrate`")

    migrate(sqlite_url)
    wait_for(lambda: worker.get("/readyz")[0] == 200, 30, "readiness once migrated")
    status, placed = worker.post("/orders", {
        "customer_id": "c", "customer_email": "c@example.com",
        "items": [{"sku": "s", "quantity": 1, "unit_price": "1.00"}],
    })  # fmt: skip
    assert status == 201, placed
    with sqlite3.connect(_sqlite_path(sqlite_url)) as db:
        assert db.execute("SELECT order_id FROM orders").fetchall() == [(placed["order_id"],)]


def _up(worker: Worker) -> bool:
    assert worker.proc.poll() is None, f"exited:\n{worker.log()[-3000:]}"
    try:
        return worker.get("/livez")[0] == 200
    except OSError:
        return False


TOKEN = "probe-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_workers_bound_to_every_interface_route_reads_to_the_address_they_advertise(
    workers: WorkerFactory, sqlite_url: str
) -> None:
    migrate(sqlite_url)
    started = []
    for name in ("w1", "w2"):
        port = free_port()
        started.append(workers.start(
            name, wait=False, port=port, PIPELINE_WEB_HOST="0.0.0.0", PIPELINE_API_TOKEN=TOKEN,
            PIPELINE_WEB_ADVERTISED_URL=f"http://127.0.0.1:{port}",
        ))  # fmt: skip
    for worker in started:
        worker.wait_ready(120)
    w1, w2 = started
    wait_for(lambda: all(w.get("/readyz/tables")[0] == 200 for w in started), 90, "steady group")

    # What each customer placed: two orders of known totals.
    customers = [f"cust-{i}" for i in range(12)]
    for i, customer in enumerate(customers):
        for price in (f"{i + 1}.25", "10.00"):
            status, _ = w1.post("/orders", {
                "customer_id": customer, "customer_email": f"{customer}@example.com",
                "items": [{"sku": "sku-1", "quantity": 2, "unit_price": price}],
            }, AUTH)  # fmt: skip
            assert status == 201

    # Which partition each customer's events are in (Kafka's record, not the pipeline's word),
    # and which worker owns each partition of the customer_stats table.
    def partitions() -> dict[str, int] | None:
        topic = workers.topic("orders.events")
        records = asyncio.run(consume(workers.bootstrap, topic, count=100, timeout=5))
        found = {r.key.decode(): r.partition for r in records}
        return found if set(found) == set(customers) else None

    partition_of = wait_for(partitions, 60, "every customer's events in orders.events")
    owned: dict[int, Worker] = {}
    for worker in started:
        status, share = http_get(worker.url + "/dashboard/worker", headers=AUTH)
        assert status == 200, share
        # Each worker advertises the address it was given, not the one it is bound to.
        assert share["url"] == worker.url
        owned.update((p, worker) for p in share["customer_partitions"])
    assert sorted(owned) == [0, 1, 2, 3]
    assert {w.name for w in owned.values()} == {"w1", "w2"}  # each owns some

    def expected(i: int) -> dict[str, Any]:
        total = 2 * Decimal(f"{i + 1}.25") + 2 * Decimal("10.00")
        return {
            "customer_id": customers[i],
            "order_count": 2,
            "cancelled_count": 0,
            "total_spent": f"{total:.2f}",
            "average_order_value": f"{total / 2:.2f}",
        }

    def stats(worker: Worker, customer: str) -> dict[str, Any] | None:
        status, body = http_get(f"{worker.url}/customers/{customer}/stats", headers=AUTH)
        return body if status == 200 and body["order_count"] == 2 else None

    routed = {"w1": 0, "w2": 0}
    for i, customer in enumerate(customers):
        owner = owned[partition_of[customer]]
        other = w2 if owner is w1 else w1
        direct = wait_for(lambda c=customer, o=owner: stats(o, c), 60, f"{customer} on its owner")
        via_other = wait_for(lambda c=customer, o=other: stats(o, c), 30, f"{customer} routed")
        for answer in (direct, via_other):
            assert {k: answer[k] for k in expected(i)} == expected(i)
        assert via_other == direct
        routed[other.name] += 1
    assert routed["w1"] and routed["w2"]  # reads were routed in both directions
