"""Not a fix: what runs before every offset commit (``pipeline.streaming.versions.flush``: the
table values written since the last one), and after a revocation
(``pipeline.streaming.versions.forget``); ``agents.revenue`` registers its own pair.

Faust offers no hook at either point, so :func:`_commit_tps` wraps its commit of the
acknowledged offsets, and :func:`.offsets._on_partitions_revoked` its revocation.
"""

from __future__ import annotations

import asyncio
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


# Open except while the hooks run: the agents wait at it before they take up their next event
# (:func:`commit_gate`).
_gate: asyncio.Event | None = None
_gate_loop: asyncio.AbstractEventLoop | None = None


def _the_gate() -> asyncio.Event:
    """This event loop's gate (an ``asyncio.Event`` is bound to the loop that first waits on
    it; a worker has one loop, the tests one per test)."""
    global _gate, _gate_loop
    loop = asyncio.get_running_loop()
    if _gate is None or _gate_loop is not loop:
        _gate, _gate_loop = asyncio.Event(), loop
        _gate.set()
    return _gate


async def commit_gate() -> None:
    """Wait while the hooks before a commit run; return at once otherwise.

    The flush must send every value written by an event acknowledged before the commit picks
    its offsets, so it flushes again what the agents write while it awaits the producer. A
    large value waits for its partition's previous batch to drain, the agents meanwhile write
    the hot key again, and the flush went round and round: the soak's hottest SKU, 500 KB, was
    encoded and sent many times a commit (3.5 GB of changelog in one run). Agents that wait
    here take up no new event, so a flush ends after what is in progress."""
    gate = _gate
    if gate is not None and not gate.is_set() and _gate_loop is asyncio.get_running_loop():
        await gate.wait()


async def _commit_tps(self: Any, tps: Any, start_new_transaction: bool) -> bool:
    """Faust's commit of the offsets acknowledged, after the hooks (the staged table values
    sent). Faust picks the offsets at the start of its ``_commit_tps``, with no await between
    the hooks' end and that: no event acknowledged after the flush is committed by it. The
    agents wait at :func:`commit_gate` while the hooks run."""
    gate = _the_gate()
    gate.clear()
    try:
        for hook in _before_commit:
            await hook()
    finally:
        gate.set()  # the agents run again from the next await on, after the offsets are picked
    did_commit: bool = await STOCK_COMMIT_TPS(self, tps, start_new_transaction)
    return did_commit


def install() -> None:
    faust_consumer.Consumer._commit_tps = _commit_tps  # type: ignore[method-assign]
