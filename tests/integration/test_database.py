"""The schema on both databases: created and upgraded by migrations, money exact."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import insert, inspect, select

from pipeline.adapters.db.orders import OrderStore
from pipeline.adapters.db.schema import make_engine, migrate, order_items, orders, schema_revision
from pipeline.domain.events import Contact, OrderCreated, OrderLine
from pipeline.domain.failures import Unavailable
from pipeline.local.postgres import LocalPostgres
from pipeline.settings import PROJECT_ROOT


def test_migrate_creates_the_schema_and_is_repeatable(database_url: str) -> None:
    assert schema_revision(database_url) is None
    migrate(database_url)
    migrate(database_url)  # a second run is a no-op, not an error
    assert schema_revision(database_url) == "0004"

    async def tables() -> set[str]:
        engine = make_engine(database_url)
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        await engine.dispose()
        return names

    assert {"orders", "order_items", "outbox", "dead_letters", "dead_letter_replays",
            "operator_actions", "alembic_version"} <= asyncio.run(tables())  # fmt: skip


def test_money_round_trips_exactly(database_url: str) -> None:
    migrate(database_url)
    now = datetime.now(UTC)

    async def round_trip() -> tuple[Decimal, Decimal]:
        engine = make_engine(database_url)
        async with engine.begin() as conn:
            await conn.execute(
                insert(orders).values(
                    order_id="o-1", customer_id="c-1", customer_email="c@example.com",
                    status="created", total=Decimal("0.30"), created_at=now, updated_at=now,
                )
            )  # fmt: skip
            await conn.execute(
                insert(order_items).values(
                    order_id="o-1", line_no=1, sku="s", quantity=3, unit_price=Decimal("0.10")
                )
            )
        async with engine.connect() as conn:
            total = (await conn.execute(select(orders.c.total))).scalar_one()
            price = (await conn.execute(select(order_items.c.unit_price))).scalar_one()
        await engine.dispose()
        return total, price

    total, price = asyncio.run(round_trip())
    assert isinstance(total, Decimal) and total == Decimal("0.30")
    assert price * 3 == total


def test_migrate_command_reports_the_revision(database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "migrate"],
        cwd=PROJECT_ROOT,
        env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "schema at revision 0004" in result.stdout
    assert schema_revision(database_url) == "0004"


def test_the_migrations_build_exactly_the_declared_schema(database_url: str) -> None:
    """``pipeline.adapters.db.schema`` declares the schema the code uses; the migrations must build
    the same."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from pipeline.adapters.db.schema import metadata

    migrate(database_url)

    async def differences() -> list[object]:
        engine = make_engine(database_url)
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), metadata)
            )
        await engine.dispose()
        return list(diff)

    assert asyncio.run(differences()) == []


def test_a_restarted_server_costs_one_failed_statement_and_nothing_written(
    postgres: LocalPostgres | None, postgres_url: str
) -> None:
    """The pool does not ping before every checkout (schema.make_engine): after a restart the
    first statement on an old connection fails as Unavailable, before anything is written,
    and the pool replaces every old connection, so the next statements succeed."""
    if postgres is None:
        pytest.skip("TEST_DATABASE_URL names a server this test must not stop")
    migrate(postgres_url)

    def order(n: int) -> OrderCreated:
        return OrderCreated(
            event_id=f"e-{n}", order_id=f"o-{n}", customer_id="c", contact=Contact("c@example.com"),
            items=(OrderLine("sku-1", 1, Decimal("1.00")),), total=Decimal("1.00"),
            created_at=datetime.now(UTC),
        )  # fmt: skip

    async def scenario() -> tuple[list[str], list[str | None]]:
        engine = make_engine(postgres_url, pool_size=4)
        store = OrderStore(engine)
        # Four pooled connections, all opened before the restart.
        await asyncio.gather(*(store.create_order(order(n)) for n in range(4)))
        postgres.stop(mode="immediate")
        postgres.start()
        outcomes = []
        for n in range(4, 10):
            try:
                await store.create_order(order(n))
                outcomes.append("created")
            except Unavailable:
                outcomes.append("unavailable")
        found = [(await store.get_order(f"o-{n}") or {}).get("status") for n in range(10)]
        await engine.dispose()
        return outcomes, found

    outcomes, found = asyncio.run(scenario())
    assert outcomes[0] == "unavailable"  # the fault bit: the old connection was dead
    assert outcomes[1:] == ["created"] * 5
    assert found == ["created"] * 4 + [None] + ["created"] * 5  # the failed one wrote nothing
