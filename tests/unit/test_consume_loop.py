"""The agents' loop (pipeline.streaming.consume) holds no reference to an event once it is handled;
its send path keeps what it is given."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import (
    BrokerNotAvailableError,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    NotLeaderForPartitionError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownError,
    UnsupportedVersionError,
)
from aiokafka.partitioner import DefaultPartitioner

from pipeline.adapters.kafka.egress import Egress, event_headers
from pipeline.domain.events import encode
from pipeline.streaming import consume
from tests.conftest import order_created


class Message(SimpleNamespace):
    """A Kafka record as Faust hands it over (weakly referenceable, as Faust's messages are)."""


class Stream:
    """Faust's stream as the loop uses it: iterated, with the event being handled in
    ``current_event`` (Faust clears it once the agent asks for the next one)."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = values
        self.current_event: Any = None
        self.released: list[bool] = []
        self._last: weakref.ref[Any] | None = None

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        self.current_event = None
        if self._last is not None:
            gc.collect()
            self.released.append(self._last() is None)
        if not self.values:
            raise StopAsyncIteration
        value = self.values.pop(0)
        message = Message(topic="orders.events", partition=0, offset=len(self.released),
                          value=value, key=b"c", headers=[], timestamp=None)  # fmt: skip
        self.current_event = SimpleNamespace(message=message)
        self._last = weakref.ref(message)
        return value


async def test_a_handled_event_is_not_kept_alive_while_the_next_is_awaited() -> None:
    """Faust's rebalance waits for every message it handed out until it is acknowledged or
    garbage; one that two agents read and one dropped must not be kept alive by the other."""
    handled: list[str] = []

    async def handle(event: Any) -> None:
        handled.append(event.event_id)

    first, second = order_created("c", total="1.00"), order_created("c", total="2.00")
    stream = Stream([encode(first), encode(second)])
    policy = consume.FailurePolicy("test", retryable=(), non_retryable=())
    await consume.consume(stream, "test", handle, type(first), policy=policy)  # type: ignore[arg-type]
    assert handled == [first.event_id, second.event_id]
    assert stream.released == [True, True]


class Producer:
    """aiokafka's producer as ``send_reliably`` uses it; the first ``fail`` sends raise
    ``error`` (a timeout, by default), and the broker refuses timestamps before ``oldest_ms``
    as it does with ``message.timestamp.before.max.ms``."""

    def __init__(self, fail: int = 0, oldest_ms: int = 0, error: KafkaError | None = None) -> None:
        self.fail = fail
        self.oldest_ms = oldest_ms
        self.error = error or KafkaTimeoutError("no metadata yet")
        self.tried = 0
        self.sent: list[dict[str, Any]] = []

    async def send(self, topic: str, value: bytes | None, **kwargs: Any) -> asyncio.Future[None]:
        self.tried += 1
        if self.fail:
            self.fail -= 1
            raise self.error
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if (kwargs["timestamp_ms"] or self.oldest_ms) < self.oldest_ms:
            done.set_exception(InvalidTimestampError())
        else:
            self.sent.append({"topic": topic, "value": value, **kwargs})
            done.set_result(None)
        return done


async def test_send_reliably_sends_the_exact_timestamp_it_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer = Producer(fail=1)
    monkeypatch.setattr(consume.egress, "_get", lambda: producer)
    ms = (int(time.time()) - 3600) * 1000 + 123
    await consume.send_reliably("t.retry.1", b"k", b"v", [("x-a", b"1")], partition=2,
                                timestamp_ms=ms)  # fmt: skip
    await consume.send_reliably("t.dead-letters", None, None, [])
    first, tombstone = producer.sent
    assert first == {"topic": "t.retry.1", "value": b"v", "key": b"k", "partition": 2,
                     "timestamp_ms": ms, "headers": [("x-a", b"1")]}  # fmt: skip
    assert tombstone["value"] == b"" and tombstone["timestamp_ms"] is None


async def test_a_time_the_broker_refuses_as_too_old_is_replaced_by_the_current_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Else a replay of an old dead letter to a topic with message.timestamp.before.max.ms
    would be retried for ever, and the agent or holder sending it would stall."""
    now_ms = int(time.time() * 1000)
    producer = Producer(oldest_ms=now_ms - 60_000)
    monkeypatch.setattr(consume.egress, "_get", lambda: producer)
    await consume.send_reliably("t.redeliver.revenue", b"k", b"v", [],
                                timestamp_ms=now_ms - 3_600_000)  # fmt: skip
    [sent] = producer.sent
    assert sent["timestamp_ms"] is None


async def test_a_time_retention_would_delete_at_once_is_replaced_by_the_current_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kafka deletes a segment whose newest record is past retention.ms: an original time that
    old would lose the replay before its agent read it."""
    producer = Producer()
    monkeypatch.setattr(consume.egress, "_get", lambda: producer)
    now_ms = int(time.time() * 1000)
    hour = 3_600_000
    retention = consume.settings.topic_retention_hours * hour
    for sent_at in (now_ms - hour, now_ms - retention // 2, now_ms - retention + hour):
        await consume.send_reliably("t.redeliver.revenue", b"k", b"v", [], timestamp_ms=sent_at)
    assert [s["timestamp_ms"] for s in producer.sent] == [
        now_ms - hour, now_ms - retention // 2, None]  # fmt: skip


async def test_an_operator_replay_gives_up_after_its_attempts_a_worker_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI's replay (``attempts=5``) reports a broker that keeps refusing; the worker's
    retries and dead letters keep trying (the record they set aside is acknowledged)."""
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    producer = Producer(fail=5)
    with pytest.raises(KafkaTimeoutError):
        await Egress(producer).deliver_reliably("t.x", b"v", key=b"k", attempts=5)
    producer = Producer(fail=20)
    await Egress(producer).deliver_reliably("t.x", b"v", key=b"k")
    assert len(producer.sent) == 1


@pytest.mark.parametrize(
    "refusal",
    [
        MessageSizeTooLargeError(),  # over the topic's max.message.bytes, or max_request_size
        RecordTooLargeError(),
        InvalidTopicError(),
        TopicAuthorizationFailedError("t.x"),
        UnsupportedVersionError(),
        UnknownError(),  # an error code aiokafka does not know
    ],
    ids=lambda exc: type(exc).__name__,
)
async def test_a_record_refused_for_good_raises_at_once(
    monkeypatch: pytest.MonkeyPatch, refusal: KafkaError
) -> None:
    """Retrying it would block the agent or holder setting a record aside, for ever and
    without a word."""
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    producer = Producer(fail=1_000, error=refusal)
    with pytest.raises(type(refusal)):
        await asyncio.wait_for(Egress(producer).deliver_reliably("t.x", b"v", key=b"k"), 5)
    assert producer.tried == 1


@pytest.mark.parametrize(
    "passing",
    [
        KafkaTimeoutError(),  # the broker is down: aiokafka's batch expired
        NotEnoughReplicasError(),
        LeaderNotAvailableError(),
        NotLeaderForPartitionError(),
        RequestTimedOutError(),
        KafkaConnectionError(),
        BrokerNotAvailableError(),
    ],
    ids=lambda exc: type(exc).__name__,
)
async def test_a_transient_failure_is_retried_until_the_record_is_delivered(
    monkeypatch: pytest.MonkeyPatch, passing: KafkaError
) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    producer = Producer(fail=7, error=passing)
    await Egress(producer).deliver_reliably("t.x", b"v", key=b"k")
    assert producer.tried == 8 and len(producer.sent) == 1


async def _no_sleep(_seconds: float) -> None:
    return None


def test_every_event_record_carries_the_same_headers() -> None:
    assert dict(event_headers("e-1", "OrderCreated", 1)) == {
        "event_id": b"e-1", "event_type": b"OrderCreated", "schema_version": b"1"}  # fmt: skip


class BatchingProducer:
    """aiokafka's producer as :meth:`Egress.send_staged` uses it: four partitions per topic,
    keys partitioned as ``send`` does, batches of at most ``capacity`` records."""

    _max_request_size = 1_000

    def __init__(self, capacity: int = 100) -> None:
        self.capacity = capacity
        self.batches: list[tuple[str, int, list[tuple[bytes, bytes | None]]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def _partition(self, topic: str, partition: Any, key: bytes, *_: Any) -> int:
        return int(DefaultPartitioner()(key, [0, 1, 2, 3], [0, 1, 2, 3]))

    def create_batch(self) -> Any:
        records: list[tuple[bytes, bytes | None]] = []

        def append(*, timestamp: Any, key: bytes, value: bytes | None, headers: Any) -> Any:
            if len(records) >= self.capacity:
                return None
            records.append((key, value))
            return object()

        return SimpleNamespace(append=append, records=records)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.batches.append((topic, partition, batch.records))
        return asyncio.get_running_loop().create_future()


async def test_staged_records_go_out_as_one_batch_per_partition_in_order() -> None:
    producer, staged = BatchingProducer(), []
    egress = Egress(producer)
    keys = [b"customer-1", b"customer-2", b"customer-1", b"customer-3", b"customer-1"]
    for n, key in enumerate(keys):
        egress.stage(staged, "t.x", str(n).encode(), key=key)
    deliveries = await egress.send_staged(staged)
    assert staged == [] and len(deliveries) == len(producer.batches)
    partition = DefaultPartitioner()
    for topic, number, records in producer.batches:
        assert topic == "t.x"
        assert all(partition(key, [0, 1, 2, 3], []) == number for key, _ in records)
    sent = {number: records for _, number, records in producer.batches}
    first = partition(b"customer-1", [0, 1, 2, 3], [])
    assert [value for key, value in sent[first] if key == b"customer-1"] == [b"0", b"2", b"4"]
    assert sum(len(records) for records in sent.values()) == 5


async def test_a_full_produce_batch_continues_in_the_next() -> None:
    producer, staged = BatchingProducer(capacity=2), []
    egress = Egress(producer)
    for n in range(5):
        egress.stage(staged, "t.x", str(n).encode(), key=b"k")
    assert len(await egress.send_staged(staged)) == 3
    assert [value for _, _, records in producer.batches for _, value in records] == [
        b"0", b"1", b"2", b"3", b"4"
    ]  # fmt: skip


async def test_a_record_over_the_request_size_is_refused_when_staged() -> None:
    """As ``send`` refuses it at once: the agent's failure policy sees it, with its event."""
    staged: list[Any] = []
    with pytest.raises(MessageSizeTooLargeError):
        Egress(BatchingProducer()).stage(staged, "t.x", b"x" * 2_000, key=b"k")
    assert staged == []
