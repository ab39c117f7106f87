"""Not a fix: what runs before every offset commit (``pipeline.streaming.versions.flush``: the
table values written since the last one), and after a revocation
(``pipeline.streaming.versions.forget``); ``agents.revenue`` registers its own pair. And what
hears how each commit to the group's coordinator went (the metrics: ``pipeline.bootstrap``).

Faust offers no hook at these points, so :func:`_commit_tps` wraps its commit of the
acknowledged offsets, :func:`.offsets._on_partitions_revoked` its revocation, and
:func:`_timed_commit` the aiokafka consumer's commit itself (Faust's driver answers False for
a commit the coordinator refused, after a rebalance or on an error it then crashes on; it
runs in the consumer's thread, so an observer must be thread-safe).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust.transport.consumer as faust_consumer
import faust.transport.drivers.aiokafka as faust_aiokafka

STOCK_COMMIT_TPS = faust_consumer.Consumer._commit_tps
STOCK_THREAD_COMMIT = faust_aiokafka.AIOKafkaConsumerThread._commit

_before_commit: list[Callable[[], Awaitable[None]]] = []
_on_revoked: list[Callable[[set[int]], None]] = []
_after_commit: list[Callable[[float, bool], None]] = []


def before_commit(hook: Callable[[], Awaitable[None]]) -> None:
    if hook not in _before_commit:
        _before_commit.append(hook)


def on_revoked(hook: Callable[[set[int]], None]) -> None:
    if hook not in _on_revoked:
        _on_revoked.append(hook)


def after_commit(observer: Callable[[float, bool], None]) -> None:
    """Call ``observer(seconds, committed)`` after each commit of offsets to the coordinator."""
    if observer not in _after_commit:
        _after_commit.append(observer)


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


async def _timed_commit(self: Any, offsets: Mapping[Any, int]) -> bool:
    """The driver's commit to the coordinator, timed, its outcome handed to the observers."""
    started = time.perf_counter()
    committed: bool = await STOCK_THREAD_COMMIT(self, offsets)
    seconds = time.perf_counter() - started
    for observer in _after_commit:
        observer(seconds, committed)
    return committed


def install() -> None:
    faust_consumer.Consumer._commit_tps = _commit_tps  # type: ignore[method-assign]
    faust_aiokafka.AIOKafkaConsumerThread._commit = _timed_commit  # type: ignore[method-assign]
