"""Hostile records on ``orders.events`` against a real worker: bytes that make the JSON decoder
raise something other than ``JSONDecodeError`` (an integer of 5,000 digits, nesting 100,000
deep), a time that overflows when converted to UTC, bytes that are not UTF-8, a header key that
is not UTF-8.

Each must land on the dead-letter topic as poison with its context, once per agent reading the
topic, while the worker keeps running and the partition keeps flowing: an order event produced
after them, on the same partition, is applied. The dead-letter topic is read with a plain
consumer, not through the pipeline's own API.
"""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBase
from aiokafka.record.util import calc_crc32c

from pipeline.adapters.db.schema import migrate
from pipeline.domain.events import encode
from tests.conftest import order_created
from tests.integration.workers import Worker, WorkerFactory, consume, wait_for

# The agents that read orders.events through pipeline.streaming.consume: each sets a pill aside.
READERS = ("analytics", "inventory-requests")


def _created_with(customer: str, **fields: object) -> bytes:
    return json.dumps({**json.loads(encode(order_created(customer))), **fields}).encode()


def _hostile(customer: str) -> dict[str, tuple[bytes, str]]:
    """Each pill and a piece of what its dead letter's exception message must say."""
    head = b'{"event_type": "OrderCreated", "schema_version": 1, "n": '
    return {
        "5,000-digit integer": (head + b"9" * 5000 + b"}", "4300 digits"),
        "100,000-deep nesting": (head + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
        "year 1 at +14:00": (
            _created_with(customer, created_at="0001-01-01T00:00:00+14:00"),
            "created_at",
        ),
        "not UTF-8": (b'{"event_type": "OrderCreated", "note": "\xff\xfe\xc3\x28"}', "utf-8"),
    }


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerFactory, Worker]]:
    root = tmp_path_factory.mktemp("hostile")
    url = f"sqlite+aiosqlite:///{root / 'orders.db'}"
    migrate(url)
    test_id = uuid.uuid4().hex[:10]
    factory = WorkerFactory(kafka_bootstrap, root, f"it-{test_id}", f"t{test_id}.", url)
    try:
        yield factory, factory.start()
    finally:
        factory.stop_all()


async def _produce(bootstrap: str, topic: str, key: bytes, values: list[bytes]) -> list[Any]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        return [await producer.send_and_wait(topic, v, key=key) for v in values]
    finally:
        await producer.stop()


def test_hostile_records_are_dead_lettered_with_context_and_the_partition_flows(
    worker: tuple[WorkerFactory, Worker],
) -> None:
    factory, w1 = worker
    pid = w1.proc.pid
    customer = f"cust-{uuid.uuid4().hex[:6]}"
    pills = _hostile(customer)
    after = order_created(customer)
    topic = factory.topic("orders.events")
    values = [value for value, _ in pills.values()] + [encode(after)]
    *sent, _ = asyncio.run(_produce(factory.bootstrap, topic, customer.encode(), values))

    def stats() -> Any:
        status, body = w1.get(f"/customers/{customer}/stats")
        return body if status == 200 else None

    # The valid order behind the pills, on the same partition, is applied.
    assert wait_for(stats, 60, "the order behind the hostile records")["order_count"] == 1

    def letters() -> list[Any]:
        records = asyncio.run(consume(factory.bootstrap, factory.topic("dead-letters"),
                                      count=len(pills) * len(READERS), timeout=5))  # fmt: skip
        return records if len(records) >= len(pills) * len(READERS) else []

    records = wait_for(letters, 60, "every pill on the dead-letter topic, once per agent")
    for (name, (value, cause)), meta in zip(pills.items(), sent, strict=True):
        mine = [r for r in records if r.value == value]
        assert sorted(dict(r.headers)["x-agent"].decode() for r in mine) == sorted(READERS), name
        for record in mine:
            headers = dict(record.headers)
            assert record.key == customer.encode(), name
            expected = {
                "x-dead-letter-reason": b"poison",
                "x-original-topic": topic.encode(),
                "x-original-partition": str(meta.partition).encode(),
                "x-original-offset": str(meta.offset).encode(),
                "x-exception-type": b"pipeline.domain.events.InvalidEvent",
            }
            assert {k: headers.get(k) for k in expected} == expected, name
            assert cause in headers["x-exception-message"].decode(), name
            assert headers["x-stacktrace"] and headers["x-failed-at"], name
            # Set aside with the pill's own timestamp, as produced.
            assert record.timestamp == meta.timestamp, name

    # The worker neither crashed nor restarted, and indexed every pill.
    assert w1.proc.poll() is None and w1.proc.pid == pid

    def index() -> list[dict[str, Any]] | None:
        # The index agent reads the dead-letter topic on its own: it may trail the topic.
        status, body = w1.get("/dead-letters?reason=poison&limit=1000")
        assert status == 200, body
        found = [d for d in body["dead_letters"] if d["key"] == customer]
        return found if len(found) >= len(pills) * len(READERS) else None

    indexed = wait_for(index, 30, "every pill in the dead-letter index")
    assert len(indexed) == len(pills) * len(READERS)
    assert {d["error_type"] for d in indexed} == {"pipeline.domain.events.InvalidEvent"}


async def _produce_with_header_key(
    bootstrap: str, topic: str, key: bytes, value: bytes, header_key: bytes
) -> Any:
    """Send one record whose header key is the raw bytes ``header_key``, with a plain producer.
    aiokafka's batch builder refuses to write a key that is not UTF-8 (a broker stores it): a
    placeholder as long is written, then replaced in the built batch and its CRC sealed again."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        partition = DefaultPartitioner()(key, partitions, partitions)  # as send() places `key`
        batch = producer.create_batch()
        placeholder = "\x01" * len(header_key)
        batch.append(key=key, value=value, timestamp=None, headers=[(placeholder, b"x")])
        raw = batch._build()  # the bytes the producer sends, built once
        at = raw.index(placeholder.encode())
        raw[at : at + len(header_key)] = header_key
        crc = calc_crc32c(bytes(raw[DefaultRecordBase.ATTRIBUTES_OFFSET :]))
        struct.pack_into(">I", raw, DefaultRecordBase.CRC_OFFSET, crc)
        return await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


def test_a_header_key_that_is_not_utf8_is_dead_lettered_and_the_partition_flows(
    worker: tuple[WorkerFactory, Worker],
) -> None:
    """aiokafka's fetcher decodes header keys strictly: unguarded, such a record stopped the
    worker, and every worker that took its partition after it."""
    factory, w1 = worker
    pid = w1.proc.pid
    customer = f"cust-{uuid.uuid4().hex[:6]}"
    topic = factory.topic("orders.events")
    hostile = encode(order_created(customer))  # a valid event, under a key no client writes
    sent = asyncio.run(_produce_with_header_key(factory.bootstrap, topic, customer.encode(),
                                                hostile, b"\xff\xfe"))  # fmt: skip
    asyncio.run(_produce(factory.bootstrap, topic, customer.encode(),
                         [encode(order_created(customer))]))  # fmt: skip

    def stats() -> Any:
        status, body = w1.get(f"/customers/{customer}/stats")
        return body if status == 200 else None

    # The order behind it, on the same partition, is applied; the hostile one is not.
    assert wait_for(stats, 60, "the order behind the hostile record")["order_count"] == 1

    def letters() -> list[Any]:
        records = asyncio.run(consume(factory.bootstrap, factory.topic("dead-letters"),
                                      count=1000, timeout=3))  # fmt: skip
        mine = [r for r in records if r.key == customer.encode()]
        return mine if len(mine) >= len(READERS) else []

    mine = wait_for(letters, 60, "the record on the dead-letter topic, once per agent")
    assert sorted(dict(r.headers)["x-agent"].decode() for r in mine) == sorted(READERS)
    for record in mine:
        headers = dict(record.headers)
        expected = {
            "x-dead-letter-reason": b"poison",
            "x-original-topic": topic.encode(),
            "x-original-partition": str(sent.partition).encode(),
            "x-original-offset": str(sent.offset).encode(),
            "x-exception-type": b"pipeline.domain.events.InvalidEvent",
            "\\xff\\xfe": b"x",  # the key, escaped: Kafka would not take its bytes back
        }
        assert {k: headers.get(k) for k in expected} == expected
        assert record.value == hostile
        assert b"not UTF-8" in headers["x-exception-message"]
    assert stats()["order_count"] == 1
    # The worker neither crashed nor restarted.
    assert w1.proc.poll() is None and w1.proc.pid == pid
