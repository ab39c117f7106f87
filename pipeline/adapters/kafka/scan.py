"""A topic read whole with a plain consumer, for reconcile: which event ids it holds."""

from __future__ import annotations

from typing import Any


async def scan_event_ids(bootstrap: str, topic: str, **client: Any) -> tuple[set[str], int]:
    """Every ``event_id`` header in ``topic`` from its start to its current end, and how many
    records carried one (the difference is the duplicates the consumers absorbed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    ids: set[str] = set()
    records = 0
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for p in described.get("partitions") or ()]
    if not tps:
        return ids, 0
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
                    event_id = dict(record.headers or ()).get("event_id")
                    if event_id is not None:
                        ids.add(event_id.decode())
                        records += 1
                if batch_records and batch_records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return ids, records
