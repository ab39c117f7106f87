"""Stand-ins for the parts of Faust's consumer the patches read."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from intervaltree import IntervalTree


def consumer_state(acked: list[int], committed: int | None) -> tuple[Any, TP]:
    """A consumer's offset bookkeeping for one partition: ``acked`` acknowledged, and
    ``committed`` the next offset to read (None: nothing committed)."""
    tp = TP("orders.events", 1)
    state = SimpleNamespace(
        _acked={tp: list(acked)}, _committed_offset={tp: committed},
        _gap=defaultdict(IntervalTree), _acked_index=defaultdict(set),
    )  # fmt: skip
    return state, tp
