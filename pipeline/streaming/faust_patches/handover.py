"""Not a bug but a cost on every event, found by profiling ``make bench``.

A record's hand-over costs four tasks (faust-streaming 0.15.3, ``Consumer._drain_messages``):
the fetcher hands each record to the agents' queues through
``Service.wait_first(callback(message), suspend_flow.wait())``, which wraps the hand-over, the
suspend flag, and the consumer's stopped and crashed flags in a task each, waits on all four
and cancels three: about a fifth of a busy worker's CPU. :func:`_wait_first` hands the record
over inline in the fetcher's task and arranges to be interrupted when one of the three flags
is set, as ``asyncio.timeout`` does (cancel the task, then ``uncancel`` and swallow only its
own cancellation). The outcome is Faust's: the hand-over completes, or it is abandoned when
the flow is suspended or the consumer stops.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust.transport.consumer as faust_consumer
from mode.services import WaitResults

STOCK_WAIT_FIRST = faust_consumer.Consumer.wait_first
SUSPEND_WAIT_CODE = asyncio.Event.wait.__code__


async def _wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:  # noqa: ASYNC109
    """Faust's ``wait_first``, with the fetcher's per-record call handed over inline."""
    if timeout is None and len(coros) == 2 and _waits_on(coros[1], self.suspend_flow):
        flags = (self.suspend_flow, self._stopped, self._crashed)
        if not any(flag.is_set() for flag in flags):
            coros[1].close()
            return await _hand_over(coros[0], flags)
    return await STOCK_WAIT_FIRST(self, *coros, timeout=timeout)


def _waits_on(coro: Any, event: asyncio.Event) -> bool:
    """Is ``coro`` an unstarted ``event.wait()``?"""
    frame = getattr(coro, "cr_frame", None)
    return (
        getattr(coro, "cr_code", None) is SUSPEND_WAIT_CODE
        and frame is not None
        and frame.f_locals.get("self") is event
    )


async def _hand_over(deliver: Any, flags: tuple[Any, ...]) -> WaitResults:
    """Await ``deliver`` in this task; abandon it (cancelled) when one of ``flags`` is set."""
    task = asyncio.current_task()
    assert task is not None
    waiter = task.get_loop().create_future()
    state = {"finished": False, "interrupted": False}

    def interrupt(_: asyncio.Future[Any]) -> None:
        if not state["finished"]:
            state["interrupted"] = True
            task.cancel()

    waiter.add_done_callback(interrupt)
    for flag in flags:  # what Event.wait() does, without a task of its own
        flag._waiters.append(waiter)
    try:
        result = await deliver
    except asyncio.CancelledError:
        if state["interrupted"] and task.uncancel() == 0:
            return WaitResults([], [], True)
        raise
    finally:
        state["finished"] = True
        for flag in flags:
            flag._waiters.remove(waiter)  # set() and clear() leave their waiters in place
    if state["interrupted"]:  # the delivery finished although it was told to stop
        task.uncancel()
    return WaitResults([deliver], [result], False)


def install() -> None:
    faust_consumer.Consumer.wait_first = _wait_first  # type: ignore[method-assign]
