"""The agents' queues cleared when an active flow is resumed (mode-streaming 0.7.1, under
faust-streaming 0.15.3, ``FlowControlEvent.resume``): clearing on resume drops what was queued
for partitions taken away while the flow was suspended. But recovery resumes the flow twice:
when it starts reading the changelogs, and again at the end, after resuming the stream
partitions and awaiting the seek to their committed offsets, while the fetcher is already
handing their records to the agents. That second resume found the flow active and cleared the
queues anyway: the records of a partition just taken over were marked read and never handled,
nothing later was acknowledged, and the partition made no progress until the next rebalance
(found by the notifications test: a worker taking over decisions handled 4 of 24). :func:`_resume`
clears the queues only when the flow was suspended. Upstreamable as is.
"""

from __future__ import annotations

from typing import Any

from mode.utils.queues import FlowControlEvent

STOCK_RESUME = FlowControlEvent.resume


def _resume(self: Any) -> None:
    """``FlowControlEvent.resume``, but the agents' queues are cleared only when the flow was
    suspended."""
    if self._suspend.is_set():
        STOCK_RESUME(self)


def install() -> None:
    FlowControlEvent.resume = _resume  # type: ignore[method-assign]
