"""Not a bug but a cost under load, found by measuring ``make soak`` (CPU per order).

Faust creates its worker's consumer with ``fetch_max_wait_ms=1500`` and aiokafka's default
``fetch_min_bytes=1`` (faust-streaming 0.15.3, ``AIOKafkaConsumerThread._create_worker_consumer``):
the broker answers a fetch as soon as one record is there. Under steady load every fetch then
carries a handful of records and every one of the worker's partitions (agent sources,
redelivery and retry topics, standby changelogs), so the broker and the worker's consumer
thread spend their time on fetch requests. In the soak, with the broker waiting up to 10 ms for
64 KiB, the machine spent 15.4 ms of CPU per order against 17.4-19.5 without.
:func:`configure` sets both (``PIPELINE_CONSUMER_FETCH_MIN_BYTES``,
``PIPELINE_CONSUMER_FETCH_MAX_WAIT_MS``); the wait is what an idle partition's next record may
sit at the broker at most, per hop.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

STOCK_CREATE_WORKER_CONSUMER = AIOKafkaConsumerThread._create_worker_consumer

# (fetch_min_bytes, fetch_max_wait_ms); None leaves Faust's consumer as Faust makes it.
_fetch: tuple[int, int] | None = None


def configure(min_bytes: int, max_wait_ms: int) -> None:
    global _fetch
    _fetch = (min_bytes, max_wait_ms)


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    """Faust's worker consumer, with the fetch sizing :func:`configure` set. aiokafka reads
    both when the consumer starts (it builds its fetcher then), which is after this returns."""
    consumer = STOCK_CREATE_WORKER_CONSUMER(self, transport)
    if _fetch is not None:
        consumer._fetch_min_bytes, consumer._fetch_max_wait_ms = _fetch
    return consumer


def install() -> None:
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
