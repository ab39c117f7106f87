"""The lease a worker holds on its partitions (pipeline.streaming.fencing): a record is acted on
only while the last answered heartbeat was sent less than a session timeout ago, and only if it was
fetched in the current group generation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.streaming import fencing

APP = SimpleNamespace(consumer_generation_id=7)


def record(generation: int = 7) -> Any:
    return SimpleNamespace(topic="orders.status", partition=0, offset=12, generation_id=generation)


@pytest.fixture(autouse=True)
def no_lease() -> Iterator[None]:
    fencing.reset()
    yield
    fencing.reset()


def test_without_a_group_there_is_nothing_to_fence() -> None:
    assert fencing.owns(record(), APP, session_timeout=6)


def test_the_lease_holds_for_a_session_timeout_after_the_heartbeat_was_sent() -> None:
    fencing.note_heartbeat(time.monotonic() - 3)
    assert fencing.owns(record(), APP, session_timeout=6)
    fencing.reset()
    fencing.note_heartbeat(time.monotonic() - 12)  # frozen for twice the session timeout
    assert not fencing.owns(record(), APP, session_timeout=6)
    with pytest.raises(fencing.NotOwner, match=r"orders.status\[0\]@12"):
        fencing.check(record(), APP, session_timeout=6)


def test_a_record_from_an_older_generation_is_not_acted_on() -> None:
    fencing.note_heartbeat(time.monotonic())
    assert not fencing.owns(record(generation=6), APP, session_timeout=6)


def test_an_older_heartbeat_never_moves_the_lease_back() -> None:
    now = time.monotonic()
    fencing.note_heartbeat(now)
    fencing.note_heartbeat(now - 10)
    assert fencing.lease_left(6, now=now) == pytest.approx(6 - fencing.MARGIN_SECONDS)


async def test_only_an_answered_heartbeat_extends_the_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter([False, True])

    async def heartbeat(self: Any) -> bool:
        return next(answers)

    monkeypatch.setattr(fencing, "STOCK_DO_HEARTBEAT", heartbeat)
    assert await fencing._do_heartbeat(object()) is False
    assert fencing.lease_left(6) == float("-inf")
    before = time.monotonic()
    assert await fencing._do_heartbeat(object()) is True
    assert fencing.lease_left(6, now=before) >= 6 - fencing.MARGIN_SECONDS
