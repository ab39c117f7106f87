"""The fault suite's judge against real workers: it passes a healthy pipeline (and agrees with
reconcile), and fails one whose analytics agent lost its dedupe, and one whose outbox dropped
an event — where it must, naming what is wrong."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from pipeline.adapters.db.schema import make_engine, outbox
from tests.integration.faults import Scenario, reconciled
from tests.integration.history import check, read_topics
from tests.integration.workers import WorkerFactory, migrated_workers, produce, wait_for


@pytest.fixture
def factory(kafka_bootstrap: str, tmp_path: Path, test_id: str, sqlite_url: str
            ) -> Iterator[WorkerFactory]:  # fmt: skip
    with migrated_workers(kafka_bootstrap, tmp_path, test_id, sqlite_url) as workers:
        yield workers


def place_orders(scenario: Scenario, seconds: float = 6) -> None:
    live = scenario.start_pair()
    scenario.run_load(lambda: live, rate=10)
    wait_for(lambda: len(scenario.history.acked_orders()) >= seconds * 8, 60, "orders")
    assert scenario.load is not None
    scenario.load.stop()


def settled(scenario: Scenario) -> bool:
    """Drained: every order decided and every outbox row out (the checker finds no order
    still created and no unpublished row)."""
    worker = scenario.workers.started[0]
    verdict = check(scenario.system, scenario.history, worker, scenario.mail_dirs())
    return not any("still created" in v or "unpublished" in v for v in verdict.violations)


def test_the_checker_passes_a_healthy_pipeline_and_agrees_with_reconcile(
    factory: WorkerFactory,
) -> None:
    scenario = Scenario("healthy", factory)
    place_orders(scenario)
    wait_for(lambda: settled(scenario), 90, "the pipeline to drain", interval=1)
    worker = factory.started[0]
    wait_for(lambda: check(scenario.system, scenario.history, worker, scenario.mail_dirs()).ok,
             60, "a clean verdict", interval=1)  # fmt: skip
    report = reconciled(worker)
    assert report is not None and report["ok"], report


def test_the_checker_fails_a_pipeline_whose_analytics_lost_its_dedupe(
    factory: WorkerFactory,
) -> None:
    broken = {"PIPELINE_EXTRA_MODULES": "tests.integration.broken_dedupe"}
    scenario = Scenario("broken dedupe", factory, env=broken)
    place_orders(scenario)
    wait_for(lambda: settled(scenario), 90, "the pipeline to drain", interval=1)
    # Every order event delivered again, as a forwarder that died before marking its rows would.
    topic = factory.topic("orders.events")
    records = read_topics(factory.bootstrap, {"orders.events": topic})["orders.events"]
    asyncio.run(produce(factory.bootstrap, topic, [(r.key, r.raw) for r in records]))
    worker = factory.started[0]

    def stats_wrong() -> list[str]:
        verdict = check(scenario.system, scenario.history, worker, scenario.mail_dirs())
        return [v for v in verdict.violations if "stats (answered, database)" in v]

    wrong = wait_for(stats_wrong, 60, "the checker to see the doubled counts", interval=1)
    assert "order_count" in wrong[0]
    report = reconciled(worker)
    assert report is not None and not report["ok"], "reconcile must disagree with the tables too"


def test_the_checker_fails_a_pipeline_that_dropped_an_event(
    factory: WorkerFactory,
) -> None:
    scenario = Scenario("dropped event", factory, env={"PIPELINE_FORWARDER_ENABLED": "false"})
    place_orders(scenario)
    # One outbox row marked published without ever being sent: its event is lost.
    dropped = _drop_one(factory.database_url)
    for worker in factory.started:
        assert worker.stop() == 0
    factory.started.clear()
    scenario.env = {}
    scenario.start("w3")  # its forwarder sends every other row
    worker = factory.started[0]
    verdict = wait_for(lambda: (v := check(scenario.system, scenario.history, worker,
                                           scenario.mail_dirs())) and not any(
        "still created" in x and dropped not in x for x in v.violations) and v,
        90, "everything but the dropped order to drain", interval=1)  # fmt: skip
    assert any(dropped in v and "0 distinct OrderCreated" in v for v in verdict.violations)
    assert any(dropped in v and "still created" in v for v in verdict.violations)
    report = reconciled(worker)
    assert report is not None and not report["ok"], "reconcile must see the lost event too"


def _drop_one(url: str) -> str:
    async def drop() -> str:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                row = (
                    await conn.execute(
                        outbox.select().where(outbox.c.event_type == "OrderCreated").limit(1)
                    )
                ).one()
                await conn.execute(update(outbox).where(outbox.c.id == row.id)
                                   .values(status="published"))  # fmt: skip
                return str(row.aggregate_id)
        finally:
            await engine.dispose()

    return asyncio.run(drop())
