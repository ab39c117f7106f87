"""The operator commands as an operator runs them: ``python -m pipeline load|stock|outbox|
topics`` in a subprocess, against a real worker, the database and Kafka; each checked against
what the database and the broker then hold."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from sqlalchemy import func, select

from pipeline.adapters.db.outbox import OutboxStore, add_event
from pipeline.adapters.db.schema import make_engine, migrate, orders, outbox
from pipeline.cli.order_generator import OrderGenerator
from pipeline.domain.events import utc_now
from pipeline.settings import PROJECT_ROOT
from tests.conftest import order_created
from tests.integration.workers import WorkerFactory, free_port, wait_for

TOKEN = "ops-cli-token"
PIPELINE_TOPICS = {
    "orders.events": None,
    "inventory.commands": None,
    "inventory.events": None,
    "orders.status": None,
    "analytics.events": None,
    "analytics.revenue": 1,
    "dead-letters": None,
    "retry.1": None,
    "retry.2": None,
    "retry.3": None,
    "redeliver.inventory-requests": None,
    "redeliver.inventory": None,
    "redeliver.order-status": None,
    "redeliver.notifications": None,
    "redeliver.analytics": None,
    "redeliver.revenue": 1,
}


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def bare_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "KAFKA_"))}
    return {**env, "PIPELINE_DATA_DIR": str(tmp_path / "cli"), **settings}


def _db(url: str, query: Any) -> list[Any]:
    async def read() -> list[Any]:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(query)).all())
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_load_stock_and_outbox_status_against_a_worker(
    workers: WorkerFactory, sqlite_url: str, tmp_path: Path
) -> None:
    migrate(sqlite_url)
    worker = workers.start(PIPELINE_API_TOKEN=TOKEN, PIPELINE_OUTBOX_POLL_INTERVAL="0.05")
    env = workers.env(PIPELINE_DATA_DIR=str(tmp_path / "cli"), PIPELINE_API_TOKEN=TOKEN)
    url = ["--url", worker.url]

    # stock set, then stock show returns what was set (once the SKU's owner applied it).
    for sku, units in (("ops-a", 12), ("ops-b", 0)):
        done = cli(env, "stock", "set", sku, str(units), *url)
        assert done.returncode == 0, done.stderr
    want = [
        {"sku": "ops-a", "available": 12, "reserved": 0},
        {"sku": "ops-b", "available": 0, "reserved": 0},
    ]

    def shown() -> Any:
        result = cli(env, "stock", "show", "ops-a", "ops-b", "--json", *url)
        return result.returncode == 0 and json.loads(result.stdout) == want

    wait_for(shown, 60, "stock show to return what was set", interval=0.5)
    table = cli(env, "stock", "show", "ops-a", "ops-zzz", *url)
    assert table.returncode == 1, table.stderr
    assert table.stdout.split("\n")[1].split() == ["ops-a", "12", "0"]
    assert table.stdout.split("\n")[2].split() == ["ops-zzz", "unknown", "-"]
    refused = cli({**env, "PIPELINE_API_TOKEN": "wrong"}, "stock", "set", "ops-a", "1", *url)
    assert refused.returncode == 2 and "PIPELINE_API_TOKEN" in refused.stderr

    # load: N orders at R/s, some cancelled, some invalid on purpose; the database agrees.
    seed, count = 11, 60
    plan = OrderGenerator(seed, cancel_ratio=0.25, invalid_ratio=0.1).orders(count)
    valid = [o for o in plan if o.valid]
    run = cli(
        env,
        "load",
        *url,
        "-n",
        str(count),
        "-r",
        "30",
        "--seed",
        str(seed),
        "--cancel-ratio",
        "0.25",
        "--invalid-ratio",
        "0.1",
        "--json",
        "--progress-interval",
        "0.5",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout)
    rows = _db(sqlite_url, select(orders.c.customer_id, orders.c.status))
    assert summary["sent"] == count and summary["accepted"] == len(valid) == len(rows)
    assert summary["refused"] == {"422": count - len(valid)} and summary["errors"] == 0
    assert Counter(r.customer_id for r in rows) == Counter(o.body["customer_id"] for o in valid)
    assert summary["cancelled"] == sum(r.status == "cancelled" for r in rows)
    assert summary["cancelled"] + summary["cancel_refused"] == sum(o.cancel for o in plan)
    assert summary["cancelled"] > 0
    assert 0 < summary["latency_p50_ms"] <= summary["latency_p99_ms"]
    assert 10 < summary["achieved_rate"] <= 31  # open loop at 30/s: about two seconds
    assert "accepted" in run.stderr  # progress lines (stderr is not a terminal here)

    # The plain summary, and a refused token: exit 2 and nothing written.
    again = cli(env, "load", *url, "-n", "3", "--seed", "12", "--cancel-ratio", "0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "result     ok" in again.stdout and "sent       3 of 3" in again.stdout
    wrong = cli(env, "load", *url, "-n", "3", "--token", "wrong", "--no-progress")
    assert wrong.returncode == 2 and "token" in wrong.stdout
    assert len(_db(sqlite_url, select(orders.c.order_id))) == len(valid) + 3

    # outbox status, once the forwarder has published everything, matches the database.
    def drained() -> Any:
        result = cli(env, "outbox", "status", "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        return status["waiting"] == 0 and status

    status = wait_for(drained, 60, "the forwarder to publish every row", interval=0.5)
    [(published,)] = _db(sqlite_url, select(func.count()).where(outbox.c.status == "published"))
    assert published == len(valid) + 3 + summary["cancelled"]
    assert status["published_in_retention_window"] == published
    assert status["parked"] == 0 and status["oldest_unpublished_age_seconds"] is None
    text = cli(env, "outbox", "status")
    assert text.returncode == 0 and f"published  {published:>8}" in text.stdout


def test_outbox_status_reports_what_the_database_holds(database_url: str, tmp_path: Path) -> None:
    migrate(database_url)
    now = utc_now()
    # (created, published at or None, parked): retention below is one hour.
    rows = [
        (now - timedelta(hours=2), None, False),  # the oldest waiting
        (now - timedelta(minutes=1), None, False),
        (now - timedelta(minutes=9), now - timedelta(seconds=10), False),
        (now - timedelta(minutes=9), now - timedelta(minutes=5), False),
        (now - timedelta(hours=3), now - timedelta(hours=2), False),  # due for purging
        (now - timedelta(minutes=9), None, True),
    ]

    async def seed() -> None:
        engine = make_engine(database_url)
        try:
            store = OutboxStore(engine)
            for created, published_at, parked in rows:
                event = order_created(at=created)
                async with engine.begin() as conn:
                    await add_event(conn, event)
                    row_id = (
                        await conn.execute(
                            select(outbox.c.id).where(outbox.c.event_id == event.event_id)
                        )
                    ).scalar_one()
                if published_at is not None:
                    await store.record([row_id], [], published_at)
                if parked:
                    await store.record([], [(row_id, "MessageSizeTooLargeError")], now)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    env = bare_env(tmp_path, DATABASE_URL=database_url, PIPELINE_OUTBOX_RETENTION_SECONDS="3600")
    result = cli(env, "outbox", "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert (status["waiting"], status["parked"], status["published_in_retention_window"]) == (
        2,
        1,
        2,
    )
    assert 7200 <= status["oldest_unpublished_age_seconds"] < 7200 + 120
    assert status["retention_seconds"] == 3600
    text = cli(env, "outbox", "status")
    assert text.returncode == 0
    assert [line.split()[:2] for line in text.stdout.splitlines()[1:]] == [
        ["waiting", "2"],
        ["parked", "1"],
        ["published", "2"],
    ]


async def _topics(bootstrap: str, prefix: str) -> dict[str, tuple[int, str]]:
    """Partitions and retention.ms of each topic named with ``prefix`` (the prefix removed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = {
            t["topic"]: len(t["partitions"])
            for t in await admin.describe_topics(None)
            if t["topic"].startswith(prefix)
        }
        retention: dict[str, str] = {}
        if found:
            resources = [
                ConfigResource(ConfigResourceType.TOPIC, n, {"retention.ms": None}) for n in found
            ]
            for response in await admin.describe_configs(resources):
                for _code, _msg, _type, name, entries in response.resources:
                    retention[name] = next(e[1] for e in entries if e[0] == "retention.ms")
    finally:
        await admin.close()
    return {n.removeprefix(prefix): (p, retention[n]) for n, p in found.items()}


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [n for n in await admin.list_topics() if n.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def test_topics_create_makes_every_topic_once(
    workers: WorkerFactory, kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = workers.topic_prefix
    env = workers.env(
        PIPELINE_DATA_DIR=str(tmp_path / "cli"),
        PIPELINE_PARTITIONS="3",
        PIPELINE_TOPIC_RETENTION_HOURS="5",
    )
    try:
        dry = cli(env, "topics", "create", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.count("would create") == len(PIPELINE_TOPICS)
        assert asyncio.run(_topics(kafka_bootstrap, prefix)) == {}

        first = cli(env, "topics", "create")
        assert first.returncode == 0, first.stdout + first.stderr
        expected = {name: (n or 3, str(5 * 3600 * 1000)) for name, n in PIPELINE_TOPICS.items()}
        assert asyncio.run(_topics(kafka_bootstrap, prefix)) == expected
        assert f"{len(PIPELINE_TOPICS)} created, 0 already there, 0 problems" in first.stdout

        second = cli(env, "topics", "create")
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"0 created, {len(PIPELINE_TOPICS)} already there, 0 problems" in second.stdout
        assert asyncio.run(_topics(kafka_bootstrap, prefix)) == expected

        # The same topics expected with another partition count: a problem, nothing changed.
        other = cli({**env, "PIPELINE_PARTITIONS": "2"}, "topics", "create")
        assert other.returncode == 1
        problems = [line for line in other.stdout.splitlines() if line.startswith("PROBLEM")]
        assert len(problems) == len(PIPELINE_TOPICS) - 2  # the one-partition topics still fit
        assert all("exists with 3 partitions" in line for line in problems)
        assert "PIPELINE_PARTITIONS" in other.stderr
        assert asyncio.run(_topics(kafka_bootstrap, prefix)) == expected
    finally:
        asyncio.run(_delete_topics(kafka_bootstrap, prefix))


def test_unreachable_services_and_bad_arguments_exit_2_with_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "none" / "pipeline.db"
    env = bare_env(
        tmp_path,
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        DATABASE_URL=f"sqlite:///{missing}",
    )
    nobody = f"http://127.0.0.1:{free_port()}"

    for args in (
        ["load", "--url", nobody, "-n", "5"],
        ["stock", "show", "sku-1", "--url", nobody],
        ["stock", "set", "sku-1", "5", "--url", nobody],
    ):
        result = cli(env, *args)
        assert result.returncode == 2, args
        assert f"cannot reach a worker at {nobody}" in result.stderr and "--url" in result.stderr

    kafka = cli(env, "topics", "create")
    assert kafka.returncode == 2 and "cannot reach Kafka" in kafka.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in kafka.stderr
    database = cli(env, "outbox", "status")
    assert database.returncode == 2 and "python -m pipeline migrate" in database.stderr
    assert not missing.parent.exists()

    for args, message in (
        (["load", "--rate", "0"], "--rate"),
        (["load", "--cancel-ratio", "2"], "--cancel-ratio"),
        (["load", "--url", "ftp://x"], "http://"),
        (["stock", "set", "sku-1", "-5"], "between 0 and"),
        (["topics"], "required"),
    ):
        result = cli(env, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
