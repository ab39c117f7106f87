"""Integration fixtures: the real local Kafka and PostgreSQL, started once per session.

Set ``TEST_KAFKA_BOOTSTRAP_SERVERS`` to run against a broker you started yourself, and
``TEST_DATABASE_URL`` (a PostgreSQL URL) to use your own server; otherwise the session starts
a local broker on free ports under a temporary directory and the project's private PostgreSQL.
Every test gets its own topic prefix and Faust app id, so its topics, consumer group and
changelogs are new.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.local.kafka import LocalKafka, port_is_free
from pipeline.local.postgres import LocalPostgres, default_data_dir
from pipeline.settings import DEFAULT_KAFKA_VERSION, PROJECT_ROOT
from tests.integration.workers import WorkerFactory, drop_test_database, free_port


@pytest.fixture(scope="session")
def kafka_version() -> str:
    return os.environ.get("PIPELINE_KAFKA_VERSION", DEFAULT_KAFKA_VERSION)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory, kafka_version: str) -> Iterator[str]:
    external = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    port = free_port()
    controller = free_port()
    while controller == port or not port_is_free("127.0.0.1", controller):
        controller = free_port()
    broker = LocalKafka(
        version=kafka_version,
        port=port,
        controller_port=controller,
        data_dir=tmp_path_factory.mktemp("kafka"),
        cache_dir=Path(os.environ.get("PIPELINE_CACHE_DIR", PROJECT_ROOT / ".cache")),
        heap="768m",
    )
    bootstrap = broker.start(timeout=120)
    try:
        yield bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres() -> LocalPostgres | None:
    if os.environ.get("TEST_DATABASE_URL"):
        return None
    port = int(os.environ.get("TEST_POSTGRES_PORT", "55432"))
    cache = Path(os.environ.get("PIPELINE_CACHE_DIR", PROJECT_ROOT / ".cache"))
    pg = LocalPostgres(port=port, data_dir=default_data_dir(port, cache))
    pg.start()
    return pg


@pytest.fixture
def postgres_url(postgres: LocalPostgres | None) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped after it: left behind, the
    databases of every run pile up in the private cluster (a thousand made its crash recovery,
    which the fault tests cause, take longer than a worker's retries)."""
    if postgres is None:
        yield os.environ["TEST_DATABASE_URL"]
        return
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield postgres.create_database(name)
    drop_test_database(postgres, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'pipeline.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Run the test once on each database."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def test_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def workers(
    kafka_bootstrap: str, tmp_path: Path, test_id: str, sqlite_url: str
) -> Iterator[WorkerFactory]:
    """Start real worker processes sharing this test's topics, app id and database."""
    factory = WorkerFactory(
        bootstrap=kafka_bootstrap,
        root=tmp_path,
        app_id=f"it-{test_id}",
        topic_prefix=f"t{test_id}.",
        database_url=sqlite_url,
    )
    try:
        yield factory
    finally:
        factory.stop_all()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault scenarios' figures: what was sent, applied, absorbed and how long it took."""
    from tests.integration.faults import SUMMARY

    if SUMMARY:
        terminalreporter.section("fault scenarios")
        for line in SUMMARY:
            terminalreporter.write_line(line)
