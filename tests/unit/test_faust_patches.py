"""The faust-streaming bug we work around: a producer flush that returns with records unsent."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import faust.transport.producer as faust_producer
import pytest
from faust.types import TP

from pipeline.streaming.faust_patches import (
    STOCK_ADD_GAP,
    STOCK_CLEAN_UNACKED,
    STOCK_GET_ASSIGNMENT,
    STOCK_GET_PRODUCER,
    STOCK_NEW_OFFSET,
    STOCK_VERIFY_EVENT_PATH,
    STOCK_WAIT_FIRST,
    DrainingProducerBuffer,
    _add_gap,
    _balanced_assignment,
    _clean_unacked_messages,
    _get_producer,
    _new_offset,
    _seek_to_committed,
    _verify_event_path,
    _wait_first,
)

STOCK_BUFFER = DrainingProducerBuffer.__mro__[1]  # Faust's own, whether installed or not


def _record(sent: list[str], name: str, stall: float) -> Any:
    async def publish_message(fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(stall)  # e.g. aiokafka waiting for a partition's metadata
        sent.append(name)

    return SimpleNamespace(message=SimpleNamespace(channel=SimpleNamespace(
        publish_message=publish_message)))  # fmt: skip


async def _flush_with_a_stalled_drain(buffer_class: type) -> list[str]:
    buffer = buffer_class()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    await buffer.start()
    sent: list[str] = []
    try:
        buffer.put(_record(sent, "changelog-1", stall=0.3))
        buffer.put(_record(sent, "changelog-2", stall=0.0))
        await asyncio.sleep(0)  # the drain task takes the first record
        await buffer.flush()
        return list(sent)  # what had left the buffer when flush returned
    finally:
        await asyncio.sleep(0.5)  # let the stock buffer finish, or its stop() raises
        await buffer.stop()


async def test_fausts_flush_returns_with_records_unsent() -> None:
    """Pins the upstream bug: if this starts failing, Faust fixed it and the fix can go."""
    assert STOCK_BUFFER.__module__ == "faust.transport.producer"
    assert await _flush_with_a_stalled_drain(STOCK_BUFFER) == []


async def test_the_draining_buffer_flushes_every_record() -> None:
    assert await _flush_with_a_stalled_drain(DrainingProducerBuffer) == [
        "changelog-1", "changelog-2"]  # fmt: skip


def test_the_app_builds_the_draining_buffer() -> None:
    from pipeline.app import app  # noqa: F401 - building the app installs the fix

    assert faust_producer.ProducerBuffer is DrainingProducerBuffer


def _consumer_state(acked: list[int], committed: int | None) -> Any:
    from collections import defaultdict

    from intervaltree import IntervalTree

    tp = TP("orders.events", 1)
    state = SimpleNamespace(
        _acked={tp: list(acked)}, _committed_offset={tp: committed},
        _gap=defaultdict(IntervalTree), _acked_index=defaultdict(set),
    )  # fmt: skip
    return state, tp


def test_fausts_commit_skips_one_unacknowledged_offset() -> None:
    """Pins the upstream bug: committed 22 means offset 22 is next; 22 was never acked."""
    state, tp = _consumer_state([23, 24], committed=22)
    assert STOCK_NEW_OFFSET(state, tp) == 25  # commits over offset 22


def test_the_fixed_commit_waits_for_the_missing_offset() -> None:
    state, tp = _consumer_state([23, 24], committed=22)
    assert _new_offset(state, tp) is None
    state, tp = _consumer_state([22, 23, 24], committed=22)
    assert _new_offset(state, tp) == 25
    state, tp = _consumer_state([5, 6], committed=None)  # nothing committed, head unknown
    assert _new_offset(state, tp) is None
    state._pipeline_heads = {tp: 5}  # known since the seek: the partition starts at 5
    assert _new_offset(state, tp) == 7
    state._pipeline_heads = {tp: 3}
    assert _new_offset(state, tp) is None


def test_fausts_commit_without_a_committed_offset_takes_any_run() -> None:
    """Pins the upstream bug: between a revocation and the seek, a stale record's ack is
    committed over everything before it."""
    state, tp = _consumer_state([450, 451], committed=None)
    assert STOCK_NEW_OFFSET(state, tp) == 452


async def test_the_seek_records_where_uncommitted_partitions_start(monkeypatch: Any) -> None:
    from pipeline.streaming import faust_patches

    async def stock_seek(self: Any) -> None:
        self._committed_offset.update({TP("t", 0): 40})  # what the broker holds

    async def earliest(*tps: TP) -> dict[TP, int]:
        return {tp: 7 for tp in tps}

    async def stock_revoke(self: Any, revoked: Any) -> None:
        return None

    monkeypatch.setattr(faust_patches, "STOCK_PERFORM_SEEK", stock_seek)
    monkeypatch.setattr(faust_patches, "STOCK_ON_PARTITIONS_REVOKED", stock_revoke)
    committed: dict[TP, int | None] = {}
    consumer = SimpleNamespace(
        _committed_offset=defaultdict(lambda: None, committed),
        assignment=lambda: {TP("t", 0), TP("t", 1)},
        earliest_offsets=earliest,
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True)),
    )
    await faust_patches._perform_seek(consumer)
    assert consumer._pipeline_heads == {TP("t", 1): 7}
    await faust_patches._on_partitions_revoked(consumer, {TP("t", 1)})
    assert consumer._pipeline_heads == {}


async def test_fausts_gap_commits_offsets_nobody_processed() -> None:
    """Pins the upstream bug: the gap counts as processed and lifts the head guard."""
    state, tp = _consumer_state([22, 23, 24, 30], committed=22)
    await STOCK_ADD_GAP(state, tp, 25, 30)
    assert STOCK_NEW_OFFSET(state, tp) == 31  # 25-29 were never processed
    state, tp = _consumer_state([30], committed=24)  # 24 is next and was never acknowledged
    await STOCK_ADD_GAP(state, tp, 25, 30)
    assert _new_offset(state, tp) == 31  # the head guard yields to the gap


async def test_the_fixed_gap_commits_only_what_was_acknowledged() -> None:
    state, tp = _consumer_state([22, 23, 24, 30], committed=22)
    await _add_gap(state, tp, 25, 30)
    assert _new_offset(state, tp) == 25
    state, tp = _consumer_state([30], committed=24)
    await _add_gap(state, tp, 25, 30)
    assert _new_offset(state, tp) is None


class _Store:
    def __init__(self, persisted: int | None) -> None:
        self.persisted = persisted

    def persisted_offset(self, tp: Any) -> int | None:
        return self.persisted

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted = offset


def _ack(table: Any, offset: int) -> None:
    from pipeline.streaming.faust_patches import _on_changelog_sent

    result = SimpleNamespace(topic_partition=("customer_stats-changelog", 0), offset=offset)
    _on_changelog_sent(table, SimpleNamespace(result=lambda: result))


def test_the_recovery_mark_never_jumps_over_records_another_worker_wrote() -> None:
    store = _Store(persisted=18)
    table = SimpleNamespace(app=SimpleNamespace(in_transaction=False), data=store,
                            name="customer_stats")  # fmt: skip
    _ack(table, 19)  # our own next write: the mark moves
    assert store.persisted == 19
    _ack(table, 96)  # a zombie's late write, after 20..95 written by the new owner
    assert store.persisted == 19  # recovery will read 20..95
    fresh = _Store(persisted=None)
    _ack(SimpleNamespace(app=table.app, data=fresh, name="t"), 7)  # nothing known yet
    assert fresh.persisted == 7


class _AioConsumer:
    """aiokafka's seek_to_committed: seeks only partitions whose committed offset is > 0."""

    def __init__(self, committed: dict[str, int | None]) -> None:
        self.committed = committed
        self.positions: dict[str, int | str] = {tp: 5 for tp in committed}  # left by a fetch

    async def seek_to_committed(self) -> dict[str, int | None]:
        for tp, offset in self.committed.items():
            if offset and offset > 0:
                self.positions[tp] = offset
        return dict(self.committed)

    async def seek_to_beginning(self, *tps: str) -> None:
        for tp in tps:
            self.positions[tp] = "beginning"


class _ConsumerThread:
    def __init__(self, consumer: _AioConsumer) -> None:
        self.consumer = consumer

    def _ensure_consumer(self) -> _AioConsumer:
        return self.consumer

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return await fun(*args)


async def test_fausts_seek_leaves_an_uncommitted_partition_where_the_fetch_left_it() -> None:
    consumer = _AioConsumer({"p0": None, "p1": 12, "p2": 0})
    await _ConsumerThread(consumer).consumer.seek_to_committed()  # what Faust's seek amounts to
    assert consumer.positions == {"p0": 5, "p1": 12, "p2": 5}  # p0, p2: records 0-4 skipped


async def test_the_fixed_seek_sends_uncommitted_partitions_to_their_beginning() -> None:
    consumer = _AioConsumer({"p0": None, "p1": 12, "p2": 0})
    committed = await _seek_to_committed(_ConsumerThread(consumer))
    assert committed == {"p0": None, "p1": 12, "p2": 0}  # Faust's bookkeeping is unchanged
    assert consumer.positions == {"p0": "beginning", "p1": 12, "p2": "beginning"}


def test_the_app_installs_the_seek_fix() -> None:
    import faust.transport.drivers.aiokafka as faust_aiokafka

    from pipeline.app import app  # noqa: F401 - building the app installs the fixes

    assert faust_aiokafka.AIOKafkaConsumerThread.seek_to_committed is _seek_to_committed


async def test_a_partition_stuck_behind_a_lost_offset_is_read_again(monkeypatch: Any) -> None:
    from pipeline.streaming import faust_patches

    clock = [100.0]
    monkeypatch.setattr(faust_patches.time, "monotonic", lambda: clock[0])
    state, tp = _consumer_state([30, 31], committed=24)  # 24-29 never reached the agents
    sought: list[tuple[TP, int]] = []

    async def seek(partition: TP, offset: int) -> None:
        sought.append((partition, offset))

    state.seek = seek
    assert _new_offset(state, tp) is None
    clock[0] += faust_patches.STUCK_SECONDS - 1
    assert _new_offset(state, tp) is None
    await asyncio.sleep(0)
    assert sought == []  # not yet: it may still be on its way
    clock[0] += 2
    assert _new_offset(state, tp) is None
    await asyncio.sleep(0)
    assert sought == [(tp, 24)]
    assert _new_offset(state, tp) is None  # once per STUCK_SECONDS, not on every commit
    await asyncio.sleep(0)
    assert sought == [(tp, 24)]
    state._acked[tp][:0] = [24, 25, 26, 27, 28, 29]  # read again and handled
    assert _new_offset(state, tp) == 32
    assert tp not in state._pipeline_stuck


def _fetcher_side() -> Any:
    """What ``wait_first`` reads of a consumer: its suspend flag and mode's service flags."""
    from mode.utils.locks import Event as ModeEvent

    return SimpleNamespace(suspend_flow=asyncio.Event(), _stopped=ModeEvent(),
                           _crashed=ModeEvent(), loop=asyncio.get_running_loop())  # fmt: skip


async def test_fausts_hand_over_runs_four_tasks_per_record() -> None:
    """Pins the cost: the stock call wraps the hand-over in a task of its own (and three more)."""
    consumer, tasks = _fetcher_side(), []

    async def deliver() -> str:
        tasks.append(asyncio.current_task())
        return "queued"

    result = await STOCK_WAIT_FIRST(consumer, deliver(), consumer.suspend_flow.wait())
    assert result.results == ["queued"] and tasks[0] is not asyncio.current_task()


async def test_the_hand_over_runs_inline_and_leaves_no_waiter() -> None:
    consumer, tasks = _fetcher_side(), []

    async def deliver() -> str:
        await asyncio.sleep(0)
        tasks.append(asyncio.current_task())
        return "queued"

    result = await _wait_first(consumer, deliver(), consumer.suspend_flow.wait())
    assert (result.results, result.stopped) == (["queued"], False)
    assert tasks == [asyncio.current_task()]
    assert not consumer.suspend_flow._waiters and not consumer._stopped._waiters


async def test_a_blocked_hand_over_is_abandoned_when_the_flow_is_suspended() -> None:
    consumer, seen = _fetcher_side(), []

    async def deliver() -> None:  # the agent's queue is full
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    asyncio.get_running_loop().call_later(0.05, consumer.suspend_flow.set)
    result = await asyncio.wait_for(
        _wait_first(consumer, deliver(), consumer.suspend_flow.wait()), 2
    )
    assert result.stopped and seen == ["cancelled"]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the fetcher's task goes on
    await asyncio.sleep(0.01)


async def test_a_blocked_hand_over_is_abandoned_when_the_consumer_stops() -> None:
    consumer = _fetcher_side()
    asyncio.get_running_loop().call_later(0.05, consumer._stopped.set)
    result = await asyncio.wait_for(_wait_first(
        consumer, asyncio.Event().wait(), consumer.suspend_flow.wait()), 2)  # fmt: skip
    assert result.stopped


async def test_cancelling_the_fetcher_still_cancels_it() -> None:
    consumer = _fetcher_side()
    fetcher = asyncio.ensure_future(
        _wait_first(consumer, asyncio.Event().wait(), consumer.suspend_flow.wait())
    )
    await asyncio.sleep(0.01)
    fetcher.cancel()
    await asyncio.wait([fetcher])
    assert fetcher.cancelled()
    assert not consumer.suspend_flow._waiters


async def test_with_the_flow_already_suspended_faust_decides() -> None:
    consumer = _fetcher_side()
    consumer.suspend_flow.set()

    async def deliver() -> str:
        await asyncio.Event().wait()
        return "never"

    result = await _wait_first(consumer, deliver(), consumer.suspend_flow.wait())
    assert result.results == [True]  # the stock path: the suspend flag won


def test_the_app_installs_the_inline_hand_over() -> None:
    import faust.transport.consumer as faust_consumer

    import pipeline.app  # noqa: F401 - installs the fixes

    assert faust_consumer.Consumer.wait_first is _wait_first


def _steps(coro: Any) -> tuple[int, Any]:
    """Run a coroutine that only yields bare turns of the loop; count them."""
    turns = 0
    try:
        while True:
            assert coro.send(None) is None
            turns += 1
    except StopIteration as done:
        return turns, done.value


def _topic_of_a_running_app() -> Any:
    import faust

    app = faust.App(f"fixes-{id(object())}", broker="kafka://127.0.0.1:1")
    app.producer._started.set()  # what a started worker's producer says
    return app.topic("t")


def test_fausts_publish_waits_three_loop_turns_for_a_running_producer() -> None:
    """Pins the cost: mode's @stampede around maybe_start_producer sleeps three times."""
    topic = _topic_of_a_running_app()
    assert _steps(STOCK_GET_PRODUCER(topic)) == (3, topic.app.producer)


def test_the_running_producer_comes_at_once() -> None:
    topic = _topic_of_a_running_app()
    assert _steps(_get_producer(topic)) == (0, topic.app.producer)


def _partition_state(highwater: int, position: int | None) -> Any:
    """aiokafka's own state of an assigned partition: fetched up to ``highwater``, and either
    consuming at ``position`` or (None) waiting for its position to be reset after a seek."""
    from aiokafka.consumer.fetcher import OffsetResetStrategy
    from aiokafka.consumer.subscription_state import TopicPartitionState

    state = TopicPartitionState(assignment=None)
    state.highwater = highwater
    if position is None:
        state.await_reset(OffsetResetStrategy.EARLIEST)
    else:
        state.seek(position)
    return state


def _consumer_thread(state: Any) -> Any:
    """What Faust's livelock check reads from its consumer thread, around ``state``."""
    assignment = SimpleNamespace(state_value=lambda tp: state)
    subscriptions = SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))
    client = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=subscriptions))
    app = SimpleNamespace(monitor=SimpleNamespace(stream_inbound_time={}),
                          topics=SimpleNamespace(acks_enabled_for=lambda topic: True))  # fmt: skip
    return SimpleNamespace(
        _ensure_consumer=lambda: client, _verify_aiokafka_event_path=lambda now, tp: False,
        consumer=SimpleNamespace(app=app), time_started=0.0, tp_stream_timeout_secs=300.0,
    )  # fmt: skip


async def test_fausts_livelock_check_crashes_on_a_partition_being_reset() -> None:
    """Pins the bug: the AssertionError that crashed a worker's consumer."""
    thread = _consumer_thread(_partition_state(highwater=10, position=None))
    with pytest.raises(AssertionError):
        STOCK_VERIFY_EVENT_PATH(thread, 1.0, TP("orders", 0))


async def test_the_fixed_livelock_check_skips_it_and_checks_the_others() -> None:
    checked: list[Any] = []
    resetting = _consumer_thread(_partition_state(highwater=10, position=None))
    resetting._verify_aiokafka_event_path = lambda now, tp: checked.append(tp)
    assert _verify_event_path(resetting, 1.0, TP("orders", 0)) is None
    assert checked == []  # skipped this round
    consuming = _consumer_thread(_partition_state(highwater=10, position=4))
    consuming._verify_aiokafka_event_path = lambda now, tp: checked.append(tp)
    assert _verify_event_path(consuming, 1.0, TP("orders", 1)) is None
    assert checked == [TP("orders", 1)]  # Faust's check ran


def test_the_app_installs_the_livelock_check_fix() -> None:
    import faust.transport.drivers.aiokafka as faust_aiokafka

    import pipeline.app  # noqa: F401 - installs the fixes

    assert faust_aiokafka.AIOKafkaConsumerThread.verify_event_path is _verify_event_path


async def test_the_agents_send_through_the_apps_own_kafka_client() -> None:
    """``pipeline.streaming.topics.kafka_producer`` reaches inside Faust's producer
    (``_ensure_producer``): pinned, so a faust-streaming upgrade that moves it fails here and not in
    a worker."""
    from aiokafka import AIOKafkaProducer
    from faust.exceptions import NotReady

    from pipeline.app import app
    from pipeline.streaming.topics import kafka_producer

    faust_producer: Any = app.producer
    assert faust_producer._producer is None  # not started in a unit test
    with pytest.raises(NotReady):
        kafka_producer()
    client = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started
    faust_producer._producer = client
    try:
        assert kafka_producer() is client
    finally:
        faust_producer._producer = None


async def test_resuming_an_active_flow_keeps_what_the_agents_have_queued() -> None:
    """Recovery resumes the flow again once the stream partitions are resumed and the fetcher
    is filling the agents' queues; Faust's resume cleared them, losing those records."""
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    from pipeline.streaming import faust_patches

    flow = FlowControlEvent(initially_suspended=False)
    queue: FlowControlQueue[int] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    queue.put_nowait(1)
    faust_patches.STOCK_RESUME(flow)  # Faust's own: the record is gone
    assert queue.qsize() == 0
    queue.put_nowait(2)
    flow.resume()  # with the fix installed: active, so nothing is cleared
    assert queue.qsize() == 1
    flow.suspend()  # a rebalance: what was queued before it is dropped on resume, as before
    flow.resume()
    assert queue.qsize() == 0


def _two_full_workers_and_a_new_one() -> dict[str, Any]:
    from faust.assignor.client_assignment import CopartitionedAssignment

    return {
        "a": CopartitionedAssignment(actives={0, 1}, standbys={2, 3}, topics={"t"}),
        "b": CopartitionedAssignment(actives={2, 3}, standbys={0, 1}, topics={"t"}),
        "new": CopartitionedAssignment(topics={"t"}),
    }


def _assign(get_assignment: Any) -> dict[str, Any]:
    from faust.assignor.copartitioned_assignor import CopartitionedAssignor

    assignor = CopartitionedAssignor({"t"}, _two_full_workers_and_a_new_one(), 4, replicas=1)
    return dict(get_assignment(assignor))


def test_fausts_assignor_gives_a_joining_worker_nothing() -> None:
    """Pins faust-streaming#93: if this starts failing, Faust fixed it and the fix can go."""
    assert _assign(STOCK_GET_ASSIGNMENT)["new"].actives == set()


def test_the_balanced_assignment_gives_every_worker_its_share() -> None:
    out = _assign(_balanced_assignment)
    assert sorted(len(c.actives) for c in out.values()) == [1, 1, 2]
    actives = [p for c in out.values() for p in c.actives]
    standbys = [p for c in out.values() for p in c.standbys]
    assert sorted(actives) == [0, 1, 2, 3]  # each partition has exactly one owner
    assert sorted(standbys) == [0, 1, 2, 3]  # and one standby, never on its owner
    assert all(c.actives.isdisjoint(c.standbys) for c in out.values())


class _Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.refcount, self.acked = 1, False


def _consumer_in_a_rebalance(flow_active: bool) -> tuple[Any, Any, Any]:
    """A consumer whose flow is suspended, with two unacknowledged messages: one an agent's
    stream is handling, one dropped from the other agent's cleared queue."""
    handled = _Message("t", 0, 1)
    dropped = _Message("t", 0, 2)
    busy = SimpleNamespace(current_event=SimpleNamespace(message=handled))
    busy.get_active_stream = lambda: busy
    idle = SimpleNamespace(current_event=None)
    idle.get_active_stream = lambda: idle
    agents = {"a": SimpleNamespace(_actors=[SimpleNamespace(stream=busy)]),
              "b": SimpleNamespace(_actors=[SimpleNamespace(stream=idle)])}  # fmt: skip
    app = SimpleNamespace(
        agents=agents, flow_control=SimpleNamespace(is_active=lambda: flow_active)
    )
    consumer = SimpleNamespace(app=app, _unacked_messages={handled, dropped})
    return consumer, handled, dropped


def test_fausts_rebalance_waits_for_a_message_dropped_from_a_queue() -> None:
    """Pins the upstream behaviour: a message no agent will handle stays awaited."""
    consumer, handled, dropped = _consumer_in_a_rebalance(flow_active=False)
    STOCK_CLEAN_UNACKED(consumer)
    assert consumer._unacked_messages == {handled, dropped}


def test_the_rebalance_forgets_messages_no_agent_is_handling() -> None:
    consumer, handled, _ = _consumer_in_a_rebalance(flow_active=False)
    _clean_unacked_messages(consumer)
    assert consumer._unacked_messages == {handled}
    consumer, handled, dropped = _consumer_in_a_rebalance(flow_active=True)
    _clean_unacked_messages(consumer)  # outside a rebalance, queued messages are still coming
    assert consumer._unacked_messages == {handled, dropped}
