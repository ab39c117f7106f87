"""A topic read whole with a plain consumer, for reconcile: which event ids it holds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.domain.reconcile import TopicIds


async def scan_event_ids(bootstrap: str, topic: str, **client: Any) -> TopicIds:
    """Every ``event_id`` header in ``topic`` from its start to its current end, how many
    records carried one (the difference is the duplicates the consumers absorbed), and how many
    carried none that reads as an id: missing, empty or not UTF-8 (anybody can write to the
    topic; such a record is counted, not a reason to stop reading)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    found = TopicIds()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for p in described.get("partitions") or ()]
    if not tps:
        return found
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                group_id=None, **client)  # fmt: skip
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, batch_records in batch.items():
                for record in batch_records:
                    event_id = _event_id(record.headers)
                    if event_id is None:
                        found.undecodable += 1
                    else:
                        found.ids.add(event_id)
                        found.records += 1
                if batch_records and batch_records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return found


def _event_id(headers: Iterable[tuple[str, bytes | None]] | None) -> str | None:
    """The record's ``event_id`` header as text, or None when it has none that reads as one."""
    for key, value in headers or ():
        if key != "event_id":
            continue
        if value is None:
            return None
        try:
            return bytes(value).decode() or None
        except UnicodeDecodeError:
            return None
    return None
