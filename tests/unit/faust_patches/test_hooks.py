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
