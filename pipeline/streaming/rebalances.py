"""How often this worker rebalances and for how long, through Faust's sensor interface.

Faust calls ``on_rebalance_start`` as the consumer learns that partitions move (before their
revocation) and ``on_rebalance_end`` once every table has recovered and the agents consume
again: the span in which ``app.rebalancing`` is set and ``/readyz`` answers 503. A rebalance
that starts before the last one ended replaces its start, so it counts twice and its time once,
from the later start. Faust may call these from the consumer's thread: the metrics are
thread-safe.
"""

from __future__ import annotations

import time
from typing import Any

import faust

from pipeline.metrics import Metrics


class RebalanceSensor(faust.Sensor):
    def __init__(self, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics

    def on_rebalance_start(self, app: Any) -> dict[str, float]:
        self.metrics.rebalance_started()
        return {"started": time.monotonic()}

    def on_rebalance_end(self, app: Any, state: dict[str, float]) -> None:
        self.metrics.rebalance_ended(time.monotonic() - state["started"])
