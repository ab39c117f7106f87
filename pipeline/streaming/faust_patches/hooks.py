"""Not a fix: what runs before every offset commit (``pipeline.streaming.versions.flush``: the
table values written since the last one), and after a revocation
(``pipeline.streaming.versions.forget``); ``agents.revenue`` registers its own pair.

Faust offers no hook at either point, so :func:`_commit_tps` wraps its commit of the
acknowledged offsets, and :func:`.offsets._on_partitions_revoked` its revocation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust.transport.consumer as faust_consumer

STOCK_COMMIT_TPS = faust_consumer.Consumer._commit_tps

_before_commit: list[Callable[[], Awaitable[None]]] = []
_on_revoked: list[Callable[[set[int]], None]] = []


def before_commit(hook: Callable[[], Awaitable[None]]) -> None:
    if hook not in _before_commit:
        _before_commit.append(hook)


def on_revoked(hook: Callable[[set[int]], None]) -> None:
    if hook not in _on_revoked:
        _on_revoked.append(hook)


def revoked(partitions: set[int]) -> None:
    """Run the revocation hooks: ``partitions`` were taken away from this worker."""
    for hook in _on_revoked:
        hook(partitions)


async def _commit_tps(self: Any, tps: Any, start_new_transaction: bool) -> bool:
    """Faust's commit of the offsets acknowledged, after the hooks (the staged table values
    sent). Faust picks the offsets at the start of its ``_commit_tps``, with no await between
    the hooks' end and that: no event acknowledged after the flush is committed by it."""
    for hook in _before_commit:
        await hook()
    did_commit: bool = await STOCK_COMMIT_TPS(self, tps, start_new_transaction)
    return did_commit


def install() -> None:
    faust_consumer.Consumer._commit_tps = _commit_tps  # type: ignore[method-assign]
