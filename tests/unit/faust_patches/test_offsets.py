"""Offsets committed past one never acknowledged, or with no known head; partitions stuck
behind a lost offset (:mod:`pipeline.streaming.faust_patches.offsets`)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from pipeline.streaming.faust_patches import offsets
from pipeline.streaming.faust_patches.offsets import STOCK_NEW_OFFSET, _new_offset
from tests.unit.faust_patches.fakes import consumer_state as _consumer_state


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
    async def stock_seek(self: Any) -> None:
        self._committed_offset.update({TP("t", 0): 40})  # what the broker holds

    async def earliest(*tps: TP) -> dict[TP, int]:
        return {tp: 7 for tp in tps}

    async def stock_revoke(self: Any, revoked: Any) -> None:
        return None

    monkeypatch.setattr(offsets, "STOCK_PERFORM_SEEK", stock_seek)
    monkeypatch.setattr(offsets, "STOCK_ON_PARTITIONS_REVOKED", stock_revoke)
    committed: dict[TP, int | None] = {}
    consumer = SimpleNamespace(
        _committed_offset=defaultdict(lambda: None, committed),
        assignment=lambda: {TP("t", 0), TP("t", 1)},
        earliest_offsets=earliest,
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True)),
    )
    await offsets._perform_seek(consumer)
    assert consumer._pipeline_heads == {TP("t", 1): 7}
    await offsets._on_partitions_revoked(consumer, {TP("t", 1)})
    assert consumer._pipeline_heads == {}


async def test_a_partition_stuck_behind_a_lost_offset_is_read_again(monkeypatch: Any) -> None:
    clock = [100.0]
    monkeypatch.setattr(offsets.time, "monotonic", lambda: clock[0])
    state, tp = _consumer_state([30, 31], committed=24)  # 24-29 never reached the agents
    sought: list[tuple[TP, int]] = []

    async def seek(partition: TP, offset: int) -> None:
        sought.append((partition, offset))

    state.seek = seek
    assert _new_offset(state, tp) is None
    clock[0] += offsets.STUCK_SECONDS - 1
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
