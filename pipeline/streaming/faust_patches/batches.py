"""Not a bug but a cost on every event, found by profiling ``make bench``: an agent's stream
works per event where the fetcher hands records over in batches.

faust-streaming 0.15.3's stream iteration (``Stream._c_aiter``/``_py_aiter``) gives the event
loop a turn before each event (``await asyncio.sleep(0)``: a select call and every ready
callback of the worker per event) and acknowledges each event on its own as the agent asks for
the next. :func:`_batched_aiter` is the same iteration, event by event as the agent sees it,
but in batches: the events already waiting in the stream's queue (up to :data:`BATCH_MAX`) are
handled one after the other without a turn of the loop in between, and when the queue is empty
(or the batch full) the batch ends: the hooks registered with :func:`at_batch_end` run (the
derived records staged by ``pipeline.streaming.topics.publish`` go to the producer, as one
produce batch per partition), then the batch's events are acknowledged, in order, and the loop
gets its turn.

What Faust guarantees stays: an event is acknowledged only after the agent has asked for the
next one (it was handled), and here also after the batch-end hooks returned, so no offset is
committed over an event whose derived records were not handed to the producer; the check of
the flow and the consumer generation is made per event as Faust makes it (a rebalance skips,
and acknowledges, the events after it); the stream never waits for its next event with an
event unacknowledged, so a rebalance's ``wait_empty`` is not held up. Events are taken from the
queue one at a time, as Faust does, so an agent that crashes leaves the rest queued. A stream
over something other than a channel (``app.stream([...])``) is iterated by Faust's own code.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import faust.streams as faust_streams
from faust.exceptions import Skip
from faust.types import ChannelT, EventT
from mode.utils.futures import maybe_async

STOCK_C_AITER = faust_streams.Stream._c_aiter
STOCK_PY_AITER = faust_streams.Stream._py_aiter

# Events handled before the loop gets a turn and the batch is acknowledged: about as many as
# the fetcher hands over before it yields (100 records), so no batch holds the loop for long.
BATCH_MAX = 200


class Batch:
    """The events one agent has handled since its last batch ended, not acknowledged yet, and
    what the batch-end hooks keep for it (``sends``: records staged for the producer)."""

    __slots__ = ("sends", "size")

    def __init__(self) -> None:
        self.sends: list[Any] = []
        self.size = 0


_current: ContextVar[Batch | None] = ContextVar("pipeline_batch", default=None)
_hooks: list[Callable[[Batch], Awaitable[None]]] = []


def current_batch() -> Batch | None:
    """The batch the current agent's event belongs to (None outside a batched stream)."""
    return _current.get()


def at_batch_end(hook: Callable[[Batch], Awaitable[None]]) -> None:
    """Run ``hook(batch)`` at the end of every batch, before its events are acknowledged."""
    if hook not in _hooks:
        _hooks.append(hook)


async def _processed(value: Any, processors: Any, on_merge: Any, skipped: Any) -> Any:
    """``value`` through the stream's processors and ``on_merge``; ``skipped`` on ``Skip``."""
    try:
        for processor in processors:
            value = await maybe_async(processor(value))
        return await on_merge(value)
    except Skip:
        return skipped


async def _end(batch: Batch, handled: list[tuple[Any, Any]], stream: Any) -> None:
    """The hooks, then the acknowledgements of ``handled`` in order (Faust's ``after``)."""
    for hook in _hooks:
        await hook(batch)
    batch.size = 0
    on_stream_event_out = stream._on_stream_event_out
    on_message_out = stream._on_message_out
    for event, state in handled:
        message = event.message
        last = event.ack()
        tp, offset = message.tp, message.offset
        on_stream_event_out(tp, offset, stream, event, state)
        if last:
            on_message_out(tp, offset, message)
    handled.clear()


async def _batched_aiter(self: Any) -> AsyncIterator[Any]:
    """Faust's stream iteration, in batches (see the module's notes)."""
    channel = self.channel
    if not isinstance(channel, ChannelT):
        async for value in STOCK_PY_AITER(self):
            yield value
        return
    self._finalized = True
    started_by_aiter = await self.maybe_start()
    queue = channel.queue
    errors, empty, quick_get = queue._errors, queue.empty, queue.get_nowait
    slow_get = channel.__anext__
    processors, on_merge, skipped = self._processors, self.on_merge, self._skipped_value
    app = self.app
    flow_active = app.flow_control.is_active
    acking_topics = app.topics.acking_topics
    add_unacked = app.consumer.unacked.add
    on_message_in, on_stream_event_in = self._on_message_in, self._on_stream_event_in
    current_event = faust_streams._current_event
    batch = Batch()
    _current.set(batch)
    handled: list[tuple[Any, Any]] = []
    try:
        while not self.should_stop:
            if handled and (empty() or len(handled) >= BATCH_MAX):
                await _end(batch, handled, self)
            if not handled:
                await asyncio.sleep(0)  # the loop's turn, once a batch (Faust: once an event)
            if errors:
                raise errors.popleft()
            channel_value = quick_get() if not empty() else await slow_get()
            if not isinstance(channel_value, EventT):  # a value put on the channel directly
                self.current_event = None
                value = await _processed(channel_value, processors, on_merge, skipped)
                if value is not skipped and value is not None:
                    self.events_total += 1
                    yield value
                continue
            event = channel_value
            message = event.message
            if not flow_active() or message.generation_id != app.consumer_generation_id:
                handled.append((event, None))  # skipped, and acknowledged, as Faust does
                continue
            if message.topic in acking_topics and not message.tracked:
                message.tracked = True
                add_unacked(message)
                on_message_in(message.tp, message.offset, message)
            state = on_stream_event_in(message.tp, message.offset, self, event)
            current_event.set(weakref.ref(event))
            self.current_event = event
            value = await _processed(event.value, processors, on_merge, skipped)
            try:
                if value is not skipped:
                    self.events_total += 1
                    batch.size += 1
                    yield value
            finally:
                self.current_event = None
                handled.append((event, state))
        if handled:
            await _end(batch, handled, self)
    except StopAsyncIteration:
        # The channel ended (the worker stops): not allowed out of an async generator, where
        # Python makes it a RuntimeError and the agent a crash. Faust returns, and so does this.
        return
    finally:
        if handled:
            # Closed mid-batch (the agent crashed or stops): Faust acknowledges the event the
            # agent was on; these were handled, but their staged records go out first, and when
            # that fails nothing is acknowledged (their offsets are not committed).
            await _end(batch, handled, self)
        self._channel_stop_iteration(channel)
        if started_by_aiter:
            await self.stop()
            self.service_reset()


def install() -> None:
    faust_streams.Stream._c_aiter = _batched_aiter  # type: ignore[method-assign]
    faust_streams.Stream._py_aiter = _batched_aiter  # type: ignore[method-assign]
