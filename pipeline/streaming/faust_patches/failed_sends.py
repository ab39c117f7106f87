"""Offsets committed over failed sends (faust-streaming 0.15.3, ``Consumer._commit_offsets``):
before it commits offsets Faust flushes the producer, but aiokafka's ``flush`` only waits for the
in-flight batches; it does not say whether they were delivered. A record the broker refuses for
good (over the topic's ``max.message.bytes``, say) fails its own future, which Faust's table path
and our sends only logged, and the offset of the event that caused it was committed anyway: the
derived event or the table's changelog record was lost. Every record sent for an event —
:func:`pipeline.streaming.topics.publish`, ``pipeline.streaming.versions`` and Faust's own table
changelog (:func:`_tracked_send_changelog`) — is held here (:func:`track_delivery`) until its
future settles, a dict entry and a done callback per record, nothing more on the hot path. The
offset commit itself (:func:`_commit`, after Faust's flush) refuses once any of them has failed,
and crashes the consumer with :class:`DeliveryFailed` naming the topic and the error, so the
worker stops loudly and the uncommitted events are handled again by whoever owns them next.
Refusing every later commit too, not only the failed record's partition, is deliberate: a worker
whose records are refused cannot do its job and must be looked at (the restarted worker re-sends
what it already applied, ``pipeline.streaming.versions.resend``), and a refusal that is not sticky
would be lost by the commit Faust makes as the worker stops. A failure the producer raises at
once, in ``send`` (aiokafka refuses a record over ``max_request_size`` before it is sent), reaches
the agent's failure policy instead; Faust's buffer, which would leave such a record's future
pending for good, fails it (:class:`.producer_buffer.DrainingProducerBuffer`). Not covered: the
``exactly_once`` transaction path, which commits through the producer and which we do not use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import faust.tables.base as faust_tables
import faust.transport.consumer as faust_consumer
from faust.types import TP

log = logging.getLogger(__name__)

STOCK_COMMIT = faust_consumer.ThreadDelegateConsumer._commit
STOCK_SEND_CHANGELOG = faust_tables.Collection.send_changelog


class DeliveryFailed(Exception):
    """A record sent for an event was not delivered: no offset is committed any more."""


# The futures of records sent for events, until they settle, with the topic each went to;
# and the first failure (sticky: the worker stops).
_unsettled: dict[asyncio.Future[Any], str] = {}
_failures: list[DeliveryFailed] = []

# How long a commit waits for records still in flight after Faust's flush: the records of the
# events it covers were flushed already (at most a callback away from settled); later ones are
# only given a moment and are checked by the next commit.
SETTLE_SECONDS = 1.0


def track_delivery(delivery: asyncio.Future[Any], topic: str) -> None:
    """Hold ``delivery``, a record sent to ``topic`` for the event being handled, until it
    settles; no offset is committed once one such record has failed."""
    _unsettled[delivery] = topic
    delivery.add_done_callback(settle_delivery)


def expect_delivery(delivery: asyncio.Future[Any], topic: str) -> None:
    """:func:`track_delivery` for a sender whose own done callback calls
    :func:`settle_delivery` (one callback per record instead of two)."""
    _unsettled[delivery] = topic


def settle_delivery(delivery: asyncio.Future[Any]) -> bool:
    """Forget the settled ``delivery``, recording its failure; True if it was delivered."""
    topic = _unsettled.pop(delivery, None)
    error = asyncio.CancelledError() if delivery.cancelled() else delivery.exception()
    if error is None:
        return True
    if topic is not None and not _failures:
        failure = DeliveryFailed(
            f"a record sent to {topic} was not delivered ({error!r}): no offset is committed "
            "any more, so the events since the last commit are handled again after a restart; "
            "stopping the worker"
        )
        failure.__cause__ = error
        _failures.append(failure)
        log.error("%s", failure)
    return False


def refuse_commits(topic: str, error: BaseException) -> None:
    """A record for ``topic`` could not even be handed to the producer: as a failed delivery."""
    failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    failed.set_exception(error)
    _unsettled[failed] = topic
    settle_delivery(failed)


async def _undelivered() -> DeliveryFailed | None:
    """After Faust's flush: the first failure of a record sent so far, if any."""
    if _unsettled:
        waiting = [delivery for delivery in _unsettled if not delivery.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=SETTLE_SECONDS)
        for delivery in [delivery for delivery in _unsettled if delivery.done()]:
            settle_delivery(delivery)  # its own callback may not have run yet
    return _failures[0] if _failures else None


async def _commit(self: Any, offsets: Mapping[TP, int]) -> bool:
    """Faust's offset commit (after its flush), refused once a record sent for an event was not
    delivered: the consumer crashes and the worker stops (see the module's notes)."""
    failure = await _undelivered()
    if failure is not None:
        await self.crash(failure)
        return False
    did_commit: bool = await STOCK_COMMIT(self, offsets)
    return did_commit


def _tracked_send_changelog(
    self: Any,
    partition: int | None,
    key: Any,
    value: Any,
    key_serializer: Any = None,
    value_serializer: Any = None,
) -> Any:
    """Faust's ``send_changelog`` (``table[key] = value``, ``del table[key]``), with the record
    held until it is delivered like the records our tables send themselves."""
    record = STOCK_SEND_CHANGELOG(self, partition, key, value, key_serializer, value_serializer)
    track_delivery(record, self.changelog_topic.get_topic_name())
    return record


def install() -> None:
    faust_tables.Collection.send_changelog = _tracked_send_changelog  # type: ignore[method-assign]
    faust_consumer.ThreadDelegateConsumer._commit = _commit  # type: ignore[method-assign]
