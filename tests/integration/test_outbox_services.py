"""A second service publishes its own events through the outbox, with the order service's
guarantees: an event commits or rolls back with the service's own rows, and the forwarder (a
real process) publishes each committed one once, keyed as given, in commit order per key.

The "payments" service here is the test's own code: its own table, its own transactions
(async connections and ORM sessions), on real PostgreSQL and SQLite. The judge is a plain
aiokafka consumer reading the topic.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from pipeline.adapters.db.outbox import OutboxWriter
from pipeline.adapters.db.schema import make_engine, migrate, outbox
from pipeline.domain.outbox import InvalidOutboxEvent, OutboxTopics
from pipeline.settings import PROJECT_ROOT, load_settings
from tests.integration.workers import WorkerFactory, consume, free_port, http_get, wait_for

pytestmark = pytest.mark.integration

ACCOUNTS = ("acct-a", "acct-b", "acct-c")

service_tables = MetaData()
payments = Table(
    "payments",
    service_tables,
    Column("payment_id", String(36), primary_key=True),
    Column("account", String(64), nullable=False),
    Column("amount", String(20), nullable=False),
)


class Refused(Exception):
    """The payments service changes its mind mid-transaction."""


@dataclass
class Ledger:
    """What the payments service did: the events it committed, per key in commit order, and
    the payments whose transactions rolled back."""

    committed: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    event_ids: set[str] = field(default_factory=set)
    rolled_back: set[str] = field(default_factory=set)


async def payments_service(database_url: str, writer: OutboxWriter, foreign: OutboxWriter,
                           ledger: Ledger) -> None:  # fmt: skip
    engine = make_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(service_tables.create_all)

    async def capture(n: int, conn: AsyncConnection | AsyncSession, account: str) -> str:
        payment_id = str(uuid.uuid4())
        row = {"payment_id": payment_id, "account": account, "amount": f"{n}.00"}
        await conn.execute(insert(payments), row)
        value = {"payment_id": payment_id, "n": n}
        # A mapping (sent as JSON) from a session, bytes from a connection: both are values.
        event_id = await writer.add_event(
            conn, "payments.events", account,
            value if isinstance(conn, AsyncSession) else json.dumps(value).encode(),
            event_type="PaymentCaptured", headers={"source": "payments"},
        )  # fmt: skip
        ledger.event_ids.add(event_id)
        return payment_id

    try:
        for n in range(36):
            account = ACCOUNTS[n % 3]
            if n % 4 == 0:  # an ORM session's transaction
                async with AsyncSession(engine) as session, session.begin():
                    payment_id = await capture(n, session, account)
                ledger.committed[account].append(payment_id)
            elif n % 9 == 1:  # rolled back after the event was added
                async with engine.connect() as conn:
                    tx = await conn.begin()
                    ledger.rolled_back.add(await capture(n, conn, account))
                    await tx.rollback()
            elif n % 9 == 5:  # an exception ends the transaction
                with pytest.raises(Refused):
                    async with engine.begin() as conn:
                        ledger.rolled_back.add(await capture(n, conn, account))
                        raise Refused
            elif n % 9 == 7:  # an invalid second event: the caller's transaction rolls back
                with pytest.raises(InvalidOutboxEvent) as err:
                    async with engine.begin() as conn:
                        ledger.rolled_back.add(await capture(n, conn, account))
                        await writer.add_event(conn, "orders.events", account, b"{}",
                                               event_type="PaymentCaptured")  # fmt: skip
                assert err.value.field == "topic"
            else:  # two events of one account in one transaction, in the order written
                async with engine.begin() as conn:
                    first = await capture(n, conn, account)
                    second = await capture(n + 1000, conn, account)
                ledger.committed[account] += [first, second]
            if n == 18:  # a row for a topic this forwarder may not publish to: parked
                async with engine.begin() as conn:
                    await foreign.add_event(conn, "elsewhere.events", "acct-a", b"{}",
                                            event_type="Stray")  # fmt: skip
        async with engine.connect() as conn:
            kept = set((await conn.execute(select(payments.c.payment_id))).scalars())
        committed = {p for ids in ledger.committed.values() for p in ids}
        assert kept == committed and not kept & ledger.rolled_back
    finally:
        await engine.dispose()


async def outbox_statuses(database_url: str) -> dict[str, int]:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(outbox.c.status, func.count()).group_by(outbox.c.status)
            )
            return {status: int(n) for status, n in rows}
    finally:
        await engine.dispose()


def test_another_services_events_are_published_once_in_commit_order_per_key(
    database_url: str, kafka_bootstrap: str, tmp_path: Path, test_id: str
) -> None:
    migrate(database_url)
    factory = WorkerFactory(bootstrap=kafka_bootstrap, root=tmp_path, app_id=f"it-{test_id}",
                            topic_prefix=f"t{test_id}.", database_url=database_url)  # fmt: skip
    env = factory.env(PIPELINE_OUTBOX_TOPICS="payments.events", PIPELINE_DATA_DIR=str(tmp_path))
    writer = OutboxWriter.from_settings(load_settings(env))
    foreign = OutboxWriter(OutboxTopics.from_patterns(["elsewhere.*"], factory.topic_prefix),
                           topic_prefix=factory.topic_prefix)  # fmt: skip
    port = free_port()
    log_path = tmp_path / "forwarder.log"
    with log_path.open("wb") as log:
        forwarder = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "forwarder", "--web-port", str(port)],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    ledger = Ledger()
    try:
        wait_for(lambda: _healthy(port, forwarder, log_path), 60, "the forwarder process")
        asyncio.run(payments_service(database_url, writer, foreign, ledger))
        expected = sum(len(ids) for ids in ledger.committed.values())
        wait_for(lambda: asyncio.run(outbox_statuses(database_url)) == {
            "published": expected, "parked": 1}, 60, "every committed row settled")  # fmt: skip
    finally:
        forwarder.terminate()
        forwarder.wait(30)

    records = asyncio.run(
        consume(kafka_bootstrap, factory.topic("payments.events"), count=expected + 5, timeout=6)
    )
    seen: dict[str, list[str]] = defaultdict(list)
    ids = []
    for record in records:
        headers = dict(record.headers)
        ids.append(headers["event_id"].decode())
        assert headers["event_type"] == b"PaymentCaptured" and headers["source"] == b"payments"
        seen[record.key.decode()].append(json.loads(record.value)["payment_id"])
    assert len(ids) == len(set(ids)) == expected and set(ids) <= ledger.event_ids  # once each
    assert seen == ledger.committed  # keyed as given, in commit order per key
    assert not {p for got in seen.values() for p in got} & ledger.rolled_back
    stray = asyncio.run(consume(kafka_bootstrap, factory.topic("elsewhere.events"), count=1,
                                timeout=3))  # fmt: skip
    assert stray == []


def _healthy(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"the forwarder exited:\n{log_path.read_text(errors='replace')}")
    try:
        return http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    except OSError:
        return False
