"""Readiness checks (``GET /readyz``): bounded in time, shared by concurrent probes, remembered
for a moment, and saying what failed."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

import pytest

from pipeline.adapters.db.ping import known_revisions, make_ping_engine, ping
from pipeline.adapters.db.schema import migrate
from pipeline.adapters.kafka.ping import KafkaPing
from pipeline.domain.failures import Unavailable
from pipeline.services.readiness import Check, readiness
from pipeline.settings import load_settings


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


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_database_check_answers_on_sqlite_and_names_a_refusal(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ping.db'}"
    await asyncio.to_thread(migrate, url)
    engine = make_ping_engine(url)
    await ping(engine, known_revisions())
    await engine.dispose()
    url = f"postgresql+asyncpg://someone:s3cret@127.0.0.1:{_closed_port()}/orders"
    engine = make_ping_engine(url)
    with pytest.raises(Unavailable) as caught:
        await ping(engine, known_revisions())
    await engine.dispose()
    assert str(caught.value) == "the database is unavailable (ConnectionRefusedError)"


async def test_the_database_check_fails_until_the_schema_is_migrated(tmp_path: Path) -> None:
    """A worker deployed before ``migrate`` ran is not ready (every order would fail on a
    missing table or column); one on a newer release's schema, migrated ahead of a rolling
    upgrade, is."""
    revisions = known_revisions()
    assert len(revisions) >= 2 and revisions[0].startswith("0001")
    url = f"sqlite+aiosqlite:///{tmp_path / 'ping.db'}"
    engine = make_ping_engine(url)
    missing = rf"^the database has no schema; this release needs revision {revisions[-1]}: run "
    with pytest.raises(Unavailable, match=missing + "`python -m pipeline migrate`$"):
        await ping(engine, revisions)
    for older in revisions[:-1]:
        await asyncio.to_thread(migrate, url, older)
        with pytest.raises(Unavailable, match=rf"^the database schema is at revision {older}, "
                           rf"older than this release's {revisions[-1]}: run `python -m "
                           "pipeline migrate`$"):  # fmt: skip
            await ping(engine, revisions)
    await asyncio.to_thread(migrate, url)
    await ping(engine, revisions)
    await engine.dispose()
    # A revision this release does not know: a newer release's, migrated ahead of it.
    with sqlite3.connect(tmp_path / "ping.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999_from_a_newer_release'")
    engine = make_ping_engine(url)
    await ping(engine, revisions)
    await engine.dispose()


async def test_the_kafka_check_names_an_unreachable_broker() -> None:
    kafka = KafkaPing(load_settings({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}"}))
    for _ in range(2):  # and again, from a fresh client
        with pytest.raises(Unavailable, match=r"^Kafka is unavailable \(KafkaConnectionError\)$"):
            await kafka()
    await kafka.close()
