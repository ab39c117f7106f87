"""The SQL repositories keep the contract (tests/repository_contract.py), on SQLite and on
PostgreSQL, with the schema the migrations build."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pipeline.adapters.db.dead_letters import DeadLetterStore
from pipeline.adapters.db.orders import OrderStore
from pipeline.adapters.db.outbox import OutboxStore
from pipeline.adapters.db.outbox_admin import OutboxAdmin
from pipeline.adapters.db.schema import make_engine, migrate
from pipeline.services.ports import DeadLetterRepository
from tests.repository_contract import (
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
