"""Offsets skipped in a fetch counted as processed
(:mod:`pipeline.streaming.faust_patches.gaps`)."""

from __future__ import annotations

from pipeline.streaming.faust_patches.gaps import STOCK_ADD_GAP, _add_gap
from pipeline.streaming.faust_patches.offsets import STOCK_NEW_OFFSET, _new_offset
from tests.unit.faust_patches.fakes import consumer_state as _consumer_state


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
