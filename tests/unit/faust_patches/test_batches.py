"""An agent's stream handled per event, and in batches
(:mod:`pipeline.streaming.faust_patches.batches`): Faust's own iteration over a real stream of
the app, and the batched one that replaces it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from faust.events import Event
from faust.types.tuples import Message

from pipeline.app import app
from pipeline.streaming.faust_patches import batches

Iteration = Callable[[Any], AsyncIterator[Any]]


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The batch-end hooks, only the test's own."""
    registered: list[Any] = []
    monkeypatch.setattr(batches, "_hooks", registered)
    app.finalize()
    app.conf.store = "memory://"
    app.flow_control.resume()
    return registered


def _stream(count: int) -> tuple[Any, list[Message]]:
    """A stream of the app over a channel holding ``count`` events, as the fetcher queues them."""
    stream = app.stream(app.channel())
    messages = []
    for offset in range(count):
        message = Message("orders.events", 0, offset, 0.0, 0, [], b"k", b"v", None,
                          generation_id=app.consumer_generation_id)  # fmt: skip
        message.incref()
        stream.channel.queue.put_nowait(Event(app, b"k", offset, [], message))
        messages.append(message)
    return stream, messages


async def _take(iteration: AsyncIterator[Any]) -> Any:
    return await asyncio.wait_for(iteration.__anext__(), 2)


async def _waiting(iteration: AsyncIterator[Any]) -> asyncio.Future[Any]:
    """Ask for the next event when there is none: the iteration waits for it."""
    waiting = asyncio.ensure_future(iteration.__anext__())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    return waiting


async def test_fausts_stream_acknowledges_each_event_as_the_next_is_asked_for(
    hooks: list[Any],
) -> None:
    """Pins Faust's per-event iteration: the first event is acknowledged when the agent asks for
    the second, whatever is queued behind it."""
    stream, messages = _stream(3)
    iteration = batches.STOCK_PY_AITER(stream)
    assert await _take(iteration) == 0
    assert await _take(iteration) == 1
    assert [m.acked for m in messages] == [True, False, False]
    await iteration.aclose()


async def test_a_batch_is_acknowledged_after_its_hooks_once_the_queue_is_empty(
    hooks: list[Any],
) -> None:
    stream, messages = _stream(3)
    seen: list[tuple[int, list[bool]]] = []

    async def hook(batch: batches.Batch) -> None:
        seen.append((batch.size, [m.acked for m in messages]))

    hooks.append(hook)
    iteration = batches._batched_aiter(stream)
    assert [await _take(iteration) for _ in range(3)] == [0, 1, 2]
    assert [m.acked for m in messages] == [False, False, False]
    waiting = await _waiting(iteration)  # the queue is empty: the batch ends
    assert seen == [(3, [False, False, False])]
    assert [m.acked for m in messages] == [True, True, True]
    waiting.cancel()


async def test_a_batch_ends_at_its_maximum_size(
    hooks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batches, "BATCH_MAX", 2)
    stream, messages = _stream(3)
    iteration = batches._batched_aiter(stream)
    assert [await _take(iteration) for _ in range(3)] == [0, 1, 2]
    assert [m.acked for m in messages] == [True, True, False]
    await iteration.aclose()  # closed mid-batch: what was handled is acknowledged
    assert [m.acked for m in messages] == [True, True, True]


async def test_a_failing_hook_leaves_its_batch_unacknowledged(hooks: list[Any]) -> None:
    async def refused(batch: batches.Batch) -> None:
        raise RuntimeError("refused")

    hooks.append(refused)
    stream, messages = _stream(2)
    iteration = batches._batched_aiter(stream)
    assert [await _take(iteration) for _ in range(2)] == [0, 1]
    with pytest.raises(RuntimeError):
        await _take(iteration)
    assert [m.acked for m in messages] == [False, False]


async def test_events_of_a_suspended_flow_are_skipped_and_acknowledged(
    hooks: list[Any],
) -> None:
    stream, messages = _stream(2)
    app.flow_control.suspend()
    try:
        iteration = batches._batched_aiter(stream)
        waiting = await _waiting(iteration)  # nothing handed to the agent
        assert [m.acked for m in messages] == [True, True]
        waiting.cancel()
    finally:
        app.flow_control.resume()


async def test_the_current_batch_is_known_only_inside_the_stream(hooks: list[Any]) -> None:
    stream, _ = _stream(1)
    iteration = batches._batched_aiter(stream)
    assert batches.current_batch() is None
    await iteration.__anext__()  # in this task, as an agent's ``async for`` runs it
    batch = batches.current_batch()
    assert batch is not None and batch.size == 1
    await iteration.aclose()


async def test_the_iteration_ends_when_its_channel_does(hooks: list[Any]) -> None:
    """As Faust's: a channel that stops iterating ends the stream, not the agent with a crash."""
    stream, messages = _stream(1)

    async def ended() -> Any:
        raise StopAsyncIteration

    stream.channel.__anext__ = ended  # asked once its queue is empty
    iteration = batches._batched_aiter(stream)
    assert await _take(iteration) == 0
    with pytest.raises(StopAsyncIteration):
        await _take(iteration)
    assert messages[0].acked
