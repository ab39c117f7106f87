"""A rebalance that waited for good on a message no agent would handle
(:mod:`pipeline.streaming.faust_patches.dropped_messages`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pipeline.streaming.faust_patches.dropped_messages import (
    STOCK_CLEAN_UNACKED,
    _clean_unacked_messages,
)


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
