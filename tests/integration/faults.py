"""The fault scenarios' harness: a load generator that remembers what was acknowledged, a
drain that waits for reconcile to agree, and the per-scenario summary printed at the end."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.integration.workers import Worker

SKUS = [f"sku-{n}" for n in range(8)]
STOCK = 1_000_000  # plenty: the faults are what is being tested, not stock-outs
SUMMARY: list[str] = []  # printed by conftest's pytest_terminal_summary


@dataclass
class Load:
    """Orders (and some cancellations) at ``rate`` per second through whichever of
    ``workers()`` answers, until stopped. Only 2xx answers count as acknowledged."""

    workers: Callable[[], Sequence[Worker]]
    rate: float = 20.0
    customers: int = 12
    cancel_every: int = 7
    seed: int = 5
    acked_orders: list[str] = field(default_factory=list)
    acked_cancels: list[str] = field(default_factory=list)
    refused: dict[int, int] = field(default_factory=dict)  # status -> count (0: no answer)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    @property
    def events(self) -> int:
        return len(self.acked_orders) + len(self.acked_cancels)

    def _run(self) -> None:
        rng = random.Random(self.seed)
        run = uuid.uuid4().hex[:4]
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += 1 / self.rate
            time.sleep(max(0.0, next_at - time.monotonic()))
            n += 1
            customer = f"cust-{run}-{rng.randrange(self.customers)}"
            if n % self.cancel_every == 0 and self.acked_orders:
                victim = rng.choice(self.acked_orders)
                status, _ = self._call("post", f"/orders/{victim}/cancel", {}, rng)
                if status == 200:
                    self.acked_cancels.append(victim)
                continue
            items = [
                {"sku": s, "quantity": rng.randint(1, 3), "unit_price": f"{rng.randint(1, 90)}.50"}
                for s in rng.sample(SKUS, rng.randint(1, 3))
            ]
            body = {"customer_id": customer, "customer_email": f"{customer}@example.com",
                    "items": items}  # fmt: skip
            status, reply = self._call("post", "/orders", body, rng)
            if status == 201:
                self.acked_orders.append(reply["order_id"])

    def _call(self, method: str, path: str, body: Any, rng: random.Random) -> tuple[int, Any]:
        live = [w for w in self.workers() if w.proc.poll() is None]
        if not live:
            self.refused[0] = self.refused.get(0, 0) + 1
            return 0, None
        worker = rng.choice(live)
        try:
            status, reply = getattr(worker, method)(path, body)
        except OSError:
            status, reply = 0, None
        if status >= 300 or status == 0:
            self.refused[status] = self.refused.get(status, 0) + 1
        return status, reply


def set_stock(worker: Worker) -> None:
    for sku in SKUS:
        status, body = worker.put(f"/inventory/{sku}", {"available": STOCK})
        assert status == 202, body


def reconcile(worker: Worker) -> dict[str, Any] | None:
    try:
        status, report = worker.get("/admin/reconcile")
    except OSError:
        return None
    return report if status == 200 else None


def drain(worker: Worker, timeout: float = 180) -> tuple[dict[str, Any], float]:
    """Wait until reconcile finds no difference; the report and the seconds it took."""
    started = time.monotonic()
    report: dict[str, Any] | None = None
    while time.monotonic() - started < timeout:
        report = reconcile(worker)
        if report is not None and report["ok"]:
            return report, time.monotonic() - started
        time.sleep(1.0)
    differences = (report or {}).get("differences", "no answer")
    raise AssertionError(f"did not reconcile within {timeout}s: {differences}")


def summarize(name: str, load: Load, report: dict[str, Any], seconds: float) -> None:
    checked = report["checked"]
    dead_letters = checked.get("dead_lettered_analytics", 0)
    SUMMARY.append(
        f"{name:<34} sent {load.events:>5}  applied {checked['kafka_events']:>5}  "
        f"duplicates absorbed {checked.get('kafka_duplicates', 0):>4}  "
        f"dead-lettered {dead_letters:>3}  refused {sum(load.refused.values()):>4}  "
        f"drained in {seconds:5.1f}s"
    )
