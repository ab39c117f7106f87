"""Every store says "the database is unavailable" one way (pipeline.adapters.db.errors): a
database that cannot answer raises Unavailable, a refused constraint stays what it is."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from pipeline.adapters.db.dead_letters import DeadLetterStore
from pipeline.adapters.db.errors import is_unavailable, translated
from pipeline.adapters.db.outbox import OutboxStore
from pipeline.adapters.db.schema import make_engine
from pipeline.domain.dead_letters import Filter
from pipeline.domain.failures import RetryableError, Unavailable


async def test_a_database_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-directory.db").mkdir()  # SQLite cannot open a directory as its file
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'a-directory.db'}")
    try:
        with pytest.raises(Unavailable) as raised:
            await DeadLetterStore(engine).find(Filter())
        assert isinstance(raised.value.__cause__, OperationalError)
        assert isinstance(raised.value, RetryableError)  # the agents retry it
        assert "a-directory" not in str(raised.value)  # the driver's text stays in the cause
        with pytest.raises(Unavailable):
            await OutboxStore(engine).backlog()
    finally:
        await engine.dispose()


async def test_a_refused_constraint_is_not_unavailability() -> None:
    refused = IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed"))

    @translated
    class Store:
        async def write(self) -> None:
            raise refused

        async def read(self) -> None:
            raise ConnectionRefusedError("connection refused")

    with pytest.raises(IntegrityError):
        await Store().write()
    with pytest.raises(Unavailable):
        await Store().read()
    assert not is_unavailable(refused) and not is_unavailable(ValueError("bug"))
    assert not is_unavailable(DataError("INSERT ...", {}, Exception("value too long")))
    assert is_unavailable(OperationalError("SELECT 1", {}, Exception("server closed")))
