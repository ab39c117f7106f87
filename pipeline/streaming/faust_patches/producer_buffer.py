"""Producer buffer flush (faust-streaming 0.15.3, ``faust/transport/producer.py``): before it
commits offsets, Faust flushes its producer, and the flush starts with the ``ProducerBuffer``
that holds table changelog records (``Table.__setitem__`` → ``send_soon``). But
``ProducerBuffer.flush`` returns as soon as 0.1 s pass without a record leaving the buffer,
even with records still in it, and does not see the record its drain task has already taken
off the queue and is still handing to aiokafka. When the drain stalls for a moment (a
metadata fetch after a rebalance, a starved CPU), offsets are committed while the changelog
records of the events they cover are still in memory; a worker killed or frozen then loses
those table writes for good (found by ``tests/integration/test_faults.py``, a frozen worker:
an order's line reservation was applied, its offset committed, its changelog record never
written). :class:`DrainingProducerBuffer` waits until the buffer is empty and nothing is in
flight. :func:`install` makes Faust build it; ``tests/unit/faust_patches/test_producer_buffer.py``
pins the bug.

The buffer also fails the future of a record the producer refuses at once, in ``send``
(aiokafka refuses a record over ``max_request_size`` before it is sent): Faust's leaves it
pending for good, its failure known to nobody (:mod:`.failed_sends`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust.transport.producer as faust_producer


class DrainingProducerBuffer(faust_producer.ProducerBuffer):
    """A ``ProducerBuffer`` whose ``flush`` returns only once every record it was given has
    been handed to the Kafka client (whose own flush then waits for the acknowledgements)."""

    in_flight = 0

    async def _send_pending(self, fut: Any) -> None:
        self.in_flight += 1
        try:
            await super()._send_pending(fut)
        except Exception as exc:
            if not fut.done():  # else it would stay pending, its failure known to nobody
                fut.set_exception(exc)
            raise
        finally:
            self.in_flight -= 1

    async def flush(self) -> None:
        while self.size or self.in_flight:
            await self.flush_atmost(None)
            if self.size or self.in_flight:
                await asyncio.sleep(0.005)


def install() -> None:
    faust_producer.ProducerBuffer = DrainingProducerBuffer  # type: ignore[misc]
