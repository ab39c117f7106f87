"""No seek for a partition without a committed offset (faust-streaming 0.15.3,
``AIOKafkaConsumerThread.seek_to_committed`` via aiokafka's, which seeks only offsets > 0): after
a rebalance Faust "seeks stream partitions to committed offsets", but a partition whose group
has committed nothing yet keeps the fetch position it had, past records that were fetched and
then dropped from the agents' queues by the rebalance. Nothing marks where the partition
starts either (Faust's committed offset is None there, so no head guard applies), and the
first commit goes over them (found by the churn scenario: the fifth event of a partition,
produced during the first rebalance, never handled). :func:`_seek_to_committed` sends such
partitions back to their beginning, what ``auto_offset_reset=earliest`` means; what was
already handled is handled again and absorbed by the agents' idempotency.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust.transport.drivers.aiokafka as faust_aiokafka


async def _seek_to_committed(self: Any) -> Mapping[Any, int | None]:
    """Faust's ``seek_to_committed``, but a partition with nothing committed goes back to its
    beginning instead of staying where the last fetch left it."""
    return await self.call_thread(_seek_consumer_to_committed, self._ensure_consumer())


async def _seek_consumer_to_committed(consumer: Any) -> Mapping[Any, int | None]:
    committed: Mapping[Any, int | None] = await consumer.seek_to_committed()
    uncommitted = [tp for tp, offset in committed.items() if not offset]  # None, or 0
    if uncommitted:
        await consumer.seek_to_beginning(*uncommitted)
    return committed


def install() -> None:
    faust_aiokafka.AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed  # type: ignore[method-assign,assignment]
