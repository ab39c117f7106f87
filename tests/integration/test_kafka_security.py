"""Kafka with SASL: a local broker whose client listener authenticates (SASL/PLAIN), and the
pipeline configured only through ``KAFKA_SECURITY_PROTOCOL`` and ``KAFKA_SASL_*``. A worker —
Faust's consumer and producer, the outbox forwarder, the admin client that declares topics —
carries an order through; the CLI talks to the broker too; a wrong password is refused with a
message that says what to check; the password never reaches a log."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.adapters.db.schema import migrate
from pipeline.local.kafka import LocalKafka, broker_answers
from pipeline.settings import PROJECT_ROOT
from tests.integration.workers import WorkerFactory, free_port, wait_for

PASSWORD = "pipeline-s3cret-4c1d"


@pytest.fixture(scope="module")
def sasl_broker(
    kafka_version: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalKafka]:
    broker = LocalKafka(
        version=kafka_version,
        port=free_port(),
        controller_port=free_port(),
        data_dir=tmp_path_factory.mktemp("kafka-sasl"),
        cache_dir=Path(os.environ.get("PIPELINE_CACHE_DIR", PROJECT_ROOT / ".cache")),
        heap="512m",
        sasl_users=(("admin", "admin-s3cret"), ("pipeline", PASSWORD)),
    )
    broker.start(timeout=120)
    try:
        yield broker
    finally:
        broker.stop()


def _security(password: str = PASSWORD) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "pipeline",
        "KAFKA_SASL_PASSWORD": password,
    }


def _topics_create(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "topics", "create"],
        env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_pipeline_runs_on_a_sasl_broker_from_the_security_settings(
    sasl_broker: LocalKafka, tmp_path: Path, test_id: str, sqlite_url: str
) -> None:
    bootstrap = sasl_broker.bootstrap_servers
    assert not broker_answers(bootstrap, timeout=3)  # no plaintext client gets in
    migrate(sqlite_url)
    factory = WorkerFactory(
        bootstrap=bootstrap, root=tmp_path, app_id=f"it-{test_id}",
        topic_prefix=f"t{test_id}.", database_url=sqlite_url,
    )  # fmt: skip
    try:
        created = _topics_create(factory.env(**_security()))
        assert created.returncode == 0, created.stdout + created.stderr

        worker = factory.start("w1", **_security())
        assert worker.put("/inventory/sku-sasl", {"available": 5})[0] == 202
        status, placed = worker.post("/orders", {
            "customer_id": "cust-sasl", "customer_email": "s@example.com",
            "items": [{"sku": "sku-sasl", "quantity": 1, "unit_price": "2.50"}],
        })  # fmt: skip
        assert status == 201, placed
        wait_for(lambda: worker.get(f"/orders/{placed['order_id']}")[1].get("status")
                 == "confirmed", 90, "the order to be confirmed over SASL")  # fmt: skip
        assert worker.get("/customers/cust-sasl/stats")[1]["order_count"] == 1

        refused = _topics_create(factory.env(**_security("wrong-password")))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "KAFKA_SASL_USERNAME" in refused.stderr, refused.stderr
        assert "wrong-password" not in refused.stdout + refused.stderr
    finally:
        factory.stop_all()
    for started in factory.started:
        assert PASSWORD not in started.log()
