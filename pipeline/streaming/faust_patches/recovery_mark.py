"""Persisted changelog offset jumping over another worker's writes (faust-streaming 0.15.3,
``Collection._on_changelog_sent``): each acknowledged changelog write records its offset as
"applied up to here" in the local store, and recovery resumes reading from that mark. A worker
frozen past its session timeout (a zombie) loses its partitions; another worker writes the
changelog meanwhile; when the zombie wakes, its buffered writes are acknowledged at the end of
the changelog and move its mark past the other worker's records, so when it gets the partition
back its recovery skips them and the table misses those updates for good (found by the
SIGSTOP scenario: half of two customers' orders missing from their stats).
:func:`_on_changelog_sent` keeps the mark when an acknowledged offset is not the next one after
it — somebody else wrote in between — so the next recovery reads those records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import faust.tables.base as faust_tables

log = logging.getLogger(__name__)

STOCK_ON_CHANGELOG_SENT = faust_tables.Collection._on_changelog_sent


def _on_changelog_sent(self: Any, fut: Any) -> None:
    """Faust's ``_on_changelog_sent``, but never moving the persisted offset over records
    this worker did not write (and so never applied)."""
    if self.app.in_transaction:
        STOCK_ON_CHANGELOG_SENT(self, fut)
        return
    res = fut.result()
    move_recovery_mark(self, res.topic_partition, (res.offset,))


def move_recovery_mark(table: Any, tp: Any, offsets: Iterable[int]) -> None:
    """Move ``table``'s recovery mark of ``tp`` over its acknowledged changelog ``offsets``, in
    offset order, as the fixed ``_on_changelog_sent`` does one by one: never over records this
    worker did not write. Reads and writes the mark once.

    A partition's acknowledgements come in offset order as long as one path sends its records:
    aiokafka keeps one batch per partition in flight and resolves a batch's records in order. So
    every write of a table goes one way (``pipeline.streaming.versions`` for ours, deletions
    included): a record sent through Faust's buffer is acknowledged through more callbacks than one
    sent directly, and an order's write at n with its deletion at n + 1 reached this rule as n + 1,
    then n, leaving the mark at n for good (a warning per acknowledgement after it, and every
    recovery read the changelog again from there)."""
    before = mark = table.data.persisted_offset(tp)
    for offset in sorted(offsets):
        if mark is not None and offset > mark + 1:
            log.warning(
                "%s: changelog %s has records %d..%d this worker did not write; keeping the "
                "recovery mark at %d so they are read on the next recovery",
                table.name, tp, mark + 1, offset - 1, mark,
            )  # fmt: skip
            continue
        mark = offset
    if mark is not None and mark != before:
        table.data.set_persisted_offset(tp, mark)


def install() -> None:
    faust_tables.Collection._on_changelog_sent = _on_changelog_sent  # type: ignore[method-assign]
