"""The SQL repositories keep the contract (tests/repository_contract.py), on SQLite and on
PostgreSQL, with the schema the migrations build."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pipeline.adapters.db.dead_letters import DeadLetterStore
from pipeline.adapters.db.orders import OrderStore
from pipeline.adapters.db.outbox import OutboxStore, OutboxWriter
from pipeline.adapters.db.outbox_admin import OutboxAdmin
from pipeline.adapters.db.schema import make_engine, migrate
from pipeline.domain.outbox import OutboxTopics
from pipeline.services.ports import DeadLetterRepository
from tests.conftest import T0, order_created
from tests.repository_contract import (
    LONG_AGO,
    OPERATOR,
    DeadLetterContract,
    Operations,
    OperationsContract,
    Repos,
    RepositoryContract,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def migrated(database_url: str) -> str:
    migrate(database_url)  # Alembic runs its own loop: outside the test's
    return database_url


class TestSqlRepositories(RepositoryContract):
    @pytest.fixture
    async def repos(self, migrated: str) -> AsyncIterator[Repos]:
        engine = make_engine(migrated)
        yield OrderStore(engine), OutboxStore(engine)
        await engine.dispose()


class TestSqlDeadLetters(DeadLetterContract):
    @pytest.fixture
    async def letters(self, migrated: str) -> AsyncIterator[DeadLetterRepository]:
        engine = make_engine(migrated)
        yield DeadLetterStore(engine)
        await engine.dispose()


class TestSqlOperations(OperationsContract):
    @pytest.fixture
    async def operations(self, migrated: str) -> AsyncIterator[Operations]:
        engine = make_engine(migrated)
        yield OrderStore(engine), OutboxStore(engine), OutboxAdmin(engine)
        await engine.dispose()

    async def test_a_later_row_of_the_key_on_another_topic_does_not_hold_a_requeue_back(
        self, migrated: str
    ) -> None:
        """Order is per topic and key: a customer's later payment event, published, says
        nothing about where their parked order event may go."""
        engine = make_engine(migrated)
        orders, outbox, admin = OrderStore(engine), OutboxStore(engine), OutboxAdmin(engine)
        writer = OutboxWriter(OutboxTopics.from_patterns(["payments.events"]))
        await orders.create_order(order_created("a", at=T0))
        async with engine.begin() as conn:
            await writer.add_event(conn, "payments.events", "a", {"paid": 1},
                                   event_type="PaymentTaken")  # fmt: skip
        order_row, payment_row = [r.id for r in await outbox.pending(10)]
        await outbox.record([payment_row], [(order_row, "too large")], T0)
        done = await admin.requeue([order_row], OPERATOR, out_of_order=False,
                                   verifiable_since=LONG_AGO)  # fmt: skip
        assert (done.done, done.refused) == ([order_row], [])
        assert [r.id for r in await outbox.pending(10)] == [order_row]
        await engine.dispose()
