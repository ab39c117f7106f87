"""The one way records leave for Kafka: derived events, table changelogs, retries, dead
letters, replays and the outbox all go through an :class:`Egress`, so they carry the same
headers and meet the same failure handling.

An egress wraps one aiokafka producer: the Faust app's own client in a worker
(``pipeline.streaming.topics.egress``), the forwarder's idempotent producer, the CLI's for a
replay. Three ways to send:

- :meth:`Egress.submit` queues a record and returns its delivery future (a record the client
  refuses at once, over ``max_request_size`` say, raises here). Inside an agent the future is
  held until it settles and no offset is committed over a failed one
  (``pipeline.streaming.faust_patches``); the forwarder awaits its batch's futures itself.
- :meth:`Egress.stage` keeps a record for :meth:`Egress.send_staged`, which hands everything
  staged to the producer as one produce batch per partition (an agent's derived events, once a
  batch of events: ``pipeline.streaming.topics.publish``).
- :meth:`Egress.deliver` waits for the broker's acknowledgement and raises its refusal.
- :meth:`Egress.deliver_reliably` retries until the broker acknowledges (a record being set
  aside must not be lost), keeps the original record time where the topic allows it, and
  stamps the current time where retention would delete the record before it is read. A record
  refused for good (:mod:`.refusals`: over a size limit, an invalid or unauthorized topic...)
  raises at once: retrying it would block the sender for ever, silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka.errors import InvalidTimestampError, KafkaError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from pipeline.adapters.kafka.refusals import refused_for_good

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]
# A record staged for :meth:`Egress.send_staged`: topic, key, value, headers, timestamp (ms).
Staged = tuple[str, bytes, bytes | None, list[tuple[str, bytes]], int | None]


def event_headers(event_id: str, event_type: str, schema_version: int) -> Headers:
    """What every event record carries beside its JSON: consumers dedupe by ``event_id``
    without decoding the value. ``schema_version`` is the value's, as written."""
    return [
        ("event_id", event_id.encode()),
        ("event_type", event_type.encode()),
        ("schema_version", str(schema_version).encode()),
    ]


class Egress:
    """Sends through ``producer``: an aiokafka producer, or a function returning one (the
    Faust app's client exists only once the app has started)."""

    def __init__(self, producer: Any, *, retention_hours: int = -1) -> None:
        self._get: Callable[[], Any] = producer if callable(producer) else (lambda: producer)
        self.retention_hours = retention_hours

    async def submit(
        self, topic: str, value: bytes | None, *, key: bytes | None = None,
        headers: Headers = (), partition: int | None = None, timestamp_ms: int | None = None,
    ) -> asyncio.Future[Any]:  # fmt: skip
        future: asyncio.Future[Any] = await self._get().send(
            topic, value, key=key, partition=partition, timestamp_ms=timestamp_ms,
            headers=list(headers) or None,
        )  # fmt: skip
        return future

    def stage(
        self, staged: list[Staged], topic: str, value: bytes | None, *, key: bytes,
        headers: Headers = (), timestamp_ms: int | None = None,
    ) -> None:  # fmt: skip
        """Add a keyed record to ``staged``, for :meth:`send_staged`.

        A record the client would refuse at once (over ``max_request_size``) raises here, as
        :meth:`submit` raises it, so the caller's failure handling sees it with its cause."""
        headers = list(headers)
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self._get()._max_request_size:
            raise MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized which is larger than the maximum "
                "request size you have configured with the max_request_size configuration"
            )
        staged.append((topic, key, value, headers, timestamp_ms))

    async def send_staged(self, staged: list[Staged]) -> list[tuple[asyncio.Future[Any], str]]:
        """Hand the records of ``staged`` to the producer, in order, one produce batch per
        partition (``create_batch``/``send_batch``): a delivery future per batch, not per
        record. The partition is the one ``send`` picks for the key. Empties ``staged``."""
        producer = self._get()
        by_partition: dict[tuple[str, int], list[Staged]] = {}
        for record in staged:
            topic = record[0]
            await producer.partitions_for(topic)  # the topic's metadata, as ``send`` waits for it
            partition = producer._partition(topic, None, record[1], record[2], record[1], record[2])
            by_partition.setdefault((topic, partition), []).append(record)
        staged.clear()
        deliveries = []
        for (topic, partition), records in by_partition.items():
            batch = producer.create_batch()
            for _, key, value, headers, timestamp_ms in records:
                fields = {"timestamp": timestamp_ms, "key": key, "value": value,
                          "headers": headers}  # fmt: skip
                if batch.append(**fields) is None:  # full: the next batch takes it (a first fits)
                    sent = await producer.send_batch(batch, topic, partition=partition)
                    deliveries.append((sent, topic))
                    batch = producer.create_batch()
                    batch.append(**fields)
            deliveries.append((await producer.send_batch(batch, topic, partition=partition), topic))
        return deliveries

    async def deliver(
        self, topic: str, value: bytes | None, *, key: bytes | None = None,
        headers: Headers = (), partition: int | None = None, timestamp_ms: int | None = None,
    ) -> Any:  # fmt: skip
        future = await self.submit(topic, value, key=key, headers=headers, partition=partition,
                                   timestamp_ms=timestamp_ms)  # fmt: skip
        return await future

    async def deliver_reliably(
        self, topic: str, value: bytes | None, *, key: bytes | None = None,
        headers: Headers = (), partition: int | None = None, timestamp_ms: int | None = None,
        attempts: int | None = None,
    ) -> None:  # fmt: skip
        """Send and wait for the acknowledgement, retrying with back-off; ``attempts`` bounds
        the tries (None: until acknowledged). ``timestamp_ms`` is the original record's, so a
        retried or replayed record keeps its place in windows by record time.

        Raises a refusal for good (:func:`.refusals.refused_for_good`) at once, whatever
        ``attempts`` says: the caller must not go on as if the record were sent."""
        if key is None and value is None:
            value = b""  # Kafka holds a record with neither (a tombstone); aiokafka sends none
        timestamp_ms = self.kept_by_retention(timestamp_ms)
        delay, tried = 0.2, 0
        while True:
            try:
                await self.deliver(topic, value, key=key, headers=headers, partition=partition,
                                   timestamp_ms=timestamp_ms)  # fmt: skip
                return
            except KafkaError as exc:
                if isinstance(exc, InvalidTimestampError) and timestamp_ms is not None:
                    # A topic with message.timestamp.before.max.ms refuses an old original time
                    # for good; the x-original-timestamp header still carries it.
                    log.warning("%s refused timestamp %d (%r); sending with the current time",
                                topic, timestamp_ms, exc)  # fmt: skip
                    timestamp_ms = None
                    continue
                if refused_for_good(exc):
                    raise
                tried += 1
                if attempts is not None and tried >= attempts:
                    raise
                log.warning("sending to %s failed (%r), retrying in %.1fs", topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def kept_by_retention(self, timestamp_ms: int | None) -> int | None:
        """``timestamp_ms``, or None (now) when the topics' retention would delete it within a
        day (within half the retention, if that is shorter): Kafka deletes a segment whose
        newest record is older than ``retention.ms``, the active segment too, so a replay of an
        old dead letter stamped with its original time could be gone before its agent reads
        it. Such a record is far past any window it could be counted in."""
        hours = self.retention_hours
        if timestamp_ms is None or hours < 0:
            return timestamp_ms
        keep_seconds = max(hours * 3600 - 86400, hours * 1800)
        return timestamp_ms if timestamp_ms >= (time.time() - keep_seconds) * 1000 else None
