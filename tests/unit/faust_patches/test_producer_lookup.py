"""Three loop turns per record published
(:mod:`pipeline.streaming.faust_patches.producer_lookup`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.streaming.faust_patches.producer_lookup import STOCK_GET_PRODUCER, _get_producer


def _steps(coro: Any) -> tuple[int, Any]:
    """Run a coroutine that only yields bare turns of the loop; count them."""
    turns = 0
    try:
        while True:
            assert coro.send(None) is None
            turns += 1
    except StopIteration as done:
        return turns, done.value


@pytest.fixture(autouse=True)
def _loop() -> Iterator[None]:
    """A current loop for the synchronous tests (mode's ``@stampede`` asks for one), whatever
    earlier tests left the thread with (``asyncio.run`` leaves none)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


def _topic_of_a_running_app() -> Any:
    import faust

    app = faust.App(f"fixes-{id(object())}", broker="kafka://127.0.0.1:1")
    app.producer._started.set()  # what a started worker's producer says
    return app.topic("t")


def test_fausts_publish_waits_three_loop_turns_for_a_running_producer() -> None:
    """Pins the cost: mode's @stampede around maybe_start_producer sleeps three times."""
    topic = _topic_of_a_running_app()
    assert _steps(STOCK_GET_PRODUCER(topic)) == (3, topic.app.producer)


def test_the_running_producer_comes_at_once() -> None:
    topic = _topic_of_a_running_app()
    assert _steps(_get_producer(topic)) == (0, topic.app.producer)
