"""The record hand-over in four tasks, and the inline one that replaces it
(:mod:`pipeline.streaming.faust_patches.handover`)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from pipeline.streaming.faust_patches.handover import STOCK_WAIT_FIRST, _wait_first


def _fetcher_side() -> Any:
    """What ``wait_first`` reads of a consumer: its suspend flag and mode's service flags."""
    from mode.utils.locks import Event as ModeEvent

    return SimpleNamespace(suspend_flow=asyncio.Event(), _stopped=ModeEvent(),
                           _crashed=ModeEvent(), loop=asyncio.get_running_loop())  # fmt: skip


async def test_fausts_hand_over_runs_four_tasks_per_record() -> None:
    """Pins the cost: the stock call wraps the hand-over in a task of its own (and three more)."""
    consumer, tasks = _fetcher_side(), []

    async def deliver() -> str:
        tasks.append(asyncio.current_task())
        return "queued"

    result = await STOCK_WAIT_FIRST(consumer, deliver(), consumer.suspend_flow.wait())
    assert result.results == ["queued"] and tasks[0] is not asyncio.current_task()


async def test_the_hand_over_runs_inline_and_leaves_no_waiter() -> None:
    consumer, tasks = _fetcher_side(), []

    async def deliver() -> str:
        await asyncio.sleep(0)
        tasks.append(asyncio.current_task())
        return "queued"

    result = await _wait_first(consumer, deliver(), consumer.suspend_flow.wait())
    assert (result.results, result.stopped) == (["queued"], False)
    assert tasks == [asyncio.current_task()]
    assert not consumer.suspend_flow._waiters and not consumer._stopped._waiters


async def test_a_blocked_hand_over_is_abandoned_when_the_flow_is_suspended() -> None:
    consumer, seen = _fetcher_side(), []

    async def deliver() -> None:  # the agent's queue is full
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    asyncio.get_running_loop().call_later(0.05, consumer.suspend_flow.set)
    result = await asyncio.wait_for(
        _wait_first(consumer, deliver(), consumer.suspend_flow.wait()), 2
    )
    assert result.stopped and seen == ["cancelled"]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the fetcher's task goes on
    await asyncio.sleep(0.01)


async def test_a_blocked_hand_over_is_abandoned_when_the_consumer_stops() -> None:
    consumer = _fetcher_side()
    asyncio.get_running_loop().call_later(0.05, consumer._stopped.set)
    result = await asyncio.wait_for(_wait_first(
        consumer, asyncio.Event().wait(), consumer.suspend_flow.wait()), 2)  # fmt: skip
    assert result.stopped


async def test_cancelling_the_fetcher_still_cancels_it() -> None:
    consumer = _fetcher_side()
    fetcher = asyncio.ensure_future(
        _wait_first(consumer, asyncio.Event().wait(), consumer.suspend_flow.wait())
    )
    await asyncio.sleep(0.01)
    fetcher.cancel()
    await asyncio.wait([fetcher])
    assert fetcher.cancelled()
    assert not consumer.suspend_flow._waiters


async def test_with_the_flow_already_suspended_faust_decides() -> None:
    consumer = _fetcher_side()
    consumer.suspend_flow.set()

    async def deliver() -> str:
        await asyncio.Event().wait()
        return "never"

    result = await _wait_first(consumer, deliver(), consumer.suspend_flow.wait())
    assert result.results == [True]  # the stock path: the suspend flag won


def test_the_app_installs_the_inline_hand_over() -> None:
    import faust.transport.consumer as faust_consumer

    import pipeline.app  # noqa: F401 - installs the fixes

    assert faust_consumer.Consumer.wait_first is _wait_first
