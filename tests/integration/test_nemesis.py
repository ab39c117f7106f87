"""A randomized nemesis: faults drawn at random and interleaved under a steady open-loop load
with scarce stock and cancellations, then the independent checker judges the end, and again
after a worker rebuilds every table from the changelogs.

Not part of ``make test``: ``make nemesis SEED=7 DURATION=600`` (``pytest -m nemesis``). The
seed draws the faults, their order and timing, and the load; a failing seed replays the same
schedule (the machine's timing is the only thing it cannot replay). Faults: a worker SIGKILLed
and restarted (now and then on empty state), a worker frozen (SIGSTOP/SIGCONT) past its session
timeout or not, a worker started and stopped (churn), the broker SIGKILLed and restarted,
PostgreSQL stopped (immediate) and started, and the forwarding worker SIGKILLed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.adapters.db.schema import migrate
from pipeline.local.kafka import LocalKafka
from pipeline.local.postgres import LocalPostgres
from pipeline.settings import PROJECT_ROOT
from tests.integration import faults
from tests.integration.faults import SKUS, Scenario
from tests.integration.history import set_stock
from tests.integration.workers import Worker, WorkerFactory, free_port, metric

SEED = int(os.environ.get("NEMESIS_SEED") or random.SystemRandom().randrange(1, 10**6))
SECONDS = float(os.environ.get("NEMESIS_SECONDS", "600"))
DATABASE = os.environ.get("NEMESIS_DATABASE", "postgresql")

pytestmark = [pytest.mark.nemesis, pytest.mark.timeout(SECONDS + 1200)]

# Half the SKUs run out within the first minutes, half never do: orders are confirmed,
# rejected (their other lines released) and cancelled all through the run.
STOCK = {sku: (150 if n % 2 else 100_000) for n, sku in enumerate(SKUS)}


@dataclass
class Cluster:
    """The system under the nemesis: a broker it can kill, the database, the workers."""

    scenario: Scenario
    broker: LocalKafka
    postgres: LocalPostgres | None
    live: list[Worker] = field(default_factory=list)
    frozen: set[str] = field(default_factory=set)
    log: list[dict[str, object]] = field(default_factory=list)

    def targets(self) -> list[Worker]:
        return [w for w in self.live if w.name not in self.frozen and w.proc.poll() is None]

    def restart(self, victim: Worker, *, empty: bool = False) -> Worker:
        if empty:  # its RocksDB is gone: every table comes back from the changelogs
            shutil.rmtree(victim.data_dir / "state", ignore_errors=True)
        worker = self.scenario.start(victim.name, data_dir=victim.data_dir)
        self.live.append(worker)
        return worker


def kill_worker(c: Cluster, rng: random.Random) -> dict[str, object]:
    victim = rng.choice(c.targets())
    c.scenario.kill(victim)
    c.live.remove(victim)
    time.sleep(rng.uniform(0.5, 5))
    empty = rng.random() < 0.25
    c.restart(victim, empty=empty)
    return {"worker": victim.name, "empty_state": empty}


def kill_forwarder(c: Cluster, rng: random.Random) -> dict[str, object]:
    """The worker whose forwarder is publishing, killed mid-stream (between a send and the
    mark, some of the time): its rows are re-sent by the next leader and absorbed."""
    leaders = [w for w in c.targets() if _forwarding(w)]
    if not leaders:
        return {"skipped": "no forwarder active"}
    victim = leaders[0]
    c.scenario.kill(victim)
    c.live.remove(victim)
    time.sleep(rng.uniform(0.5, 3))
    c.restart(victim)
    return {"worker": victim.name}


def _forwarding(worker: Worker) -> bool:
    try:
        return metric(worker.metrics(), "pipeline_outbox_forwarder_active") == 1
    except OSError:
        return False


def freeze_worker(c: Cluster, rng: random.Random) -> dict[str, object]:
    victim = rng.choice(c.targets())
    seconds = rng.uniform(2, 14)  # the session timeout is 6 s: some zombies, some not
    c.frozen.add(victim.name)
    c.scenario.history.killed(victim.data_dir / "mailbox")
    victim.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        victim.proc.send_signal(signal.SIGCONT)
        c.frozen.discard(victim.name)
    return {"worker": victim.name, "seconds": round(seconds, 1)}


def churn(c: Cluster, rng: random.Random) -> dict[str, object]:
    name = f"extra-{len(c.scenario.workers.started)}"
    extra = c.scenario.start(name)
    c.live.append(extra)
    time.sleep(rng.uniform(4, 15))
    c.live.remove(extra)
    code = extra.stop()
    assert code == 0, f"{name} did not stop cleanly ({code})"
    return {"worker": name}


def kill_broker(c: Cluster, rng: random.Random) -> dict[str, object]:
    pid = c.broker.running_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    seconds = rng.uniform(2, 10)
    time.sleep(seconds)
    c.broker.start(timeout=120)
    return {"down_seconds": round(seconds, 1)}


def stop_database(c: Cluster, rng: random.Random) -> dict[str, object]:
    assert c.postgres is not None
    seconds = rng.uniform(2, 8)
    c.postgres.stop(mode="immediate")
    try:
        time.sleep(seconds)
    finally:
        c.postgres.start()
    return {"down_seconds": round(seconds, 1)}


Fault = Callable[[Cluster, random.Random], dict[str, object]]


@pytest.fixture
def database(request: pytest.FixtureRequest, postgres: LocalPostgres | None) -> Iterator[str]:
    if DATABASE == "sqlite":
        yield str(request.getfixturevalue("sqlite_url"))
    else:
        yield str(request.getfixturevalue("postgres_url"))


def test_random_faults_under_load_lose_and_double_nothing(
    tmp_path: Path, test_id: str, database: str, postgres: LocalPostgres | None
) -> None:
    rng = random.Random(SEED)
    print(f"nemesis seed {SEED}, {SECONDS:.0f} s, on {DATABASE}")
    migrate(database)
    broker = LocalKafka(
        version=os.environ.get("PIPELINE_KAFKA_VERSION", "4.4.0"), port=free_port(),
        controller_port=free_port(), data_dir=tmp_path / "kafka",
        cache_dir=Path(os.environ.get("PIPELINE_CACHE_DIR", PROJECT_ROOT / ".cache")),
        heap="768m",
    )  # fmt: skip
    bootstrap = broker.start(timeout=120)
    workers = WorkerFactory(bootstrap, tmp_path, f"it-{test_id}", f"t{test_id}.", database)
    scenario = Scenario(f"nemesis seed {SEED} ({SECONDS:.0f} s)", workers,
                        env={"PIPELINE_RETRY_DELAYS": "1,3,10"})  # fmt: skip
    menu: dict[str, Fault] = {
        "kill": kill_worker, "forwarder": kill_forwarder, "freeze": freeze_worker,
        "churn": churn, "broker": kill_broker,
    }  # fmt: skip
    if DATABASE != "sqlite" and postgres is not None:
        menu["database"] = stop_database
    cluster = Cluster(scenario, broker, postgres)
    try:
        cluster.live = [scenario.start("w1"), scenario.start("w2")]
        set_stock(cluster.live[0], scenario.history, STOCK)
        scenario.run_load(cluster.targets, rate=12)
        started = time.monotonic()
        while time.monotonic() - started < SECONDS:
            time.sleep(rng.uniform(2, 10))  # quiet between faults, so each one's effects land
            name = rng.choice(sorted(menu))
            at = round(time.monotonic() - started, 1)
            detail = menu[name](cluster, rng)
            cluster.log.append({"at": at, "fault": name, **detail})
            print(f"  {at:7.1f}s {name} {detail}")
            assert scenario.load is not None
            scenario.load.check()  # the load is still running
        time.sleep(5)
        faults_run = Counter(str(entry["fault"]) for entry in cluster.log)
        (tmp_path / "nemesis.json").write_text(json.dumps(
            {"seed": SEED, "seconds": SECONDS, "database": DATABASE, "faults": cluster.log},
            indent=1))  # fmt: skip
        checker = cluster.targets()[0]
        verdict = scenario.finish(checker, {"faults": dict(faults_run)})
        print(f"evidence: {verdict.evidence}")
        scenario.rebuild()
    finally:
        workers.stop_all()
        broker.stop()
    faults.SUMMARY.append(f"  seed {SEED}: {dict(faults_run)}")
