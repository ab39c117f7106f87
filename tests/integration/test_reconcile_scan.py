"""Reconcile's scan of ``orders.events`` on a real broker, with records the forwarder never
writes beside its own: anybody can produce to the topic, and reconcile must still answer."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from pipeline.adapters.db.reconcile import ReconcileStore
from pipeline.adapters.db.schema import make_engine, migrate
from pipeline.adapters.kafka.scan import scan_event_ids
from pipeline.domain.events import utc_now
from pipeline.services.reconcile import reconcile
from tests.integration.workers import create_topics, produce


def test_records_without_a_readable_event_id_are_counted_not_fatal(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}.orders.events"
    good = str(uuid.uuid4())
    asyncio.run(create_topics(kafka_bootstrap, [topic], partitions=2))
    asyncio.run(produce(kafka_bootstrap, topic, [
        (b"c1", b"{}", [("event_id", good.encode())]),
        (b"c1", b"{}", [("event_id", good.encode())]),  # a duplicate the forwarder re-sent
        (b"c1", b"{}", [("event_id", b"\xff\xfe\xc3\x28")]),  # not UTF-8
        (b"c2", b"{}", [("event_id", b"")]),
        (b"c2", b"{}", [("event_id", None)]),
        (b"c2", b"{}"),  # no headers at all
    ]))  # fmt: skip

    scanned = asyncio.run(scan_event_ids(kafka_bootstrap, topic))
    assert (scanned.ids, scanned.records, scanned.undecodable) == ({good}, 2, 4)

    url = f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
    migrate(url)

    async def reconciled() -> dict[str, int]:
        engine = make_engine(url)
        try:
            report = await reconcile(
                ReconcileStore(engine), utc_now(), read_stats=_nothing, read_stock=_nothing,
                scan=lambda: scan_event_ids(kafka_bootstrap, topic),
            )  # fmt: skip
        finally:
            await engine.dispose()
        assert report.ok, report.differences
        return report.checked

    checked = asyncio.run(reconciled())
    assert checked["kafka_events"] == 1
    assert checked["kafka_duplicates"] == 1
    assert checked["kafka_undecodable"] == 4


async def _nothing(_key: str) -> None:
    return None
