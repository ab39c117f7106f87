"""Two real workers, one forwarder each: killing the active one (SIGKILL) loses nothing and
keeps every customer's events in commit order."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import defaultdict
from pathlib import Path

from pipeline.adapters.db.schema import migrate
from pipeline.domain.events import decode_order_event
from tests.integration.workers import (
    WorkerFactory,
    consume,
    create_topics,
    metric,
    wait_for,
)


def test_killing_the_active_forwarder_keeps_order_and_loses_nothing(
    database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    migrate(database_url)
    test_id = uuid.uuid4().hex[:10]
    factory = WorkerFactory(
        bootstrap=kafka_bootstrap, root=tmp_path, app_id=f"fw-{test_id}",
        topic_prefix=f"t{test_id}.", database_url=database_url,
    )  # fmt: skip
    asyncio.run(create_topics(kafka_bootstrap, [factory.topic("orders.events")]))
    try:
        env = {"PIPELINE_OUTBOX_POLL_INTERVAL": "0.05"}
        workers = [factory.start("w1", **env), factory.start("w2", **env)]

        def active() -> list[int]:
            return [
                i for i, w in enumerate(workers)
                if w.proc.poll() is None
                and metric(w.metrics(), "pipeline_outbox_forwarder_active") == 1
            ]  # fmt: skip

        committed: dict[str, list[str]] = defaultdict(list)

        def place(n: int, worker_index: int) -> None:
            customer = f"k{n % 4}"
            status, body = workers[worker_index].post(
                "/orders",
                {"customer_id": customer, "customer_email": f"{customer}@example.com",
                 "items": [{"sku": "s", "quantity": 1, "unit_price": f"{n + 1}.00"}]},
            )  # fmt: skip
            assert status == 201, body
            committed[customer].append(body["order_id"])

        leader = wait_for(active, 30, "one active forwarder")[0]
        for n in range(60):
            place(n, n % 2)
        workers[leader].stop(signal.SIGKILL)
        survivor = 1 - leader
        for n in range(60, 120):
            place(n, survivor)
        wait_for(lambda: active() == [survivor], 60, "the survivor's forwarder to take over")

        records = asyncio.run(
            consume(kafka_bootstrap, factory.topic("orders.events"), count=120, timeout=60)
        )
        seen: dict[str, list[str]] = defaultdict(list)
        for record in records:
            event = decode_order_event(record.value)
            if event.order_id not in seen[event.customer_id]:  # duplicates are allowed
                seen[event.customer_id].append(event.order_id)
        # Read on: records may hold duplicates, so wait for every distinct event.
        if sum(len(v) for v in seen.values()) < 120:
            more = asyncio.run(
                consume(kafka_bootstrap, factory.topic("orders.events"), count=240, timeout=20)
            )
            seen = defaultdict(list)
            for record in more:
                event = decode_order_event(record.value)
                if event.order_id not in seen[event.customer_id]:
                    seen[event.customer_id].append(event.order_id)
        assert dict(seen) == dict(committed)
    finally:
        factory.stop_all()
