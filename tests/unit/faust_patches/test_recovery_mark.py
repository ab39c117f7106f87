"""The recovery mark that jumped over another worker's changelog writes
(:mod:`pipeline.streaming.faust_patches.recovery_mark`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pipeline.streaming.faust_patches.recovery_mark import _on_changelog_sent


class _Store:
    def __init__(self, persisted: int | None) -> None:
        self.persisted = persisted

    def persisted_offset(self, tp: Any) -> int | None:
        return self.persisted

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted = offset


def _ack(table: Any, offset: int) -> None:
    result = SimpleNamespace(topic_partition=("customer_stats-changelog", 0), offset=offset)
    _on_changelog_sent(table, SimpleNamespace(result=lambda: result))


def test_the_recovery_mark_never_jumps_over_records_another_worker_wrote() -> None:
    store = _Store(persisted=18)
    table = SimpleNamespace(app=SimpleNamespace(in_transaction=False), data=store,
                            name="customer_stats")  # fmt: skip
    _ack(table, 19)  # our own next write: the mark moves
    assert store.persisted == 19
    _ack(table, 96)  # a zombie's late write, after 20..95 written by the new owner
    assert store.persisted == 19  # recovery will read 20..95
    fresh = _Store(persisted=None)
    _ack(SimpleNamespace(app=table.app, data=fresh, name="t"), 7)  # nothing known yet
    assert fresh.persisted == 7
