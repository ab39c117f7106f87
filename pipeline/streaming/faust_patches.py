"""Fixes for faust-streaming bugs that break our guarantees (and two costs), each small, tested
and removable.

Producer buffer flush (faust-streaming 0.15.3, ``faust/transport/producer.py``): before it
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
flight. ``install()`` makes Faust build it; ``tests/unit/test_faust_patches.py`` pins the bug.

Commit offset past a missing event (same version, ``Consumer._new_offset``): Faust commits the
end of the first run of consecutive acknowledged offsets, and refuses when the run does not
start where the last commit ended — but its test is ``min(acked) - committed > 1`` while
``committed`` is already the *next* offset to read, so a run starting one past it is accepted:
exactly one event that was never acknowledged (dropped from a queue in a rebalance) is
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

Offsets skipped in a fetch counted as processed (same version, ``Consumer._add_gap``): when
the fetcher hands over a record more than one past the last one it handed over for that
partition, Faust records the offsets in between as a "gap" and commits over them as if they had
been processed — meant for offsets that hold no record (transaction markers, compacted
records). Our source topics have neither, so a jump only happens when the bookkeeping and the
fetch position disagree: a batch fetched before a rebalance's seek, handed over after it, whose
records then sit unprocessed in an agent's queue that the next rebalance clears. Found by the
rebalance-churn scenario under CPU contention (orders missing from stats and never decided, a
gap of one to a dozen records per partition). :func:`_add_gap` records nothing: an offset is
committed only once its record was acknowledged, and the records are read again after the next
rebalance or restart.

No seek for a partition without a committed offset (same version,
``AIOKafkaConsumerThread.seek_to_committed`` via aiokafka's, which seeks only offsets > 0): after
a rebalance Faust "seeks stream partitions to committed offsets", but a partition whose group
has committed nothing yet keeps the fetch position it had, past records that were fetched and
then dropped from the agents' queues by the rebalance. Nothing marks where the partition
starts either (Faust's committed offset is None there, so no head guard applies), and the
first commit goes over them (found by the churn scenario: the fifth event of a partition,
produced during the first rebalance, never handled). :func:`_seek_to_committed` sends such
partitions back to their beginning, what ``auto_offset_reset=earliest`` means; what was
already handled is handled again and absorbed by the agents' idempotency.

Persisted changelog offset jumping over another worker's writes (same version,
``Collection._on_changelog_sent``): each acknowledged changelog write records its offset as
"applied up to here" in the local store, and recovery resumes reading from that mark. A worker
frozen past its session timeout (a zombie) loses its partitions; another worker writes the
changelog meanwhile; when the zombie wakes, its buffered writes are acknowledged at the end of
the changelog and move its mark past the other worker's records, so when it gets the partition
back its recovery skips them and the table misses those updates for good (found by the
SIGSTOP scenario: half of two customers' orders missing from their stats).
:func:`_on_changelog_sent` keeps the mark when an acknowledged offset is not the next one after
it — somebody else wrote in between — so the next recovery reads those records.

Offsets committed over failed sends (same version, ``Consumer._commit_offsets``): before it commits
offsets Faust flushes the producer, but aiokafka's ``flush`` only waits for the in-flight batches;
it does not say whether they were delivered. A record the broker refuses for good (over the topic's
``max.message.bytes``, say) fails its own future, which Faust's table path and our sends only
logged, and the offset of the event that caused it was committed anyway: the derived event or the
table's changelog record was lost. Every record sent for an event —
:func:`pipeline.streaming.topics.publish`, ``pipeline.streaming.versions`` and Faust's own table
changelog (:func:`_tracked_send_changelog`) — is held here (:func:`track_delivery`) until its future
settles, a dict entry and a done callback per record, nothing more on the hot path. The offset
commit itself (:func:`_commit`, after Faust's flush) refuses once any of them has failed, and
crashes the consumer with :class:`DeliveryFailed` naming the topic and the error, so the worker
stops loudly and the uncommitted events are handled again by whoever owns them next. Refusing every
later commit too, not only the failed record's partition, is deliberate: a worker whose records are
refused cannot do its job and must be looked at (the restarted worker re-sends what it already
applied, ``pipeline.streaming.versions.resend``), and a refusal that is not sticky would be lost by
the commit Faust makes as the worker stops. A failure the producer raises at once, in ``send``
(aiokafka refuses a record over ``max_request_size`` before it is sent), reaches the agent's failure
policy instead; Faust's buffer, which would leave such a record's future pending for good, fails it
(:class:`DrainingProducerBuffer`). Not covered: the ``exactly_once`` transaction path, which commits
through the producer and which we do not use.

Livelock check reading a position that is being reset (same version, with aiokafka 0.14,
``AIOKafkaConsumerThread.verify_event_path``): every 2.5 commit intervals Faust checks that
each assigned partition is still being fetched and handled, and reads the partition's fetch
position for it. While a partition's position is being reset (after ``seek_to_beginning``,
which :func:`_seek_to_committed` does for partitions with nothing committed, until the fetcher
has looked the offset up), aiokafka's ``position`` asserts that it is set, where Faust expects
``None``: the ``AssertionError`` crashes the consumer and the worker exits (found by the
end-to-end benchmark, a worker exiting right after the second worker joined).
:func:`_verify_event_path` skips such a partition for that round; the next round checks it.

Two more are not bugs but costs on every event, found by profiling ``make bench``.

A record's hand-over costs four tasks (same version, ``Consumer._drain_messages``): the
fetcher hands each record to the agents' queues through
``Service.wait_first(callback(message), suspend_flow.wait())``, which wraps the hand-over, the
suspend flag, and the consumer's stopped and crashed flags in a task each, waits on all four
and cancels three: about a fifth of a busy worker's CPU. :func:`_wait_first` hands the record
over inline in the fetcher's task and arranges to be interrupted when one of the three flags
is set, as ``asyncio.timeout`` does (cancel the task, then ``uncancel`` and swallow only its
own cancellation). The outcome is Faust's: the hand-over completes, or it is abandoned when
the flow is suspended or the consumer stops.

Three turns of the event loop per record published (same version, ``Topic._get_producer``):
every ``Topic.publish_message`` — each table changelog record, through the producer buffer —
first asks ``app.maybe_start_producer()``, which mode's ``@stampede`` wraps in three
``asyncio.sleep(0)``, even when the producer runs. The buffer's drain task so sends one record
per three turns while an agent writes many per turn: the buffer grew to thousands of records and
held the fetcher back (``make bench``). :func:`_get_producer` returns the running producer at
once and leaves every other case to Faust.

A worker that joins gets no partitions (same version, ``CopartitionedAssignor``; open upstream as
faust-streaming#93): with standby replicas, the assignor trims each worker's actives only down
to ``ceil(partitions / workers)``, so with 4 partitions and two workers holding 2 each, a third
gets none and idles until the next rebalance, and a worker restarted beside two others may sit
empty too (found by the churn scenario once it checked that the extra worker handled anything).
:func:`_balanced_assignment` then moves actives from the workers holding the most to those
under ``floor(partitions / workers)``, preferring a partition the receiver keeps a standby of
(its state is warm) and leaving the donor that partition's standby in exchange.

A rebalance waits for good on a message no agent will handle (same version,
``Consumer.wait_empty``): on revocation Faust suspends the flow, clears the agents' queues and
waits until every message it handed to an agent is acknowledged or garbage-collected. A record
of a topic two agents read (``orders.events``) that one agent handled and the other still had
queued stays one acknowledgement short once the queue is cleared, and Faust's own stream keeps
it alive: ``Stream._py_aiter`` leaves the last record in a local (``message``) while it awaits
the next one, which never comes while the flow is suspended. The worker hangs in the
revocation, misses its session and never recovers (found by the broker-restart scenario: a
worker stuck in ``wait_empty`` for minutes, as in a CI run where the broker came back). While
the flow is suspended, :func:`_clean_unacked_messages` forgets every unacknowledged message no
agent's stream is handling at that moment: it was dropped from a queue, and will never be
acknowledged. Forgetting it commits nothing (its offset is not acknowledged, and the commit
guard above never passes it); the record is read again by the partition's next owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import faust.assignor.copartitioned_assignor as faust_assignor
import faust.tables.base as faust_tables
import faust.topics as faust_topics
import faust.transport.consumer as faust_consumer
import faust.transport.drivers.aiokafka as faust_aiokafka
import faust.transport.producer as faust_producer
from aiokafka.structs import TopicPartition
from faust.types import TP
from mode.services import WaitResults
from mode.utils.queues import FlowControlEvent


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


STOCK_NEW_OFFSET = faust_consumer.Consumer._new_offset


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


# How long a partition's next offset may go unacknowledged, with later ones acknowledged,
# before the partition is read again from it.
STUCK_SECONDS = 10.0


def _stuck(consumer: Any) -> dict[TP, float]:
    """Since when (monotonic) each partition's next offset has waited, or the last re-read."""
    stuck: dict[TP, float] | None = consumer.__dict__.get("_pipeline_stuck")
    if stuck is None:
        stuck = consumer._pipeline_stuck = {}
    return stuck


def _reread_when_stuck(consumer: Any, tp: TP, head: int) -> None:
    """A partition whose next offset stays unacknowledged while later ones are acknowledged
    lost records on the way to the agents (handed over past them around a rebalance, see
    above); reading it again from that offset brings them, and handles the rest once more
    (absorbed). At most once per ``STUCK_SECONDS`` per partition."""
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


STOCK_PERFORM_SEEK = faust_consumer.Consumer.perform_seek
STOCK_ON_PARTITIONS_REVOKED = faust_consumer.Consumer.on_partitions_revoked


async def _perform_seek(self: Any) -> None:
    """Faust's ``perform_seek``, and the first offset of each partition it knows no committed
    offset of (sought to its beginning by :func:`_seek_to_committed`)."""
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
    heads, stuck = _heads(self), _stuck(self)
    for tp in revoked:
        heads.pop(tp, None)
        stuck.pop(tp, None)
    await STOCK_ON_PARTITIONS_REVOKED(self, revoked)
    partitions = {tp.partition for tp in revoked}
    for hook in _on_revoked:
        hook(partitions)


# What runs before every offset commit (``pipeline.streaming.versions.flush``: the table values
# written since the last one), and after a revocation (``pipeline.streaming.versions.forget``).
_before_commit: list[Callable[[], Awaitable[None]]] = []
_on_revoked: list[Callable[[set[int]], None]] = []


def before_commit(hook: Callable[[], Awaitable[None]]) -> None:
    if hook not in _before_commit:
        _before_commit.append(hook)


def on_revoked(hook: Callable[[set[int]], None]) -> None:
    if hook not in _on_revoked:
        _on_revoked.append(hook)


STOCK_COMMIT_TPS = faust_consumer.Consumer._commit_tps


async def _commit_tps(self: Any, tps: Any, start_new_transaction: bool) -> bool:
    """Faust's commit of the offsets acknowledged, after the hooks (the staged table values
    sent). Faust picks the offsets at the start of its ``_commit_tps``, with no await between
    the hooks' end and that: no event acknowledged after the flush is committed by it."""
    for hook in _before_commit:
        await hook()
    did_commit: bool = await STOCK_COMMIT_TPS(self, tps, start_new_transaction)
    return did_commit


log = logging.getLogger(__name__)


STOCK_ADD_GAP = faust_consumer.Consumer._add_gap


async def _add_gap(self: Any, tp: TP, offset_from: int, offset_to: int) -> None:
    """Not Faust's: offsets that were not acknowledged are never committed as processed."""
    log.warning(
        "fetched %s[%d] offset %d right after offset %d: not counting %d..%d as processed",
        tp.topic, tp.partition, offset_to, offset_from - 1, offset_from, offset_to - 1,
    )  # fmt: skip


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


STOCK_ON_CHANGELOG_SENT = faust_tables.Collection._on_changelog_sent


def _on_changelog_sent(self: Any, fut: Any) -> None:
    """Faust's ``_on_changelog_sent``, but never moving the persisted offset over records
    this worker did not write (and so never applied)."""
    if self.app.in_transaction:
        STOCK_ON_CHANGELOG_SENT(self, fut)
        return
    res = fut.result()
    move_recovery_mark(self, res.topic_partition, (res.offset,))


def move_recovery_mark(table: Any, tp: Any, offsets: Iterable[int]) -> None:
    """Move ``table``'s recovery mark of ``tp`` over its acknowledged changelog ``offsets``, in
    offset order, as the fixed ``_on_changelog_sent`` does one by one: never over records this
    worker did not write. Reads and writes the mark once.

    A partition's acknowledgements come in offset order as long as one path sends its records:
    aiokafka keeps one batch per partition in flight and resolves a batch's records in order. So
    every write of a table goes one way (``pipeline.streaming.versions`` for ours, deletions
    included): a record sent through Faust's buffer is acknowledged through more callbacks than one
    sent directly, and an order's write at n with its deletion at n + 1 reached this rule as n + 1,
    then n, leaving the mark at n for good (a warning per acknowledgement after it, and every
    recovery read the changelog again from there)."""
    before = mark = table.data.persisted_offset(tp)
    for offset in sorted(offsets):
        if mark is not None and offset > mark + 1:
            log.warning(
                "%s: changelog %s has records %d..%d this worker did not write; keeping the "
                "recovery mark at %d so they are read on the next recovery",
                table.name, tp, mark + 1, offset - 1, mark,
            )  # fmt: skip
            continue
        mark = offset
    if mark is not None and mark != before:
        table.data.set_persisted_offset(tp, mark)


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


STOCK_COMMIT = faust_consumer.ThreadDelegateConsumer._commit


async def _commit(self: Any, offsets: Mapping[TP, int]) -> bool:
    """Faust's offset commit (after its flush), refused once a record sent for an event was not
    delivered: the consumer crashes and the worker stops (see above)."""
    failure = await _undelivered()
    if failure is not None:
        await self.crash(failure)
        return False
    did_commit: bool = await STOCK_COMMIT(self, offsets)
    return did_commit


STOCK_SEND_CHANGELOG = faust_tables.Collection.send_changelog


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


STOCK_VERIFY_EVENT_PATH = faust_aiokafka.AIOKafkaConsumerThread.verify_event_path


def _verify_event_path(self: Any, now: float, tp: TP) -> None:
    """Faust's livelock check of ``tp``, unless its fetch position is being reset."""
    subscription = self._ensure_consumer()._fetcher._subscriptions.subscription
    assignment = None if subscription is None else subscription.assignment
    state = None if assignment is None else assignment.state_value(TopicPartition(*tp))
    if state is None or not state.has_valid_position:
        return None
    return STOCK_VERIFY_EVENT_PATH(self, now, tp)


STOCK_WAIT_FIRST = faust_consumer.Consumer.wait_first
SUSPEND_WAIT_CODE = asyncio.Event.wait.__code__


async def _wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:  # noqa: ASYNC109
    """Faust's ``wait_first``, with the fetcher's per-record call handed over inline."""
    if timeout is None and len(coros) == 2 and _waits_on(coros[1], self.suspend_flow):
        flags = (self.suspend_flow, self._stopped, self._crashed)
        if not any(flag.is_set() for flag in flags):
            coros[1].close()
            return await _hand_over(coros[0], flags)
    return await STOCK_WAIT_FIRST(self, *coros, timeout=timeout)


def _waits_on(coro: Any, event: asyncio.Event) -> bool:
    """Is ``coro`` an unstarted ``event.wait()``?"""
    frame = getattr(coro, "cr_frame", None)
    return (
        getattr(coro, "cr_code", None) is SUSPEND_WAIT_CODE
        and frame is not None
        and frame.f_locals.get("self") is event
    )


async def _hand_over(deliver: Any, flags: tuple[Any, ...]) -> WaitResults:
    """Await ``deliver`` in this task; abandon it (cancelled) when one of ``flags`` is set."""
    task = asyncio.current_task()
    assert task is not None
    waiter = task.get_loop().create_future()
    state = {"finished": False, "interrupted": False}

    def interrupt(_: asyncio.Future[Any]) -> None:
        if not state["finished"]:
            state["interrupted"] = True
            task.cancel()

    waiter.add_done_callback(interrupt)
    for flag in flags:  # what Event.wait() does, without a task of its own
        flag._waiters.append(waiter)
    try:
        result = await deliver
    except asyncio.CancelledError:
        if state["interrupted"] and task.uncancel() == 0:
            return WaitResults([], [], True)
        raise
    finally:
        state["finished"] = True
        for flag in flags:
            flag._waiters.remove(waiter)  # set() and clear() leave their waiters in place
    if state["interrupted"]:  # the delivery finished although it was told to stop
        task.uncancel()
    return WaitResults([deliver], [result], False)


STOCK_GET_PRODUCER = faust_topics.Topic._get_producer


async def _get_producer(self: Any) -> Any:
    """Faust's ``Topic._get_producer`` without the three loop turns once the producer runs."""
    app = self.app
    if not app.in_transaction:
        producer = app.producer
        if producer.started:
            return producer
    return await STOCK_GET_PRODUCER(self)


STOCK_RESUME = FlowControlEvent.resume


def _resume(self: Any) -> None:
    """``FlowControlEvent.resume``, but the agents' queues are cleared only when the flow was
    suspended.

    Clearing on resume drops what was queued for partitions taken away while the flow was
    suspended. But recovery resumes the flow twice: when it starts reading the changelogs, and
    again at the end, after resuming the stream partitions and awaiting the seek to their
    committed offsets, while the fetcher is already handing their records to the agents. That
    second resume found the flow active and cleared the queues anyway: the records of a
    partition just taken over were marked read and never handled, nothing later was
    acknowledged, and the partition made no progress until the next rebalance (found by the
    notifications test: a worker taking over decisions handled 4 of 24). Upstreamable as is.
    """
    if self._suspend.is_set():
        STOCK_RESUME(self)


STOCK_GET_ASSIGNMENT = faust_assignor.CopartitionedAssignor.get_assignment


def _balanced_assignment(self: Any) -> Any:
    """Faust's copartitioned assignment, then actives moved until every worker holds at least
    ``floor(partitions / workers)`` of them (see the module's notes)."""
    assignments = STOCK_GET_ASSIGNMENT(self)
    clients = list(assignments.values())
    floor = self.num_partitions // len(clients) if clients else 0
    while floor:
        poor = min(clients, key=lambda c: len(c.actives))
        rich = max(clients, key=lambda c: len(c.actives))
        if len(poor.actives) >= floor or len(rich.actives) <= floor:
            break
        held = sorted(rich.actives)
        moved = next((p for p in held if p in poor.standbys), held[0])
        rich.actives.discard(moved)
        if moved in poor.standbys:
            poor.standbys.discard(moved)
            rich.standbys.add(moved)
        poor.actives.add(moved)
    return assignments


STOCK_CLEAN_UNACKED = faust_consumer.Consumer._clean_unacked_messages


def _clean_unacked_messages(self: Any) -> None:
    """Faust's, and while the flow is suspended also forget the messages no agent's stream is
    handling (see the module's notes)."""
    STOCK_CLEAN_UNACKED(self)
    if self.app.flow_control.is_active() or not self._unacked_messages:
        return
    handling = set()
    for agent in list(self.app.agents.values()):
        for actor in list(agent._actors):
            for stream in (actor.stream, actor.stream.get_active_stream()):
                event = stream.current_event
                if event is not None:
                    handling.add(id(event.message))
    abandoned = {m for m in self._unacked_messages if id(m) not in handling}
    if abandoned:
        log.warning(
            "rebalance: %d records were dropped from an agent's queue before it handled them: "
            "not waiting for them (they are read again): %s", len(abandoned),
            ", ".join(f"{m.topic}[{m.partition}]@{m.offset}" for m in sorted(
                abandoned, key=lambda m: (m.topic, m.partition, m.offset)))[:500],
        )  # fmt: skip
        self._unacked_messages -= abandoned


def install() -> None:
    """Install the fixes into Faust's classes (idempotent)."""
    FlowControlEvent.resume = _resume  # type: ignore[method-assign]
    faust_producer.ProducerBuffer = DrainingProducerBuffer  # type: ignore[misc]
    faust_consumer.Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    faust_consumer.Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    faust_consumer.Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]
    faust_consumer.Consumer.on_partitions_revoked = _on_partitions_revoked  # type: ignore[method-assign]
    faust_consumer.Consumer._commit_tps = _commit_tps  # type: ignore[method-assign]
    faust_aiokafka.AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed  # type: ignore[method-assign,assignment]
    faust_tables.Collection._on_changelog_sent = _on_changelog_sent  # type: ignore[method-assign]
    faust_tables.Collection.send_changelog = _tracked_send_changelog  # type: ignore[method-assign]
    faust_consumer.ThreadDelegateConsumer._commit = _commit  # type: ignore[method-assign]
    faust_aiokafka.AIOKafkaConsumerThread.verify_event_path = _verify_event_path  # type: ignore[method-assign]
    faust_consumer.Consumer.wait_first = _wait_first  # type: ignore[method-assign]
    faust_topics.Topic._get_producer = _get_producer  # type: ignore[method-assign]
    faust_assignor.CopartitionedAssignor.get_assignment = _balanced_assignment  # type: ignore[method-assign]
    faust_consumer.Consumer._clean_unacked_messages = _clean_unacked_messages  # type: ignore[method-assign]
