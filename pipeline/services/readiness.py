"""Readiness for traffic: whether the dependencies a request needs answer now.

``GET /readyz`` asks :func:`readiness` over a few :class:`Check` s (the database, Kafka, the
worker's own services started). It says nothing of partitions or tables, so a rebalance never
takes a worker out of a load balancer: order intake needs the database only, and table reads
say ``503 rebalancing`` themselves while partitions move (``GET /readyz/tables`` is the probe
for those).

A probe arrives every few seconds from every orchestrator and load balancer in front of the
worker, so each check is bounded in time (an unreachable host that drops packets answers
"no answer within 2 s", not after a connect timeout) and its outcome is remembered for a
second: concurrent and back-to-back probes share one round trip.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from pipeline.domain.failures import Unavailable

# Below an orchestrator's usual probe timeout (set it to 3 s or more, see the README's Deploy).
CHECK_TIMEOUT_SECONDS = 2.0
# How long an outcome stands before the next probe checks again.
REMEMBER_SECONDS = 1.0


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str  # "ok", or what failed (never a host, user or password)


class Check:
    """One dependency's check: ``probe()`` returns when it answers and raises
    :class:`Unavailable` when it cannot; a probe that takes longer than ``timeout`` fails."""

    def __init__(
        self,
        name: str,
        probe: Callable[[], Awaitable[None]],
        *,
        timeout: float = CHECK_TIMEOUT_SECONDS,
        remember: float = REMEMBER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._probe = probe
        self._timeout = timeout
        self._remember = remember
        self._clock = clock
        self._last: tuple[float, Outcome] | None = None
        self._running: asyncio.Future[Outcome] | None = None

    async def outcome(self) -> Outcome:
        if self._last is not None and self._clock() - self._last[0] < self._remember:
            return self._last[1]
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        # Shielded: a caller that goes away (its client hung up) does not cancel the others'.
        return await asyncio.shield(self._running)

    async def _run(self) -> Outcome:
        try:
            await asyncio.wait_for(self._probe(), self._timeout)
            outcome = Outcome(True, "ok")
        except TimeoutError:
            outcome = Outcome(False, f"no answer within {self._timeout:g} s")
        except Unavailable as exc:
            outcome = Outcome(False, str(exc))
        finally:
            self._running = None
        self._last = (self._clock(), outcome)
        return outcome


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, str]  # check name -> "ok" or what failed

    def to_json(self) -> dict[str, object]:
        failed = [name for name, detail in self.checks.items() if detail != "ok"]
        return {"status": "ready" if self.ready else "unavailable", "failed": failed,
                "checks": self.checks}  # fmt: skip


async def readiness(checks: Sequence[Check]) -> Readiness:
    """Every check, run together."""
    outcomes = await asyncio.gather(*(check.outcome() for check in checks))
    return Readiness(
        all(o.ok for o in outcomes),
        {check.name: o.detail for check, o in zip(checks, outcomes, strict=True)},
    )
