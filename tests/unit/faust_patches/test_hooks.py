"""The commit and revocation hooks (:mod:`pipeline.streaming.faust_patches.hooks`); the commit
hook is also driven through Faust's commit path in ``tests/unit/test_send_failures.py``."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from pipeline.streaming.faust_patches import hooks, offsets


async def test_a_revocation_hands_the_revoked_partition_numbers_to_each_hook_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def stock_revoke(self: Any, revoked: Any) -> None:
        return None

    monkeypatch.setattr(hooks, "_on_revoked", [])
    monkeypatch.setattr(offsets, "STOCK_ON_PARTITIONS_REVOKED", stock_revoke)
    seen: list[set[int]] = []
    hooks.on_revoked(seen.append)
    hooks.on_revoked(seen.append)  # registered twice (a module imported again): runs once
    consumer = SimpleNamespace(_committed_offset=defaultdict(lambda: None))
    await offsets._on_partitions_revoked(consumer, {TP("orders.events", 1), TP("payments", 3)})
    assert seen == [{1, 3}]


async def test_the_commit_hooks_run_before_faust_picks_the_offsets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[str] = []

    async def flush() -> None:
        order.append("flush")

    async def stock_commit_tps(self: Any, tps: Any, start_new_transaction: bool) -> bool:
        order.append("commit")
        return True

    monkeypatch.setattr(hooks, "_before_commit", [])
    monkeypatch.setattr(hooks, "STOCK_COMMIT_TPS", stock_commit_tps)
    hooks.before_commit(flush)
    hooks.before_commit(flush)
    assert await hooks._commit_tps(SimpleNamespace(), [TP("orders.events", 0)], False) is True
    assert order == ["flush", "commit"]


async def _flushes_of_a_hot_key_in_one_commit(monkeypatch: pytest.MonkeyPatch, gated: bool) -> int:
    """An agent writing one hot key per event, and a flush shaped like
    ``pipeline.streaming.versions.flush``: it sends again whatever was written while it awaited
    the producer (here each send waits 2 ms for its partition's previous batch to drain)."""
    import asyncio

    dirty: set[str] = set()
    sends: list[str] = []

    async def flush() -> None:
        while dirty:
            keys = sorted(dirty)
            dirty.clear()
            for key in keys:
                sends.append(key)
                await asyncio.sleep(0.002)

    async def stock_commit_tps(self: Any, tps: Any, start_new_transaction: bool) -> bool:
        return True

    async def agent() -> None:
        while True:
            if gated:
                await hooks.commit_gate()
            dirty.add("hot-sku")
            await asyncio.sleep(0.0005)  # the rest of the event's work

    monkeypatch.setattr(hooks, "_before_commit", [])
    monkeypatch.setattr(hooks, "STOCK_COMMIT_TPS", stock_commit_tps)
    hooks.before_commit(flush)
    running = asyncio.ensure_future(agent())
    await asyncio.sleep(0.01)
    dirty.update(f"cold-sku-{n}" for n in range(20))  # a commit's worth of other keys
    try:
        await asyncio.wait_for(hooks._commit_tps(SimpleNamespace(), [], False), 2)
    except TimeoutError:
        pass  # the ungated flush may never end while the agent keeps writing
    finally:
        running.cancel()
    return sends.count("hot-sku")


async def test_the_agents_take_no_new_event_while_the_commit_hooks_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fault bit: without the gate, the hot key is sent again and again in one commit.
    assert await _flushes_of_a_hot_key_in_one_commit(monkeypatch, gated=False) > 10
    # With it, once, and once more for the event in progress when the flush began.
    assert await _flushes_of_a_hot_key_in_one_commit(monkeypatch, gated=True) <= 2


async def test_the_gate_is_open_outside_a_commit_and_after_a_failed_hook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    async def failing() -> None:
        raise RuntimeError("refused")

    monkeypatch.setattr(hooks, "_before_commit", [])
    hooks.before_commit(failing)
    await asyncio.wait_for(hooks.commit_gate(), 0.1)
    with pytest.raises(RuntimeError):
        await hooks._commit_tps(SimpleNamespace(), [], False)
    await asyncio.wait_for(hooks.commit_gate(), 0.1)  # open again: the agents go on
