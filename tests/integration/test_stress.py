"""The rebalance-churn stress scenario (``pytest -m stress``; not part of ``make test``).

Workers join and leave the group round after round under load while two busy processes
compete for the cores: some leave cleanly, some are SIGKILLed, some are stopped before their
join has finished, and the survivors are restarted on their own state. This is the regime that
found Faust's hand-over, seek, livelock and assignment bugs (``pipeline.streaming.faust_patches``);
each round moves partitions twice while events, changelog writes and commits are in flight.

The judge is the independent checker (:mod:`tests.integration.history`: the database, the topics
read with a plain consumer, the history of requests and answers), then the workers' reconcile
must agree, then a worker with no state of its own rebuilds every table from the changelogs and
is judged again. The fault bit: the extra workers took partitions and handled events, and
partitions moved in every round.

``STRESS_ROUNDS`` (6) sets the number of rounds; see docs/testing.md for how long it takes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.integration.faults import Scenario, events_handled
from tests.integration.workers import WorkerFactory, migrated_workers, wait_for

pytestmark = pytest.mark.stress

ROUNDS = int(os.environ.get("STRESS_ROUNDS", "6"))


@pytest.fixture
def factory(kafka_bootstrap: str, tmp_path: Path, test_id: str, postgres_url: str
            ) -> Iterator[WorkerFactory]:  # fmt: skip
    with migrated_workers(kafka_bootstrap, tmp_path, test_id, postgres_url) as workers:
        yield workers


def _burn(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


class Contention:
    """One busy process per core for as long as the scenario lasts (at most ``seconds``)."""

    def __init__(self, seconds: float) -> None:
        stop_at = time.monotonic() + seconds
        self.procs = [multiprocessing.get_context("spawn").Process(target=_burn, args=(stop_at,))
                      for _ in range(os.cpu_count() or 2)]  # fmt: skip

    def __enter__(self) -> Contention:
        for proc in self.procs:
            proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.join(10)


def test_rebalance_churn_under_cpu_contention_keeps_every_invariant(
    factory: WorkerFactory,
) -> None:
    scenario = Scenario(f"stress: churn x{ROUNDS} + CPU contention", factory)
    live = scenario.start_pair()
    scenario.run_load(lambda: live)
    exits: dict[str, int] = {}
    handled_by_extras = 0.0
    with Contention(seconds=ROUNDS * 90):
        for round_no in range(ROUNDS):
            extra = scenario.start(f"extra{round_no}", wait=False)
            match round_no % 3:
                case 0:  # joins, works, leaves cleanly
                    extra.wait_ready(120)
                    live.append(extra)
                    handled_by_extras += wait_for(partial(events_handled, extra), 60,
                                                  f"{extra.name} to handle events")  # fmt: skip
                    live.remove(extra)
                    exits[extra.name] = extra.stop()
                case 1:  # joins, works, and is SIGKILLed with events in flight
                    extra.wait_ready(120)
                    live.append(extra)
                    handled_by_extras += wait_for(partial(events_handled, extra), 60,
                                                  f"{extra.name} to handle events")  # fmt: skip
                    live.remove(extra)
                    scenario.kill(extra)
                    exits[extra.name] = extra.proc.returncode
                case _:  # stopped while its join is still under way
                    wait_for(lambda: "joining group" in extra.log(), 120,  # noqa: B023
                             f"{extra.name} to join the group")  # fmt: skip
                    exits[extra.name] = extra.stop()
            # A survivor restarted on its own state: its tables resume from local RocksDB.
            survivor = live[round_no % 2]
            exits[f"{survivor.name}@{round_no}"] = survivor.stop()
            live[round_no % 2] = scenario.start(survivor.name, data_dir=survivor.data_dir,
                                                wait=False)  # fmt: skip
            live[round_no % 2].wait_ready(120)
            time.sleep(2)
    # Clean stops exit 0; a stop mid-join may need the kill that follows the grace period, but
    # no worker may die by itself.
    assert all(code in (0, -signal.SIGKILL) for code in exits.values()), str(exits)
    assert handled_by_extras > 0, "the extra workers never took partitions"
    scenario.finish(live[0], {"rounds": ROUNDS, "handled_by_extras": int(handled_by_extras)})
    scenario.rebuild()
