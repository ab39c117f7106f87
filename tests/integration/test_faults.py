"""Fault scenarios: workers killed, frozen and churned under load, the database and the broker
stopped. Each asserts the invariants once the system drains — every acknowledged order is in
the database, and reconcile finds no difference between the database, the tables, the outbox
and Kafka — never log lines. Bounded in time; a summary per scenario is printed at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline.db import make_engine, migrate, orders
from pipeline.local.kafka import LocalKafka, broker_answers, new_cluster_id
from pipeline.local.postgres import LocalPostgres
from pipeline.settings import PROJECT_ROOT
from tests.integration.faults import Load, drain, set_stock, summarize
from tests.integration.workers import Worker, WorkerFactory, free_port, wait_for

pytestmark = pytest.mark.faults

# Failover within seconds, not Faust's default minute.
FAST_FAILOVER = {
    "PIPELINE_SESSION_TIMEOUT_SECONDS": "6",
    "PIPELINE_HEARTBEAT_SECONDS": "1",
    "PIPELINE_OUTBOX_POLL_INTERVAL": "0.05",
}


@pytest.fixture
def db(sqlite_url: str) -> str:
    migrate(sqlite_url)
    return sqlite_url


def order_ids(url: str) -> set[str]:
    async def read() -> set[str]:
        engine = make_engine(url)
        async with engine.connect() as conn:
            ids = set((await conn.execute(select(orders.c.order_id))).scalars())
        await engine.dispose()
        return ids

    return asyncio.run(read())


def start_pair(workers: WorkerFactory) -> tuple[Worker, Worker]:
    w1 = workers.start("w1", **FAST_FAILOVER)
    w2 = workers.start("w2", **FAST_FAILOVER)
    set_stock(w1)
    return w1, w2


def finish(name: str, load: Load, checker: Worker, url: str) -> None:
    load.stop()
    assert load.acked_orders, f"no order was acknowledged: {load.refused}"
    missing = set(load.acked_orders) - order_ids(url)
    assert not missing, f"{len(missing)} acknowledged orders are not in the database"
    report, seconds = drain(checker)
    summarize(name, load, report, seconds)


@pytest.fixture
def pair(workers: WorkerFactory, db: str) -> Iterator[tuple[WorkerFactory, list[Worker]]]:
    w1, w2 = start_pair(workers)
    yield workers, [w1, w2]


def test_a_worker_killed_repeatedly_under_load_loses_and_doubles_nothing(
    pair: tuple[WorkerFactory, list[Worker]], db: str
) -> None:
    workers, live = pair
    load = Load(lambda: live, rate=15).start()
    for round_no in range(3):
        time.sleep(4)
        victim = live[round_no % 2]
        victim.stop(signal.SIGKILL)
        live.remove(victim)
        time.sleep(2)
        live.append(workers.start(victim.name, data_dir=victim.data_dir, **FAST_FAILOVER))
    time.sleep(3)
    finish("worker SIGKILL x3 under load", load, live[0], db)


def test_a_frozen_worker_past_its_session_timeout_does_not_double_apply(
    pair: tuple[WorkerFactory, list[Worker]], db: str
) -> None:
    workers, live = pair
    w1, w2 = live
    load = Load(lambda: [w1], rate=15).start()  # the frozen worker's web server is frozen too
    time.sleep(4)
    w2.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(12)  # twice the session timeout: its partitions move to w1
    finally:
        w2.proc.send_signal(signal.SIGCONT)
    time.sleep(6)  # the zombie wakes up, finds itself fenced out and rejoins
    finish("worker SIGSTOP past session timeout", load, w1, db)
    # Its tables, rebuilt from the changelogs, agree as well: no stale write from the zombie.
    assert w2.stop() == 0 and w1.stop() == 0
    fresh = workers.start("w3", data_dir=Path(str(w1.data_dir) + "-fresh"), **FAST_FAILOVER)
    report, _ = drain(fresh, timeout=120)
    assert report["ok"]


def test_workers_started_and_stopped_under_load_keep_every_invariant(
    pair: tuple[WorkerFactory, list[Worker]], db: str
) -> None:
    workers, live = pair
    load = Load(lambda: live, rate=15).start()
    for round_no in range(2):
        extra = workers.start(f"extra{round_no}", **FAST_FAILOVER)
        live.append(extra)
        wait_for(lambda w=extra: w.get("/readyz")[0] == 200, 60, "the extra worker")
        time.sleep(3)
        live.remove(extra)
        assert extra.stop() == 0  # a clean stop hands its partitions back
        time.sleep(3)
    finish("rebalance churn (start/stop x2)", load, live[0], db)


def test_postgres_stopped_under_load_keeps_every_acknowledged_order(
    workers: WorkerFactory, postgres: LocalPostgres | None, postgres_url: str
) -> None:
    if postgres is None:
        pytest.skip("TEST_DATABASE_URL names a server this test must not stop")
    migrate(postgres_url)
    workers.database_url = postgres_url
    env = {**FAST_FAILOVER, "PIPELINE_RETRY_DELAYS": "1,3,10"}
    live = [workers.start("w1", **env), workers.start("w2", **env)]
    set_stock(live[0])
    load = Load(lambda: live, rate=15).start()
    try:
        time.sleep(4)
        postgres.stop(mode="immediate")  # a crash, as far as the database knows
        # While it is down the API says so, with a hint to retry, and writes nothing.
        status, body = wait_for(lambda: (r := live[0].post("/orders", {
            "customer_id": "c-down", "customer_email": "c@example.com",
            "items": [{"sku": "sku-1", "quantity": 1, "unit_price": "1.00"}]})) and r[0] != 201
            and r, 15, "the API to notice the database is down")  # fmt: skip
        assert status == 503 and body["error"] == "database_unavailable", body
        time.sleep(4)
    finally:
        postgres.start()
    time.sleep(6)
    assert load.refused.get(503, 0) > 0
    finish("PostgreSQL stopped (immediate) 8 s", load, live[0], postgres_url)


def test_the_broker_killed_and_restarted_under_load_loses_nothing(
    tmp_path: Path, test_id: str, sqlite_url: str
) -> None:
    migrate(sqlite_url)
    broker = LocalKafka(
        version=os.environ.get("PIPELINE_KAFKA_VERSION", "4.4.0"), port=free_port(),
        controller_port=free_port(), data_dir=tmp_path / "kafka",
        cache_dir=Path(os.environ.get("PIPELINE_CACHE_DIR", PROJECT_ROOT / ".cache")),
        heap="512m",
    )  # fmt: skip
    bootstrap = broker.start(timeout=120)
    workers = WorkerFactory(bootstrap, tmp_path, f"it-{test_id}", f"t{test_id}.", sqlite_url)
    try:
        live = [workers.start("w1", **FAST_FAILOVER), workers.start("w2", **FAST_FAILOVER)]
        set_stock(live[0])
        load = Load(lambda: live, rate=15).start()
        time.sleep(4)
        pid = broker.running_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(5)  # orders are still taken: the outbox holds them until Kafka is back
        broker.start(timeout=120)
        time.sleep(5)
        finish("Kafka broker SIGKILL + restart", load, live[0], sqlite_url)
    finally:
        workers.stop_all()
        broker.stop()


def test_one_broker_of_three_killed_under_load_loses_no_acknowledged_event(
    tmp_path: Path, test_id: str, sqlite_url: str
) -> None:
    """Replication factor 3, min.insync.replicas 2: with one broker gone for good, every write
    acknowledged (acks=all) is on a surviving replica and the pipeline carries on."""
    migrate(sqlite_url)
    ports: list[int] = []
    while len(ports) < 6:
        if (port := free_port()) not in ports:
            ports.append(port)
    pairs = list(zip(ports[::2], ports[1::2], strict=True))
    voters = ",".join(f"{n}@127.0.0.1:{c}" for n, (_, c) in enumerate(pairs, start=1))
    cluster_id = new_cluster_id()
    nodes = [
        LocalKafka(
            version=os.environ.get("PIPELINE_KAFKA_VERSION", "4.4.0"),
            port=port,
            controller_port=controller,
            data_dir=tmp_path / f"kafka{n}",
            cache_dir=Path(os.environ.get("PIPELINE_CACHE_DIR", PROJECT_ROOT / ".cache")),
            heap="384m",
            node_id=n,
            voters=voters,
            cluster_id=cluster_id,
            replication=3,
        )
        for n, (port, controller) in enumerate(pairs, start=1)
    ]
    try:
        for node in nodes:
            node.start(wait=False)
        wait_for(lambda: all(broker_answers(n.bootstrap_servers, 2.0) for n in nodes), 180,
                 "the three brokers to form a cluster")  # fmt: skip
        bootstrap = ",".join(n.bootstrap_servers for n in nodes)
        workers = WorkerFactory(bootstrap, tmp_path, f"it-{test_id}", f"t{test_id}.", sqlite_url)
        env = {**FAST_FAILOVER, "PIPELINE_REPLICATION_FACTOR": "3"}
        try:
            live = [workers.start("w1", **env), workers.start("w2", **env)]
            assert asyncio.run(_replicas(bootstrap, workers.topic("orders.events"))) == {3}
            set_stock(live[0])
            load = Load(lambda: live, rate=15).start()
            time.sleep(5)
            pid = nodes[1].running_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # and it stays down
            time.sleep(8)
            finish("1 of 3 brokers SIGKILLed (RF 3)", load, live[0], sqlite_url)
        finally:
            workers.stop_all()
    finally:
        for node in nodes:
            node.stop()


async def _replicas(bootstrap: str, topic: str) -> set[int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {len(p["replicas"]) for p in described["partitions"]}
