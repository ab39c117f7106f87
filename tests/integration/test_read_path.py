"""The read path end to end on two real workers: orders through the API, every order event
delivered twice, cancellations and stock rejections; the stats, stock and revenue must come
out exact, the same from either worker, and again after a worker rebuilds from changelogs."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pipeline.adapters.db.schema import make_engine, migrate, order_items, orders
from pipeline.domain.events import derived_event_id, money
from pipeline.domain.horizon import Horizon
from pipeline.settings import PROJECT_ROOT
from tests.integration.workers import (
    Worker,
    WorkerFactory,
    consume,
    create_topics,
    produce,
    wait_for,
)

STOCK = {"sku-a": 12, "sku-b": 4, "sku-c": 100}
CUSTOMERS = [f"cust-{i}" for i in range(5)]
TOPICS = ["orders.events", "inventory.commands", "inventory.events", "orders.status",
          "analytics.events"]  # fmt: skip


def db_truth(url: str) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Per customer the figures the contract defines, and per SKU the reserved units
    (lines of confirmed orders not cancelled), from the database — the source of truth."""

    async def read() -> tuple[list[Any], list[Any]]:
        engine = make_engine(url)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(orders))).all()
            lines = (
                await conn.execute(
                    select(order_items.c.sku, order_items.c.quantity, orders.c.status).join(
                        orders, orders.c.order_id == order_items.c.order_id
                    )
                )
            ).all()
        await engine.dispose()
        return rows, lines

    rows, lines = asyncio.run(read())
    stats: dict[str, dict[str, Any]] = {}
    for c in CUSTOMERS:
        mine = [r for r in rows if r.customer_id == c]
        live = [r for r in mine if r.status != "cancelled"]
        total = sum((r.total for r in live), Decimal("0.00"))
        stats[c] = {
            "order_count": len(mine),
            "cancelled_count": len(mine) - len(live),
            "total_spent": money(total),
            "average_order_value": money(total / len(live)) if live else "0.00",
        }
    reserved: dict[str, int] = defaultdict(int)
    for sku, quantity, status in lines:
        if status == "confirmed":
            reserved[sku] += quantity
    return stats, dict(reserved)


def answers(worker: Worker) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in CUSTOMERS:
        status, body = worker.get(f"/customers/{c}/stats")
        out[c] = body if status == 200 else None
    for sku in STOCK:
        status, body = worker.get(f"/inventory/{sku}")
        out[sku] = body if status == 200 else None
    return out


def test_duplicated_stream_gives_exact_stats_stock_and_revenue_on_any_worker(
    workers: WorkerFactory, kafka_bootstrap: str, sqlite_url: str, tmp_path: Path
) -> None:
    migrate(sqlite_url)
    asyncio.run(create_topics(kafka_bootstrap, [workers.topic(t) for t in TOPICS]))
    env = {"PIPELINE_OUTBOX_POLL_INTERVAL": "0.05"}
    w1, w2 = workers.start("w1", **env), workers.start("w2", **env)
    for sku, units in STOCK.items():
        assert w1.put(f"/inventory/{sku}", {"available": units})[0] == 202
    wait_for(lambda: all((w2.get(f"/inventory/{s}")[1] or {}).get("available") == n
                         for s, n in STOCK.items()), 60, "stock to be set")  # fmt: skip

    rng = random.Random(11)
    placed: list[str] = []
    for n in range(40):
        worker = (w1, w2)[n % 2]
        customer = CUSTOMERS[n % len(CUSTOMERS)]
        items = [
            {"sku": sku, "quantity": rng.randint(1, 3), "unit_price": f"{rng.randint(1, 50)}.25"}
            for sku in rng.sample(sorted(STOCK), rng.randint(1, 3))
        ]
        status, body = worker.post(
            "/orders", {"customer_id": customer, "customer_email": f"{customer}@example.com",
                        "items": items},
        )  # fmt: skip
        assert status == 201, body
        placed.append(body["order_id"])
        if n % 7 == 3:  # cancel an earlier order, whatever inventory made of it
            victim = placed[n // 2]
            assert (w2 if n % 2 else w1).post(f"/orders/{victim}/cancel", {})[0] in (200, 409)

    # Every order event delivered a second time, as after a forwarder crash.
    topic = workers.topic("orders.events")
    first = wait_for(
        lambda: (
            len(r := asyncio.run(consume(kafka_bootstrap, topic, count=1000, timeout=3)))
            >= len(placed)
            and r
        ),
        60,
        "the forwarder to publish every order",
    )
    asyncio.run(produce(kafka_bootstrap, topic, [(r.key, r.value, r.headers) for r in first]))

    def settled() -> bool:
        stats, reserved = db_truth(sqlite_url)
        got = answers(w1)
        return all(
            got[c] is not None and {k: got[c][k] for k in stats[c]} == stats[c]
            for c in CUSTOMERS
        ) and all(
            got[s] is not None
            and got[s]["reserved"] == reserved.get(s, 0)
            and got[s]["available"] + got[s]["reserved"] == STOCK[s]
            for s in STOCK
        )  # fmt: skip

    wait_for(settled, 90, "stats and stock to match the database", interval=0.5)
    statuses = {r.status for r in _orders(sqlite_url)}
    assert "created" not in statuses and {"confirmed", "rejected"} <= statuses

    # Any worker answers for any key, with the owner's answer.
    assert answers(w2) == answers(w1)

    # The reconcile command agrees, from either worker; every event was delivered twice.
    status, report = w2.get("/admin/reconcile")
    assert status == 200 and report["ok"], report["differences"]
    assert report["checked"]["kafka_duplicates"] == report["checked"]["kafka_events"]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "reconcile", "--url", w1.url], cwd=PROJECT_ROOT,
        env=workers.env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reconciled: no differences" in result.stdout

    # Revenue windows sum to the net revenue of the orders not cancelled.
    stats, _ = db_truth(sqlite_url)
    expected = sum(Decimal(s["total_spent"]) for s in stats.values())
    windows = wait_for(
        lambda: (b := w2.get("/analytics/revenue")[1]) and sum(
            Decimal(w["revenue"]) for w in b["windows"]) == expected and b["windows"],
        30, "revenue windows to add up",
    )  # fmt: skip
    live = sum(1 for r in _orders(sqlite_url) if r.status != "cancelled")
    assert sum(w["orders"] for w in windows) == live

    # One notification per decided order: never two for one order, none for an order
    # cancelled before inventory decided (one confirmed, then cancelled, keeps its mail).
    names = [p.stem for w in (w1, w2) for p in (w.data_dir / "mailbox").glob("*.eml")]
    assert len(names) == len(set(names))
    by_order = {
        derived_event_id(r.order_id, kind): r
        for r in _orders(sqlite_url)
        for kind in ("OrderConfirmed", "OrderRejected")
    }
    mailed = [by_order[n] for n in names]
    assert len({r.order_id for r in mailed}) == len(mailed)
    for r in _orders(sqlite_url):
        if r.status == "confirmed":
            assert derived_event_id(r.order_id, "OrderConfirmed") in names
        elif r.status == "rejected":
            assert derived_event_id(r.order_id, "OrderRejected") in names
    assert all(r.status != "cancelled" or derived_event_id(r.order_id, "OrderRejected")
               not in names for r in mailed)  # fmt: skip

    # A worker whose RocksDB state is deleted rebuilds the same tables from the changelogs.
    before = answers(w1)
    assert w2.stop() == 0
    shutil.rmtree(w2.data_dir / "state")
    w2b = workers.start("w2", **env)
    wait_for(lambda: answers(w2b) == before, 60, "the rebuilt worker to answer as before")
    assert w1.stop() == 0
    # Now alone, w2b takes over every partition (its standby-less tables recover first).
    wait_for(lambda: answers(w2b) == before, 90, "the lone worker to answer as before")


def _orders(url: str) -> list[Any]:
    async def read() -> list[Any]:
        engine = make_engine(url)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(orders))).all()
        await engine.dispose()
        return list(rows)

    return asyncio.run(read())


def _order(customer: str, n: int) -> Any:
    from datetime import UTC, datetime

    from pipeline.domain.events import Contact, OrderCreated, OrderLine

    line = OrderLine("sku-a", 1, Decimal("10.00"))
    return OrderCreated(
        event_id=f"00000000-0000-4000-8000-{n:012d}", order_id=f"10000000-0000-4000-8000-{n:012d}",
        customer_id=customer, contact=Contact(f"{customer}@example.com"), items=(line,),
        total=Decimal("10.00"), created_at=datetime(2026, 11, 1, 12, n, tzinfo=UTC),
    )  # fmt: skip


def test_a_redelivered_event_puts_its_effect_back_into_the_changelog(
    workers: WorkerFactory, kafka_bootstrap: str, sqlite_url: str
) -> None:
    """A worker killed after its RocksDB write but before the broker acknowledged the changelog
    record keeps the write, and the event's offset is not committed. Restarted on that state, it
    finds the redelivered event already applied: the stored value must still reach the
    changelog, or a worker rebuilding the table later never counts the event."""
    import json

    from aiokafka.partitioner import DefaultPartitioner
    from rocksdict import Options, Rdict

    from pipeline.domain.customer_stats import CustomerStats, apply_event
    from pipeline.domain.events import encode
    from pipeline.streaming import versions
    from tests.integration.workers import metric

    migrate(sqlite_url)
    asyncio.run(create_topics(kafka_bootstrap, [workers.topic(t) for t in TOPICS]))
    env = {"PIPELINE_AGENTS": "analytics"}
    customer, source = "cust-gap", workers.topic("orders.events")
    first, second = _order(customer, 1), _order(customer, 2)
    w1 = workers.start("w1", **env)
    asyncio.run(produce(kafka_bootstrap, source, [(customer.encode(), encode(first))]))
    wait_for(lambda: (w1.get(f"/customers/{customer}/stats")[1] or {}).get("order_count") == 1,
             60, "the first order to count")  # fmt: skip
    assert w1.stop() == 0

    # What the kill leaves: the second order applied in the worker's RocksDB, no changelog record.
    partition = DefaultPartitioner()(customer.encode(), list(range(4)), list(range(4)))
    path = next((w1.data_dir / "state").glob(f"**/tables/customer_stats-{partition}.db"))
    db = Rdict(str(path), Options(raw_mode=True))
    try:
        stored = CustomerStats.from_value(json.loads(db[customer.encode()]))
        applied, changed = apply_event(stored, second, Horizon(stored.clock, 300, 86400))
        assert changed and applied.order_count == 2
        db[customer.encode()] = versions.encode(stored.version + 1, applied.to_value())
    finally:
        db.close()
    asyncio.run(produce(kafka_bootstrap, source, [(customer.encode(), encode(second))]))
    w1b = workers.start("w1", data_dir=w1.data_dir, **env)
    handled = lambda: metric(w1b.metrics(), "pipeline_events_processed_total", agent="analytics")  # noqa: E731
    wait_for(lambda: handled() == 1, 60, "the second order to be handled (a duplicate there)")
    assert w1b.get(f"/customers/{customer}/stats")[1]["order_count"] == 2
    assert w1b.stop() == 0

    # A worker with empty state rebuilds the table from the changelog alone.
    w2 = workers.start("w2", **env)
    wait_for(lambda: (w2.get(f"/customers/{customer}/stats")[1] or {}).get("order_count") == 2,
             60, "the rebuilt stats to count both orders")  # fmt: skip
