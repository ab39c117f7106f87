"""The producer buffer's flush that returns with records unsent
(:mod:`pipeline.streaming.faust_patches.producer_buffer`)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust.transport.producer as faust_producer

from pipeline.streaming.faust_patches.producer_buffer import DrainingProducerBuffer

STOCK_BUFFER = DrainingProducerBuffer.__mro__[1]  # Faust's own, whether installed or not


def _record(sent: list[str], name: str, stall: float) -> Any:
    async def publish_message(fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(stall)  # e.g. aiokafka waiting for a partition's metadata
        sent.append(name)

    return SimpleNamespace(message=SimpleNamespace(channel=SimpleNamespace(
        publish_message=publish_message)))  # fmt: skip


async def _flush_with_a_stalled_drain(buffer_class: type) -> list[str]:
    buffer = buffer_class()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    await buffer.start()
    sent: list[str] = []
    try:
        buffer.put(_record(sent, "changelog-1", stall=0.3))
        buffer.put(_record(sent, "changelog-2", stall=0.0))
        await asyncio.sleep(0)  # the drain task takes the first record
        await buffer.flush()
        return list(sent)  # what had left the buffer when flush returned
    finally:
        await asyncio.sleep(0.5)  # let the stock buffer finish, or its stop() raises
        await buffer.stop()


async def test_fausts_flush_returns_with_records_unsent() -> None:
    """Pins the upstream bug: if this starts failing, Faust fixed it and the fix can go."""
    assert STOCK_BUFFER.__module__ == "faust.transport.producer"
    assert await _flush_with_a_stalled_drain(STOCK_BUFFER) == []


async def test_the_draining_buffer_flushes_every_record() -> None:
    assert await _flush_with_a_stalled_drain(DrainingProducerBuffer) == [
        "changelog-1", "changelog-2"]  # fmt: skip


def test_the_app_builds_the_draining_buffer() -> None:
    from pipeline.app import app  # noqa: F401 - building the app installs the fix

    assert faust_producer.ProducerBuffer is DrainingProducerBuffer
