"""The in-memory repositories keep the same contract as the SQL ones."""

from __future__ import annotations

import pytest

from pipeline.adapters.memory import MemoryDatabase, MemoryOrderStore, MemoryOutboxStore
from tests.repository_contract import Repos, RepositoryContract


class TestMemoryRepositories(RepositoryContract):
    @pytest.fixture
    def repos(self) -> Repos:
        db = MemoryDatabase()
        return MemoryOrderStore(db), MemoryOutboxStore(db)
