"""The numbers the dashboard shows: every worker's snapshot merged into the cluster's view.

Pure functions and plain values, so the merge is tested offline; :mod:`pipeline.web.dashboard`
takes the snapshots (its own, and the other workers' over HTTP) and reads the database.

A worker sees only part of the cluster: its own counters, the lag of the partitions it
consumes, and the customers of the table partitions it owns. The cluster's figures are the sums
and unions of every worker's, and they are ``complete`` only when every worker answered and the
customer partitions they reported cover each partition exactly once (during a rebalance they
may not: the page says so rather than show a top list with a hole in it).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipeline.domain.dead_letters import OPEN
from pipeline.domain.events import money


@dataclass(frozen=True, slots=True)
class CustomerFigures:
    """The figures of one customer that rank it: what ``GET /customers/{id}/stats`` says."""

    customer_id: str
    order_count: int
    cancelled_count: int
    total_spent: Decimal

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "order_count": self.order_count,
            "cancelled_count": self.cancelled_count,
            "total_spent": money(self.total_spent),
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> CustomerFigures:
        return cls(
            str(body["customer_id"]),
            int(body["order_count"]),
            int(body["cancelled_count"]),
            Decimal(str(body["total_spent"])),
        )


def _rank(c: CustomerFigures) -> tuple[Decimal, int, str]:
    return -c.total_spent, -c.order_count, c.customer_id


def top_customers(customers: Iterable[CustomerFigures], n: int) -> list[CustomerFigures]:
    """The ``n`` customers who spent most (then most orders, then by id): each worker's top
    ``n`` of its partitions holds the cluster's top ``n`` between them."""
    return heapq.nsmallest(n, customers, key=_rank)


class CounterHistory:
    """Samples of a worker's cumulative counters, turned into per-second rates over the last
    ``window`` seconds. Counters live as long as the process, so they never go down."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def add(self, at: float, totals: Mapping[str, float]) -> None:
        self._samples.append((at, dict(totals)))
        # Keep one sample at or beyond the window's start: the rate spans the whole window.
        while len(self._samples) > 2 and self._samples[1][0] <= at - self.window:
            self._samples.popleft()

    def rates(self) -> dict[str, float]:
        """Per counter, its increase per second from the oldest sample kept to the newest
        (0.0 until two samples a moment apart exist)."""
        if len(self._samples) < 2:
            return {name: 0.0 for name in (self._samples[-1][1] if self._samples else {})}
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        elapsed = t1 - t0
        return {
            name: max(0.0, value - first.get(name, 0.0)) / elapsed if elapsed > 0 else 0.0
            for name, value in last.items()
        }


@dataclass(frozen=True, slots=True)
class Lag:
    topic: str
    partition: int
    records: int


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """One worker's part of the dashboard, as its ``GET /dashboard/worker`` answers it."""

    url: str
    ready: bool
    events_processed: dict[str, float] = field(default_factory=dict)  # per agent, since start
    events_per_second: dict[str, float] = field(default_factory=dict)
    orders_created: float = 0.0
    orders_per_second: float = 0.0
    lag: tuple[Lag, ...] = ()
    customer_partitions: tuple[int, ...] = ()
    top_customers: tuple[CustomerFigures, ...] = ()
    revenue: list[dict[str, Any]] | None = None  # only the revenue table's owner has them

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ready": self.ready,
            "events_processed": self.events_processed,
            "events_per_second": self.events_per_second,
            "orders_created": self.orders_created,
            "orders_per_second": self.orders_per_second,
            "lag": [[x.topic, x.partition, x.records] for x in self.lag],
            "customer_partitions": list(self.customer_partitions),
            "top_customers": [c.to_json() for c in self.top_customers],
            "revenue": self.revenue,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> WorkerSnapshot:
        return cls(
            url=str(body["url"]),
            ready=bool(body["ready"]),
            events_processed={str(k): float(v) for k, v in body["events_processed"].items()},
            events_per_second={str(k): float(v) for k, v in body["events_per_second"].items()},
            orders_created=float(body["orders_created"]),
            orders_per_second=float(body["orders_per_second"]),
            lag=tuple(Lag(str(t), int(p), int(n)) for t, p, n in body["lag"]),
            customer_partitions=tuple(int(p) for p in body["customer_partitions"]),
            top_customers=tuple(CustomerFigures.from_json(c) for c in body["top_customers"]),
            revenue=body["revenue"],
        )


def _rate(value: float) -> float:
    return round(value, 1)


def merge(
    snapshots: Iterable[WorkerSnapshot],
    unreachable: Mapping[str, str],
    *,
    partitions: int,
    top_n: int,
) -> dict[str, Any]:
    """The cluster's figures from every worker's snapshot; ``unreachable`` maps the URL of
    each worker that did not answer to why."""
    shots = sorted(snapshots, key=lambda s: s.url)
    agents = sorted({a for s in shots for a in s.events_processed})
    rates = {a: _rate(sum(s.events_per_second.get(a, 0.0) for s in shots)) for a in agents}
    processed = {a: int(sum(s.events_processed.get(a, 0.0) for s in shots)) for a in agents}
    lag = sorted(
        ((x, s.url) for s in shots for x in s.lag), key=lambda xu: (xu[0].topic, xu[0].partition)
    )
    covered = sorted(p for s in shots for p in s.customer_partitions)
    revenue = next((s.revenue for s in shots if s.revenue is not None), None)
    workers = [
        {"url": s.url, "ready": s.ready, "partitions": list(s.customer_partitions), "error": None}
        for s in shots
    ]
    workers += [
        {"url": url, "ready": False, "partitions": [], "error": why}
        for url, why in sorted(unreachable.items())
    ]
    complete = (
        not unreachable and all(s.ready for s in shots) and covered == list(range(partitions))
    )
    return {
        "complete": complete,
        "workers": workers,
        "throughput": {
            "events_per_second": _rate(sum(rates.values())),
            "by_agent": [
                {"agent": a, "events_per_second": rates[a], "events_processed": processed[a]}
                for a in agents
            ],
            "orders_created": int(sum(s.orders_created for s in shots)),
            "orders_per_second": _rate(sum(s.orders_per_second for s in shots)),
        },
        "consumer_lag": {
            "total": sum(x.records for x, _ in lag),
            "partitions": [
                {"topic": x.topic, "partition": x.partition, "records": x.records, "worker": url}
                for x, url in lag
            ],
        },
        "top_customers": [
            c.to_json() for c in top_customers((c for s in shots for c in s.top_customers), top_n)
        ],
        "revenue": {"windows": revenue or []},
    }


def dead_letter_summary(counts: Iterable[tuple[str, str, int]]) -> dict[str, Any]:
    """``(reason, status, count)`` rows as the total, the open ones, and the count per reason
    (most first)."""
    per_reason: dict[str, int] = {}
    total = open_ = 0
    for reason, status, n in counts:
        per_reason[reason] = per_reason.get(reason, 0) + n
        total += n
        open_ += n if status == OPEN else 0
    by_reason = sorted(per_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "total": total,
        "open": open_,
        "by_reason": [{"reason": r, "count": n} for r, n in by_reason],
    }
