"""A worker that joins gets no partitions (faust-streaming 0.15.3, ``CopartitionedAssignor``;
open upstream as faust-streaming#93): with standby replicas, the assignor trims each worker's
actives only down to ``ceil(partitions / workers)``, so with 4 partitions and two workers holding
2 each, a third gets none and idles until the next rebalance, and a worker restarted beside two
others may sit empty too (found by the churn scenario once it checked that the extra worker
handled anything). :func:`_balanced_assignment` then moves actives from the workers holding the
most to those under ``floor(partitions / workers)``, preferring a partition the receiver keeps a
standby of (its state is warm) and leaving the donor that partition's standby in exchange.
"""

from __future__ import annotations

from typing import Any

import faust.assignor.copartitioned_assignor as faust_assignor

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


def install() -> None:
    faust_assignor.CopartitionedAssignor.get_assignment = _balanced_assignment  # type: ignore[method-assign]
