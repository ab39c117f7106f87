"""The in-memory repositories keep the same contract as the SQL ones."""

from __future__ import annotations

import pytest

from pipeline.adapters.memory import (
    MemoryDatabase,
    MemoryDeadLetterStore,
    MemoryOrderStore,
    MemoryOutboxAdmin,
    MemoryOutboxStore,
)
from pipeline.services.ports import DeadLetterRepository
from tests.repository_contract import (
    DeadLetterContract,
    Operations,
    OperationsContract,
    Repos,
    RepositoryContract,
)


class TestMemoryRepositories(RepositoryContract):
    @pytest.fixture
    def repos(self) -> Repos:
        db = MemoryDatabase()
        return MemoryOrderStore(db), MemoryOutboxStore(db)


class TestMemoryDeadLetters(DeadLetterContract):
    @pytest.fixture
    def letters(self) -> DeadLetterRepository:
        return MemoryDeadLetterStore(MemoryDatabase())


class TestMemoryOperations(OperationsContract):
    @pytest.fixture
    def operations(self) -> Operations:
        db = MemoryDatabase()
        return MemoryOrderStore(db), MemoryOutboxStore(db), MemoryOutboxAdmin(db)
