"""A send that fails is never committed over: the offset of an event whose derived event or
changelog record the broker refused stays uncommitted, and the worker stops loudly.

Driven through Faust's own commit path (``Consumer._commit_offsets``: flush, then commit) with
a stand-in for aiokafka's producer whose deliveries the test resolves, as the broker would.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import faust.streams
import faust.transport.consumer as faust_consumer
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata, TopicPartition
from faust.types import TP

from pipeline.app import app
from pipeline.streaming import consume, faust_patches, versions
from pipeline.streaming.faust_patches import failed_sends
from pipeline.streaming.topics import analytics_events_topic, dead_letters_topic, publish
from tables.customer_stats import customer_stats_table
from tests.conftest import order_created

SOURCE = TP("orders.events", 0)


class KafkaClient:
    """aiokafka's producer as the agents' sends see it: ``send`` returns the delivery, which
    the test resolves in send order (as the broker acknowledges a batch) or fails."""

    def __init__(self) -> None:
        self.sent: list[SimpleNamespace] = []
        self.next_offset: dict[tuple[str, int], int] = defaultdict(int)
        self.refuse: Exception | None = None  # raised by send itself, before anything is sent

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: Any = None) -> asyncio.Future[Any]:  # fmt: skip
        if self.refuse is not None:
            raise self.refuse
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append(SimpleNamespace(topic=topic, key=key, value=value,
                                         partition=partition or 0, delivery=delivery))  # fmt: skip
        return delivery

    def acknowledge(self) -> None:
        """The broker acknowledges every record sent so far, in order."""
        for record in self.sent:
            if not record.delivery.done():
                slot = (record.topic, record.partition)
                offset = self.next_offset[slot]
                self.next_offset[slot] = offset + 1
                tp = TopicPartition(record.topic, record.partition)
                record.delivery.set_result(
                    RecordMetadata(record.topic, record.partition, tp, offset, -1, 0, 0)
                )

    def fail(self, topic: str, error: Exception) -> None:
        for record in self.sent:
            if record.topic == topic and not record.delivery.done():
                record.delivery.set_exception(error)


@pytest.fixture
async def kafka(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KafkaClient]:
    """The app's Kafka client replaced by :class:`KafkaClient`, and the delivery bookkeeping
    fresh for the test. (Async: the app's producer is built inside the test's loop, not
    outside it, where mode would set a loop of its own for later tests to trip on.)"""
    monkeypatch.setattr(failed_sends, "_unsettled", {})
    monkeypatch.setattr(failed_sends, "_failures", [])
    client = KafkaClient()
    producer: Any = app.producer
    monkeypatch.setattr(producer, "_producer", client)
    yield client


class _Event:
    def __init__(self, tp: TP, offset: int) -> None:
        self.message = SimpleNamespace(tp=tp, topic=tp.topic, partition=tp.partition,
                                       offset=offset)  # fmt: skip


@contextlib.contextmanager
def handling(offset: int, tp: TP = SOURCE) -> Iterator[_Event]:
    """Inside an agent, handling the record at ``offset`` of ``tp``."""
    event = _Event(tp, offset)
    token = faust.streams._current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield event
    finally:
        faust.streams._current_event.reset(token)


class Consumer:
    """What Faust's ``Consumer._commit_offsets`` uses of the consumer: it flushes the producer,
    then commits with ``_commit`` (the app's own, with whatever fixes are installed)."""

    in_transaction = False

    def __init__(self) -> None:
        self.committed: list[dict[TP, int]] = []
        self.crashed: BaseException | None = None
        self._committed_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self._thread = SimpleNamespace(commit=self._broker_commit)
        self.log = SimpleNamespace(dev=_ignore, info=_ignore, warning=_ignore)
        self.app = SimpleNamespace(
            producer=SimpleNamespace(flush=_flush),
            tables=SimpleNamespace(on_commit=_ignore),
            monitor=SimpleNamespace(on_tp_commit=_ignore),
        )

    def assignment(self) -> set[TP]:
        return {SOURCE}

    async def _broker_commit(self, offsets: dict[TP, int]) -> bool:
        self.committed.append(dict(offsets))
        return True

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        commit = faust_consumer.ThreadDelegateConsumer._commit
        return await commit(self, offsets)  # type: ignore[arg-type]

    async def crash(self, reason: BaseException) -> None:
        self.crashed = reason

    async def commit_offsets(self, offsets: dict[TP, int]) -> bool:
        stock = faust_consumer.Consumer._commit_offsets
        return await stock(self, offsets)  # type: ignore[arg-type]

    async def commit_tps(self, offsets: dict[TP, int]) -> bool:
        """Faust's ``_commit_tps`` (with the fixes: the staged table values flushed first),
        committing ``offsets`` as the acknowledged ones."""
        self._acked_offsets = offsets
        commit = faust_consumer.Consumer._commit_tps
        return await commit(self, list(offsets), True)  # type: ignore[arg-type]

    def _filter_committable_offsets(self, tps: list[TP]) -> dict[TP, int]:
        return {tp: self._acked_offsets[tp] for tp in tps}

    async def _handle_attached(self, offsets: dict[TP, int]) -> None:
        return None

    async def _commit_offsets(self, offsets: dict[TP, int], start_new_transaction: bool) -> bool:
        return await self.commit_offsets(offsets)


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


async def _flush() -> None:
    return None  # the test resolved every delivery before the commit, as the flush waits for


async def test_a_derived_event_the_broker_refuses_is_never_committed_over(
    kafka: KafkaClient,
) -> None:
    with handling(offset=10):
        await publish(analytics_events_topic, "alice", order_created("alice"))
    kafka.fail(analytics_events_topic.get_topic_name(), MessageSizeTooLargeError())
    consumer = Consumer()
    # No turn of the loop in between: the failure is known to the commit, not to a callback.
    assert await consumer.commit_offsets({SOURCE: 11}) is False
    assert consumer.committed == []
    assert isinstance(consumer.crashed, faust_patches.DeliveryFailed)
    assert analytics_events_topic.get_topic_name() in str(consumer.crashed)
    assert "MessageSizeTooLargeError" in str(consumer.crashed)
    # Every later commit is refused too, e.g. the one Faust makes as the worker stops.
    with handling(offset=11):
        await publish(analytics_events_topic, "alice", order_created("alice"))
    kafka.acknowledge()
    assert await consumer.commit_offsets({SOURCE: 12}) is False
    assert consumer.committed == []


async def test_a_changelog_record_the_broker_refuses_is_never_committed_over(
    kafka: KafkaClient,
) -> None:
    with handling(offset=20):
        await versions.write(customer_stats_table, b"alice", 1, {"customer_id": "alice"})
    assert not kafka.sent  # staged until the commit (pipeline.streaming.versions)
    await versions.flush()
    changelog = customer_stats_table.changelog_topic.get_topic_name()
    kafka.fail(changelog, MessageSizeTooLargeError())
    await asyncio.sleep(0)  # the delivery's own callbacks have run: still refused
    consumer = Consumer()
    assert await consumer.commit_offsets({SOURCE: 21}) is False
    assert consumer.committed == []
    assert changelog in str(consumer.crashed)


async def test_a_changelog_record_of_fausts_own_table_path_is_checked_too(
    kafka: KafkaClient,
) -> None:
    """Tables written with ``table[key] = value`` send through Faust's producer buffer; Faust
    fails the record's future and only logs a warning."""
    with handling(offset=30):
        record = customer_stats_table.send_changelog(0, b"bob", b"{}")
    customer_stats_table.app.producer.buffer.pending.get_nowait()  # not sent in a unit test
    record.set_exception(MessageSizeTooLargeError())  # what Faust's Topic._on_published does
    consumer = Consumer()
    assert await consumer.commit_offsets({SOURCE: 31}) is False
    assert consumer.committed == []


async def test_acknowledged_sends_are_committed(kafka: KafkaClient) -> None:
    with handling(offset=40):
        await versions.write(customer_stats_table, b"carol", 1, {"customer_id": "carol"})
        await publish(analytics_events_topic, "carol", order_created("carol"))
    consumer = Consumer()
    committing = asyncio.ensure_future(consumer.commit_tps({SOURCE: 41}))
    for _ in range(5):  # the flush sends the staged value; then the broker acknowledges all
        await asyncio.sleep(0)
    assert [r.key for r in kafka.sent] == [b"carol", b"carol"]
    kafka.acknowledge()
    assert await committing is True
    assert consumer.committed == [{SOURCE: 41}]
    assert consumer.crashed is None
    with handling(offset=41):
        assert versions.stored(customer_stats_table, b"carol") is not None


async def test_a_commit_never_covers_a_value_staged_before_it(kafka: KafkaClient) -> None:
    """Values written by the events a commit covers are sent before the offsets are picked,
    including one written while the flush waits for the producer."""
    with handling(offset=70):
        await versions.write(customer_stats_table, b"frank", 1, {"customer_id": "frank"})
    real_send = kafka.send

    async def slow_send(*args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        await asyncio.sleep(0)
        if not any(r.key == b"grace" for r in kafka.sent):  # an agent writes meanwhile
            with handling(offset=71):
                await versions.write(customer_stats_table, b"grace", 1, {"customer_id": "grace"})
        return await real_send(*args, **kwargs)

    kafka.send = slow_send  # type: ignore[method-assign]
    consumer = Consumer()
    committing = asyncio.ensure_future(consumer.commit_tps({SOURCE: 72}))
    for _ in range(10):
        await asyncio.sleep(0)
    kafka.acknowledge()
    assert await committing is True
    assert {r.key for r in kafka.sent} == {b"frank", b"grace"}
    assert versions.staged() == 0


async def test_a_record_the_producer_refuses_to_send_leaves_the_table_as_it_was(
    kafka: KafkaClient,
) -> None:
    """aiokafka's ``send`` raises at once for a record over ``max_request_size``: at the
    flush before a commit, the commit is refused and the worker stops, and the store is not
    left holding a value the changelog never got."""
    kafka.refuse = MessageSizeTooLargeError()
    with handling(offset=50):
        await versions.write(customer_stats_table, b"dave", 1, {"customer_id": "dave"})
    consumer = Consumer()
    assert await consumer.commit_tps({SOURCE: 51}) is False
    assert consumer.committed == []
    assert isinstance(consumer.crashed, faust_patches.DeliveryFailed)
    with handling(offset=50):
        assert versions.stored(customer_stats_table, b"dave") is None
    with handling(offset=50), pytest.raises(MessageSizeTooLargeError):
        await publish(analytics_events_topic, "dave", order_created("dave"))


async def test_a_dead_letter_the_broker_refuses_for_good_stops_the_worker_uncommitted(
    kafka: KafkaClient,
) -> None:
    """The dead-letter topic's ``max.message.bytes`` refuses the record being set aside: no
    retry can cure that, so the agent hears of it at once and, since Faust acknowledges the
    event an agent crashed on, no offset is committed over it any more."""
    dead_letters = dead_letters_topic.get_topic_name()
    with handling(offset=80):
        setting_aside = asyncio.ensure_future(
            consume.send_reliably(dead_letters, b"frank", b"{}", [("x-agent", b"analytics")])
        )
        for _ in range(3):
            await asyncio.sleep(0)
        kafka.fail(dead_letters, MessageSizeTooLargeError())
        with pytest.raises(MessageSizeTooLargeError):
            await asyncio.wait_for(setting_aside, 5)
    assert [r.topic for r in kafka.sent] == [dead_letters]  # sent once, not again
    consumer = Consumer()
    assert await consumer.commit_offsets({SOURCE: 81}) is False
    assert consumer.committed == []
    assert isinstance(consumer.crashed, faust_patches.DeliveryFailed)
    assert dead_letters in str(consumer.crashed)


async def test_a_derived_event_sent_outside_an_agent_is_awaited(kafka: KafkaClient) -> None:
    """An HTTP view's send has no source offset to hold back: its caller hears of a failure,
    and the worker's commits are not refused for it."""
    sending = asyncio.ensure_future(publish(analytics_events_topic, "erin", order_created("erin")))
    await asyncio.sleep(0)
    assert not sending.done()  # waits for the broker
    kafka.fail(analytics_events_topic.get_topic_name(), MessageSizeTooLargeError())
    with pytest.raises(MessageSizeTooLargeError):
        await sending
    consumer = Consumer()
    assert await consumer.commit_offsets({SOURCE: 61}) is True


async def test_a_record_fausts_buffer_cannot_hand_over_fails_its_future() -> None:
    """The record's future would otherwise never settle, and nothing would know it failed."""

    async def publish_message(fut: Any, wait: bool = False) -> None:
        raise MessageSizeTooLargeError()

    buffer = faust_patches.DrainingProducerBuffer()
    record: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    record.message = SimpleNamespace(  # type: ignore[attr-defined]
        channel=SimpleNamespace(publish_message=publish_message)
    )
    with pytest.raises(MessageSizeTooLargeError):
        await buffer._send_pending(record)  # type: ignore[arg-type]
    assert isinstance(record.exception(), MessageSizeTooLargeError)
    assert buffer.in_flight == 0


async def test_a_value_over_the_bound_is_refused_before_anything_is_sent(
    kafka: KafkaClient,
) -> None:
    """A value past ``pipeline.domain.horizon.MAX_VALUE_BYTES`` is a permanent error raised before
    the send: the event is dead-lettered saying why, instead of the broker refusing the changelog
    record and the worker stopping on it."""
    from pipeline.domain.horizon import MAX_VALUE_BYTES, ValueTooLarge

    huge = {"customer_id": "erin", "seen": "x" * MAX_VALUE_BYTES}
    with handling(offset=51), pytest.raises(ValueTooLarge, match="PIPELINE_DEDUPE_HORIZON"):
        await versions.write(customer_stats_table, b"erin", 1, huge)
    with handling(offset=51):
        assert versions.stored(customer_stats_table, b"erin") is None
    assert not kafka.sent
