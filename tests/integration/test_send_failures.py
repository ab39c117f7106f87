"""A record the broker refuses for good is never committed over, judged from Kafka itself.

A real worker handles an order event; the topic its derived event (``analytics.events``) or its
changelog record (``customer_stats``) goes to is then set to refuse records of that size
(``max.message.bytes``), a non-retriable error. The worker must stop with the event's offset
uncommitted in its consumer group; once the topic takes records again, a restarted worker
handles the event again and its effect arrives.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import TopicPartition

from pipeline.domain.events import derived_event_id, encode
from tests.conftest import order_created
from tests.integration.workers import Worker, WorkerFactory, consume, create_topics, wait_for

ORDERS = "orders.events"
ANALYTICS = "analytics.events"
DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs' config_source of a topic's own setting


async def _send(bootstrap: str, topic: str, key: bytes, value: bytes) -> Any:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        return await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    """The settings ``topic`` has of its own (not the broker's defaults)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        [(_code, _msg, _type, _name, entries)] = response.resources
        return {e[0]: e[1] for e in entries if e[3] == DYNAMIC_TOPIC_CONFIG}
    finally:
        await admin.close()


async def _set_topic_config(bootstrap: str, topic: str, config: dict[str, str]) -> None:
    """Replace ``topic``'s own settings with ``config`` (AlterConfigs sets them all)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, config)])
    finally:
        await admin.close()
    deadline = time.monotonic() + 15
    while await _topic_config(bootstrap, topic) != config:
        assert time.monotonic() < deadline, f"{topic} did not take {config}"
        await asyncio.sleep(0.2)


def _committed(workers: WorkerFactory, tp: TopicPartition) -> int | None:
    """Where the worker's consumer group resumes ``tp``, read from the broker."""

    async def read() -> int | None:
        admin = AIOKafkaAdminClient(bootstrap_servers=workers.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(workers.app_id, partitions=[tp])
        finally:
            await admin.close()
        found = offsets.get(tp)
        return None if found is None or found.offset < 0 else int(found.offset)

    return asyncio.run(read())


def _stats(worker: Worker, customer_id: str) -> dict[str, Any] | None:
    status, body = worker.get(f"/customers/{customer_id}/stats")
    return body if status == 200 else None


def _changelog_order_counts(workers: WorkerFactory, topic: str, key: bytes) -> list[int]:
    records = asyncio.run(consume(workers.bootstrap, topic, count=1000, timeout=5))
    return [json.loads(r.value)["order_count"] for r in records if r.key == key and r.value]


@pytest.mark.parametrize("refusing", ["derived event", "changelog record"])
def test_a_record_the_broker_refuses_keeps_its_event_uncommitted_until_it_is_delivered(
    workers: WorkerFactory, kafka_bootstrap: str, refusing: str
) -> None:
    orders, analytics = workers.topic(ORDERS), workers.topic(ANALYTICS)
    changelog = f"{workers.app_id}-customer_stats-changelog"
    asyncio.run(create_topics(kafka_bootstrap, [orders, analytics]))
    worker = workers.start()

    first = order_created("alice", total="12.50")
    sent = asyncio.run(_send(kafka_bootstrap, orders, b"alice", encode(first)))
    tp = TopicPartition(orders, sent.partition)
    wait_for(lambda: _committed(workers, tp) == sent.offset + 1, 60, "the first event committed")

    target = analytics if refusing == "derived event" else changelog
    own_config = asyncio.run(_topic_config(kafka_bootstrap, target))
    refusing_config = {**own_config, "max.message.bytes": "64"}
    asyncio.run(_set_topic_config(kafka_bootstrap, target, refusing_config))
    second = order_created("alice", total="7.25")
    refused = asyncio.run(_send(kafka_bootstrap, orders, b"alice", encode(second)))
    assert refused.partition == tp.partition

    # The worker never commits over the event whose record was refused, and stops loudly.
    wait_for(
        lambda: worker.proc.poll() is not None or _committed(workers, tp) != refused.offset,
        90,
        "the worker to stop or to commit over the event",
    )
    assert _committed(workers, tp) == refused.offset
    wait_for(lambda: worker.proc.poll() is not None, 60, "the worker to stop")
    assert worker.proc.returncode != 0, worker.log()[-3000:]

    # Once the topic takes the record, a restarted worker handles the event again.
    asyncio.run(_set_topic_config(kafka_bootstrap, target, own_config))
    restarted = workers.start("w1")
    wait_for(lambda: _committed(workers, tp) == refused.offset + 1, 60, "the event committed")
    stats = _stats(restarted, "alice")
    assert stats is not None and stats["order_count"] == 2 and stats["total_spent"] == "19.75"
    if refusing == "derived event":
        derived = asyncio.run(consume(kafka_bootstrap, analytics, count=100, timeout=5))
        ids = {dict(r.headers)["event_id"].decode() for r in derived}
        assert derived_event_id(second.event_id, "CustomerStatsUpdated") in ids
    else:
        assert _changelog_order_counts(workers, changelog, b"alice")[-1] == 2
