"""No seek for a partition without a committed offset
(:mod:`pipeline.streaming.faust_patches.seek`)."""

from __future__ import annotations

from typing import Any

from pipeline.streaming.faust_patches.seek import _seek_to_committed


class _AioConsumer:
    """aiokafka's seek_to_committed: seeks only partitions whose committed offset is > 0."""

    def __init__(self, committed: dict[str, int | None]) -> None:
        self.committed = committed
        self.positions: dict[str, int | str] = {tp: 5 for tp in committed}  # left by a fetch

    async def seek_to_committed(self) -> dict[str, int | None]:
        for tp, offset in self.committed.items():
            if offset and offset > 0:
                self.positions[tp] = offset
        return dict(self.committed)

    async def seek_to_beginning(self, *tps: str) -> None:
        for tp in tps:
            self.positions[tp] = "beginning"


class _ConsumerThread:
    def __init__(self, consumer: _AioConsumer) -> None:
        self.consumer = consumer

    def _ensure_consumer(self) -> _AioConsumer:
        return self.consumer

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return await fun(*args)


async def test_fausts_seek_leaves_an_uncommitted_partition_where_the_fetch_left_it() -> None:
    consumer = _AioConsumer({"p0": None, "p1": 12, "p2": 0})
    await _ConsumerThread(consumer).consumer.seek_to_committed()  # what Faust's seek amounts to
    assert consumer.positions == {"p0": 5, "p1": 12, "p2": 5}  # p0, p2: records 0-4 skipped


async def test_the_fixed_seek_sends_uncommitted_partitions_to_their_beginning() -> None:
    consumer = _AioConsumer({"p0": None, "p1": 12, "p2": 0})
    committed = await _seek_to_committed(_ConsumerThread(consumer))
    assert committed == {"p0": None, "p1": 12, "p2": 0}  # Faust's bookkeeping is unchanged
    assert consumer.positions == {"p0": "beginning", "p1": 12, "p2": "beginning"}


def test_the_app_installs_the_seek_fix() -> None:
    import faust.transport.drivers.aiokafka as faust_aiokafka

    from pipeline.app import app  # noqa: F401 - building the app installs the fixes

    assert faust_aiokafka.AIOKafkaConsumerThread.seek_to_committed is _seek_to_committed
