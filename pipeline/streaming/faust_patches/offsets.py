"""Commit offset past a missing event (faust-streaming 0.15.3, ``Consumer._new_offset``): Faust
commits the end of the first run of consecutive acknowledged offsets, and refuses when the run
does not start where the last commit ended — but its test is ``min(acked) - committed > 1``
while ``committed`` is already the *next* offset to read, so a run starting one past it is
accepted: exactly one event that was never acknowledged (dropped from a queue in a rebalance) is
committed over and never processed. Found by the rebalance-churn scenario (an order missing
from its customer's stats and never reserved). And where Faust knows no committed offset — a
partition its group never committed, and every partition between a rebalance's revocation and
the seek that ends its recovery — it applies no test at all. In that window a record fetched
before the rebalance, whose hand-over to an agent was held up by the paused flow and so
survived the clearing of the queues, is handled when recovery resumes the flow; its offset is
acknowledged and committed, over every record before it that the rebalance dropped (the churn
scenario: three order lines reserved, the order never decided). :func:`_new_offset` refuses
any gap at the head, and commits nothing for a partition whose head it does not know: the
committed offset, or after the seek the partition's first offset (:func:`_perform_seek`).
Where records never reach the agents at all — handed over past them around a rebalance, and
then dropped as "already read" — the guard alone would hold the commits until the next
rebalance; a partition whose next offset stays unacknowledged for ``STUCK_SECONDS`` while later
ones are acknowledged is read again from it (:func:`_reread_when_stuck`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust.transport.consumer as faust_consumer
from faust.types import TP

from pipeline.streaming.faust_patches import hooks

log = logging.getLogger(__name__)

STOCK_NEW_OFFSET = faust_consumer.Consumer._new_offset
STOCK_PERFORM_SEEK = faust_consumer.Consumer.perform_seek
STOCK_ON_PARTITIONS_REVOKED = faust_consumer.Consumer.on_partitions_revoked

# How long a partition's next offset may go unacknowledged, with later ones acknowledged,
# before the partition is read again from it.
STUCK_SECONDS = 10.0


def _new_offset(self: Any, tp: TP) -> int | None:
    """Faust's ``_new_offset``, but never past an offset that was not acknowledged."""
    acked = self._acked[tp]
    if not acked:
        return None
    head = self._committed_offset[tp]
    if head is None:
        head = _heads(self).get(tp)
        if head is None:
            return None  # not sought since it was assigned: where it starts is unknown
    if not self._gap[tp] and min(acked) > head:
        _reread_when_stuck(self, tp, head)
        return None  # the next offset to commit was never acknowledged: wait for it
    _stuck(self).pop(tp, None)
    return STOCK_NEW_OFFSET(self, tp)


def _stuck(consumer: Any) -> dict[TP, float]:
    """Since when (monotonic) each partition's next offset has waited, or the last re-read."""
    stuck: dict[TP, float] | None = consumer.__dict__.get("_pipeline_stuck")
    if stuck is None:
        stuck = consumer._pipeline_stuck = {}
    return stuck


def _reread_when_stuck(consumer: Any, tp: TP, head: int) -> None:
    """A partition whose next offset stays unacknowledged while later ones are acknowledged
    lost records on the way to the agents (handed over past them around a rebalance, see the
    module's notes); reading it again from that offset brings them, and handles the rest once
    more (absorbed). At most once per ``STUCK_SECONDS`` per partition."""
    stuck = _stuck(consumer)
    now = time.monotonic()
    since = stuck.setdefault(tp, now)
    if now - since < STUCK_SECONDS:
        return
    stuck[tp] = now
    log.warning(
        "%s[%d]: offset %d not handled for %.0fs while later ones were; reading the partition "
        "again from it", tp.topic, tp.partition, head, now - since,
    )  # fmt: skip
    task = asyncio.ensure_future(_reread(consumer, tp, head))
    _rereads.add(task)
    task.add_done_callback(_rereads.discard)


_rereads: set[asyncio.Future[None]] = set()


async def _reread(consumer: Any, tp: TP, head: int) -> None:
    try:
        await consumer.seek(tp, head)
    except Exception as exc:  # noqa: BLE001 - e.g. revoked meanwhile: the next owner reads it
        log.warning("%s[%d]: could not read again from %d: %r", tp.topic, tp.partition, head, exc)


def _heads(consumer: Any) -> dict[TP, int]:
    """Where each partition without a committed offset starts, known since the last seek."""
    heads: dict[TP, int] | None = consumer.__dict__.get("_pipeline_heads")
    if heads is None:
        heads = consumer._pipeline_heads = {}
    return heads


async def _perform_seek(self: Any) -> None:
    """Faust's ``perform_seek``, and the first offset of each partition it knows no committed
    offset of (sought to its beginning by :func:`.seek._seek_to_committed`)."""
    await STOCK_PERFORM_SEEK(self)
    acks_enabled_for = self.app.topics.acks_enabled_for
    unknown = [
        tp
        for tp in self.assignment()
        if self._committed_offset[tp] is None and acks_enabled_for(tp.topic)
    ]
    if unknown:
        _heads(self).update(await self.earliest_offsets(*unknown))


async def _on_partitions_revoked(self: Any, revoked: Any) -> None:
    """Faust's revocation, forgetting what this module knew of the revoked partitions; then
    the revocation hooks (:mod:`.hooks`)."""
    heads, stuck = _heads(self), _stuck(self)
    for tp in revoked:
        heads.pop(tp, None)
        stuck.pop(tp, None)
    await STOCK_ON_PARTITIONS_REVOKED(self, revoked)
    hooks.revoked({tp.partition for tp in revoked})


def install() -> None:
    faust_consumer.Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    faust_consumer.Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]
    faust_consumer.Consumer.on_partitions_revoked = _on_partitions_revoked  # type: ignore[method-assign]
