"""A rebalance waits for good on a message no agent will handle (faust-streaming 0.15.3,
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
guard of :mod:`.offsets` never passes it); the record is read again by the partition's next
owner.
"""

from __future__ import annotations

import logging
from typing import Any

import faust.transport.consumer as faust_consumer

log = logging.getLogger(__name__)

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
    faust_consumer.Consumer._clean_unacked_messages = _clean_unacked_messages  # type: ignore[method-assign]
