"""Readiness checks (``GET /readyz``): bounded in time, shared by concurrent probes, remembered
for a moment, and saying what failed."""

from __future__ import annotations

import asyncio

from pipeline.domain.failures import Unavailable
from pipeline.services.readiness import Check, readiness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """Counts its calls; fails with ``error`` or hangs when told to."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: Exception | None = None
        self.hang = False
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        await self.release.wait()
        if self.error is not None:
            raise self.error


async def test_an_outcome_is_remembered_for_a_moment_then_checked_again() -> None:
    probe, clock = Probe(), Clock()
    probe.release.set()
    check = Check("database", probe, remember=1.0, clock=clock)
    assert (await check.outcome()).ok
    clock.now += 0.5
    assert (await check.outcome()).ok
    assert probe.calls == 1
    probe.error = Unavailable("the database is unavailable (ConnectionRefusedError)")
    clock.now += 0.6
    outcome = await check.outcome()
    assert not outcome.ok
    assert outcome.detail == "the database is unavailable (ConnectionRefusedError)"
    assert probe.calls == 2


async def test_concurrent_probes_share_one_check() -> None:
    probe = Probe()
    check = Check("kafka", probe, remember=0)
    waiting = [asyncio.ensure_future(check.outcome()) for _ in range(5)]
    await asyncio.sleep(0)
    probe.release.set()
    outcomes = await asyncio.gather(*waiting)
    assert all(o.ok for o in outcomes)
    assert probe.calls == 1


async def test_a_check_that_does_not_answer_fails_within_its_timeout() -> None:
    probe = Probe()
    probe.hang = True
    check = Check("kafka", probe, timeout=0.05)
    started = asyncio.get_running_loop().time()
    outcome = await check.outcome()
    assert not outcome.ok and outcome.detail == "no answer within 0.05 s"
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_readiness_names_every_check_and_what_failed() -> None:
    ok, down = Probe(), Probe()
    ok.release.set()
    down.release.set()
    down.error = Unavailable("Kafka is unavailable (KafkaConnectionError)")
    state = await readiness([Check("database", ok), Check("kafka", down)])
    assert not state.ready
    assert state.to_json() == {
        "status": "unavailable",
        "failed": ["kafka"],
        "checks": {"database": "ok", "kafka": "Kafka is unavailable (KafkaConnectionError)"},
    }
    ok_again = await readiness([Check("database", ok)])
    assert ok_again.ready and ok_again.to_json()["status"] == "ready"
