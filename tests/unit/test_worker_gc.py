"""The worker's garbage-collector tuning (pipeline.streaming.worker): thresholds and the start-up
freeze."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pipeline.settings import SettingsError, load_settings
from pipeline.streaming.worker import Worker, freeze_startup, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


def test_the_young_threshold_defaults_to_50000_and_is_bounded() -> None:
    assert load_settings({}).gc_young_threshold == 50_000
    assert load_settings({"PIPELINE_GC_YOUNG_THRESHOLD": "0"}).gc_young_threshold == 0
    with pytest.raises(SettingsError, match="PIPELINE_GC_YOUNG_THRESHOLD"):
        load_settings({"PIPELINE_GC_YOUNG_THRESHOLD": "-1"})


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_sets_only_the_youngest_generation() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(50_000)
    assert gc.get_threshold() == (50_000, 10, 10)


@pytest.mark.usefixtures("restore_gc")
def test_zero_leaves_pythons_collector_alone() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(0)
    freeze_startup(0)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("restore_gc")
def test_freeze_exempts_what_is_alive_and_later_garbage_is_still_collected() -> None:
    kept = [[n] for n in range(10)]
    freeze_startup(50_000)
    assert gc.get_freeze_count() > len(kept)
    frozen = {id(x) for x in gc.get_objects()}
    assert not any(id(x) in frozen for x in kept)  # out of the collector's sight

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle made after start-up
    del a, b
    assert gc.collect() >= 2  # still found and freed


@pytest.mark.usefixtures("restore_gc")
async def test_the_worker_applies_the_tuning_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the hooks Faust's worker calls: its first start, and the app being ready."""
    import faust

    from pipeline.app import settings

    async def nothing(self: object) -> None:
        return None

    monkeypatch.setattr(faust.Worker, "on_first_start", nothing)
    monkeypatch.setattr(faust.Worker, "on_startup_finished", nothing)
    gc.set_threshold(700, 10, 10)
    worker = Worker.__new__(Worker)
    await worker.on_first_start()
    assert gc.get_threshold()[0] == settings.gc_young_threshold == 50_000
    assert gc.get_freeze_count() == 0
    await worker.on_startup_finished()
    assert gc.get_freeze_count() > 0
