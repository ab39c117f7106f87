"""The livelock check that crashed on a partition being reset
(:mod:`pipeline.streaming.faust_patches.livelock`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from pipeline.streaming.faust_patches.livelock import STOCK_VERIFY_EVENT_PATH, _verify_event_path


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
