"""Fixes for faust-streaming bugs that break our guarantees (and costs), each small, tested
and removable: one module per upstream bug, whose docstring says what goes wrong, how it was
found and what the fix does (``docs/faust-patches.md`` lists them all). Each pins the bug in
``tests/unit/faust_patches/``; :func:`install` installs them all.

- :mod:`.producer_buffer`: the producer buffer's flush returns with changelog records unsent
  (faust-streaming 0.15.3).
- :mod:`.offsets`: an offset committed past one that was never acknowledged, or with no known
  head (faust-streaming 0.15.3).
- :mod:`.gaps`: offsets skipped in a fetch counted as processed (faust-streaming 0.15.3).
- :mod:`.seek`: no seek for a partition without a committed offset (faust-streaming 0.15.3).
- :mod:`.recovery_mark`: the persisted changelog offset jumps over another worker's writes
  (faust-streaming 0.15.3).
- :mod:`.failed_sends`: offsets committed over records the broker refused (faust-streaming
  0.15.3).
- :mod:`.livelock`: the livelock check reads a position being reset and crashes the consumer
  (faust-streaming 0.15.3 with aiokafka 0.14.0).
- :mod:`.flow`: resuming an active flow clears the agents' queues (faust-streaming 0.15.3,
  mode-streaming 0.7.1).
- :mod:`.assignment`: a worker that joins gets no partitions (faust-streaming 0.15.3;
  faust-streaming#93).
- :mod:`.dropped_messages`: a rebalance waits for good on a message no agent will handle
  (faust-streaming 0.15.3).
- :mod:`.header_keys`: a record whose header key is not UTF-8 stops its partition for good
  (aiokafka 0.14.0).
- :mod:`.handover`: a cost, four tasks per record handed to the agents (faust-streaming 0.15.3).
- :mod:`.producer_lookup`: a cost, three loop turns per record published (faust-streaming
  0.15.3).
- :mod:`.fetch`: a cost, a fetch answered per record under load (faust-streaming 0.15.3).
- :mod:`.restore`: a cost, tables restored from their changelogs one record at a time
  (faust-streaming 0.15.3).
- :mod:`.batches`: a cost, an agent's stream handled and acknowledged per event, a turn of the
  event loop each (faust-streaming 0.15.3).

:mod:`.hooks` is no fix: it runs the flush of the staged table values before each offset commit
and the forgetting of revoked partitions after a revocation (:func:`before_commit`,
:func:`on_revoked`), and tells the metrics how each commit went (:func:`after_commit`).
:mod:`.guard` refuses to install the patches over other versions of
faust-streaming and aiokafka than the ones they were tested on.
"""

from __future__ import annotations

from pipeline.streaming.faust_patches import (
    assignment,
    batches,
    dropped_messages,
    failed_sends,
    fetch,
    flow,
    gaps,
    guard,
    handover,
    header_keys,
    hooks,
    livelock,
    offsets,
    producer_buffer,
    producer_lookup,
    recovery_mark,
    restore,
    seek,
)
from pipeline.streaming.faust_patches.batches import Batch, at_batch_end, current_batch
from pipeline.streaming.faust_patches.failed_sends import (
    DeliveryFailed,
    expect_delivery,
    refuse_commits,
    settle_delivery,
    track_delivery,
)
from pipeline.streaming.faust_patches.hooks import after_commit, before_commit, on_revoked
from pipeline.streaming.faust_patches.producer_buffer import DrainingProducerBuffer
from pipeline.streaming.faust_patches.recovery_mark import move_recovery_mark

__all__ = [
    "Batch",
    "DeliveryFailed",
    "DrainingProducerBuffer",
    "after_commit",
    "at_batch_end",
    "before_commit",
    "current_batch",
    "expect_delivery",
    "install",
    "move_recovery_mark",
    "on_revoked",
    "refuse_commits",
    "settle_delivery",
    "track_delivery",
]


def install() -> None:
    """Install the fixes into Faust's classes (idempotent), once the installed faust-streaming
    and aiokafka are the versions they were tested on (:mod:`.guard`)."""
    guard.require_tested_versions()
    flow.install()
    producer_buffer.install()
    offsets.install()
    gaps.install()
    hooks.install()
    seek.install()
    recovery_mark.install()
    failed_sends.install()
    livelock.install()
    header_keys.install()
    handover.install()
    producer_lookup.install()
    fetch.install()
    restore.install()
    batches.install()
    assignment.install()
    dropped_messages.install()
