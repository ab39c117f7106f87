"""Livelock check reading a position that is being reset (faust-streaming 0.15.3 with aiokafka
0.14, ``AIOKafkaConsumerThread.verify_event_path``): every 2.5 commit intervals Faust checks that
each assigned partition is still being fetched and handled, and reads the partition's fetch
position for it. While a partition's position is being reset (after ``seek_to_beginning``,
which :func:`.seek._seek_to_committed` does for partitions with nothing committed, until the
fetcher has looked the offset up), aiokafka's ``position`` asserts that it is set, where Faust
expects ``None``: the ``AssertionError`` crashes the consumer and the worker exits (found by the
end-to-end benchmark, a worker exiting right after the second worker joined).
:func:`_verify_event_path` skips such a partition for that round; the next round checks it.
"""

from __future__ import annotations

from typing import Any

import faust.transport.drivers.aiokafka as faust_aiokafka
from aiokafka.structs import TopicPartition
from faust.types import TP

STOCK_VERIFY_EVENT_PATH = faust_aiokafka.AIOKafkaConsumerThread.verify_event_path


def _verify_event_path(self: Any, now: float, tp: TP) -> None:
    """Faust's livelock check of ``tp``, unless its fetch position is being reset."""
    subscription = self._ensure_consumer()._fetcher._subscriptions.subscription
    assignment = None if subscription is None else subscription.assignment
    state = None if assignment is None else assignment.state_value(TopicPartition(*tp))
    if state is None or not state.has_valid_position:
        return None
    return STOCK_VERIFY_EVENT_PATH(self, now, tp)


def install() -> None:
    faust_aiokafka.AIOKafkaConsumerThread.verify_event_path = _verify_event_path  # type: ignore[method-assign]
