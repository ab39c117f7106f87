"""Failures on real Kafka in a real worker: retries in place and through retry topics, the
dead-letter topic with its context, poison pills, replay over HTTP and the CLI, the loop guard.

One worker runs every agent plus ``tests.integration.faulty_agent`` (a test agent whose faults
are switched by files), with short retry delays. Each test uses its own events.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.adapters.db.schema import migrate
from pipeline.domain.events import encode
from pipeline.settings import PROJECT_ROOT
from tests.conftest import order_created
from tests.integration.workers import (
    Worker,
    WorkerFactory,
    consume,
    metric,
    produce,
    wait_for,
)

RETRY_ENV = {
    "PIPELINE_RETRY_DELAYS": "1,2",
    "PIPELINE_RETRY_IN_PLACE_ATTEMPTS": "2",
    "PIPELINE_RETRY_BACKOFF_SECONDS": "0.01",
    "PIPELINE_REPLAY_LIMIT": "2",
}


@pytest.fixture(scope="module")
def setup(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerFactory, Worker, Path]]:
    root = tmp_path_factory.mktemp("failures")
    faults = root / "faults"
    faults.mkdir()
    url = f"sqlite+aiosqlite:///{root / 'orders.db'}"
    migrate(url)
    test_id = uuid.uuid4().hex[:10]
    factory = WorkerFactory(kafka_bootstrap, root, f"it-{test_id}", f"t{test_id}.", url)
    try:
        worker = factory.start(
            PIPELINE_EXTRA_MODULES="tests.integration.faulty_agent",
            FAULTY_AGENT_DIR=str(faults),
            **RETRY_ENV,
        )
        yield factory, worker, faults
    finally:
        factory.stop_all()


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _send(factory: WorkerFactory, topic: str, *records: tuple[bytes, bytes]) -> None:
    asyncio.run(produce(factory.bootstrap, factory.topic(topic), list(records)))


async def _produce_at(bootstrap: str, topic: str, timestamp_ms: int, key: bytes,
                      value: bytes) -> None:  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, timestamp_ms=timestamp_ms)
    finally:
        await producer.stop()


def _an_hour_ago_ms() -> int:
    """A record time no redelivery could be stamped with by accident, with milliseconds that
    a conversion through float seconds gets wrong when it truncates."""
    return (int(time.time()) - 3600) * 1000 + 123


def _copies(factory: WorkerFactory, topic: str, value: bytes) -> list[Any]:
    """The records in ``topic`` with ``value``, read with a plain consumer."""
    records = asyncio.run(consume(factory.bootstrap, factory.topic(topic), count=10_000,
                                  timeout=5))  # fmt: skip
    return [r for r in records if r.value == value]


def _order(faults: Path, fault: str | None = None, customer: str | None = None) -> Any:
    event = order_created(customer or f"cust-{uuid.uuid4().hex[:6]}")
    if fault is not None:
        (faults / f"{event.event_id}.fail").write_text(fault)
    return event


def _dead_letters(worker: Worker, **query: str) -> list[dict[str, Any]]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    status, body = worker.get(f"/dead-letters?{qs}")
    assert status == 200, body
    return list(body["dead_letters"])


def test_a_handler_failing_k_times_then_succeeding_applies_once_without_blocking(
    setup: tuple[WorkerFactory, Worker, Path],
) -> None:
    factory, worker, faults = setup
    customer = f"cust-{uuid.uuid4().hex[:6]}"
    # 4 failures: 2 in place, then through retry topic 1, 2 more in place, then retry topic 2.
    flaky = _order(faults, "4", customer)
    behind = _order(faults, None, customer)
    _send(factory, "faulty.in", (customer.encode(), encode(flaky)),
          (customer.encode(), encode(behind)))  # fmt: skip

    wait_for(lambda: flaky.event_id in _lines(faults / "effects.log"), 60, "the retried event")
    effects = _lines(faults / "effects.log")
    assert effects.count(flaky.event_id) == 1
    assert _lines(faults / "calls.log").count(flaky.event_id) == 1
    # The event behind it on the same partition was not held up by the retries.
    assert effects.index(behind.event_id) < effects.index(flaky.event_id)
    assert _dead_letters(worker, event_id=flaky.event_id) == []
    text = worker.metrics()
    for stage in ("in-place", "topic-1", "topic-2"):
        labels = {"agent": "faulty", "error": "TimeoutError", "stage": stage}
        assert (metric(text, "pipeline_retries_total", **labels) or 0) >= 1, stage


def test_a_permanent_failure_lands_in_the_dead_letter_topic_with_every_header(
    setup: tuple[WorkerFactory, Worker, Path],
) -> None:
    factory, worker, faults = setup
    labels = {"agent": "faulty", "reason": "permanent", "error": "NonRetryableError"}
    counted_before = metric(worker.metrics(), "pipeline_dead_letters_total", **labels) or 0
    refused = _order(faults, "permanent")
    key = refused.customer_id.encode()
    _send(factory, "faulty.in", (key, encode(refused)))

    [listed] = wait_for(lambda: _dead_letters(worker, event_id=refused.event_id), 30,
                        "the dead letter to be indexed")  # fmt: skip
    assert listed["agent"] == "faulty" and listed["reason"] == "permanent"
    assert listed["error_type"] == "pipeline.domain.failures.NonRetryableError"
    assert listed["attempts"] == 1  # a permanent error is not retried
    assert listed["original"]["topic"] == factory.topic("faulty.in")
    assert "NonRetryableError" in listed["stacktrace"]
    assert refused.event_id not in _lines(faults / "calls.log")
    counted = metric(worker.metrics(), "pipeline_dead_letters_total", **labels)
    assert counted == counted_before + 1  # per agent, reason and error

    records = asyncio.run(consume(factory.bootstrap, factory.topic("dead-letters"), count=50,
                                  timeout=5))  # fmt: skip
    [record] = [r for r in records if dict(r.headers).get("x-agent") == b"faulty"
                and r.value == encode(refused)]  # fmt: skip
    headers = dict(record.headers)
    assert record.key == key
    expected = {
        "x-agent": b"faulty",
        "x-dead-letter-reason": b"permanent",
        "x-exception-type": b"pipeline.domain.failures.NonRetryableError",
        "x-exception-message": f"event {refused.event_id} is refused for good".encode(),
        "x-original-topic": factory.topic("faulty.in").encode(),
        "x-original-partition": str(listed["original"]["partition"]).encode(),
        "x-original-offset": str(listed["original"]["offset"]).encode(),
        "x-attempts": b"1",
    }
    assert {k: headers.get(k) for k in expected} == expected
    for name in ("x-stacktrace", "x-original-timestamp", "x-first-failure-at", "x-failed-at"):
        assert headers[name], name


def test_a_poison_pill_is_dead_lettered_and_the_events_behind_it_flow(
    setup: tuple[WorkerFactory, Worker, Path],
) -> None:
    factory, worker, _ = setup
    customer = f"cust-{uuid.uuid4().hex[:6]}"
    after = order_created(customer)
    poison = b'{"event_type": "OrderCreated", "event_id": "no-other-fields"}'
    _send(factory, "orders.events", (customer.encode(), b"\x00\xffnot json"),
          (customer.encode(), poison), (customer.encode(), encode(after)))  # fmt: skip

    def stats() -> Any:
        status, body = worker.get(f"/customers/{customer}/stats")
        return body if status == 200 else None

    assert wait_for(stats, 30, "the order behind the poison pills")["order_count"] == 1

    def pills() -> list[dict[str, Any]]:
        return [d for d in _dead_letters(worker, reason="poison") if d["key"] == customer]

    wait_for(lambda: len(pills()) == 4, 30, "both agents' dead letters")
    letters = pills()
    # Both agents reading orders.events set each pill aside, bytes intact.
    assert sorted(d["agent"] for d in letters) == sorted(["analytics", "inventory-requests"] * 2)
    assert {"base64": "AP9ub3QganNvbg=="} in [d["value"] for d in letters]
    assert poison.decode() in [d["value"] for d in letters]


def test_a_replay_after_the_fault_is_fixed_applies_exactly_once(
    setup: tuple[WorkerFactory, Worker, Path],
) -> None:
    factory, worker, faults = setup
    stuck = _order(faults, "always")
    _send(factory, "faulty.in", (stuck.customer_id.encode(), encode(stuck)))
    [letter] = wait_for(lambda: _dead_letters(worker, event_id=stuck.event_id), 60,
                        "the retries to be exhausted")  # fmt: skip
    assert letter["reason"] == "retries-exhausted"
    assert letter["attempts"] == 6  # 2 in place, times the source and two retry topics

    (faults / f"{stuck.event_id}.fail").unlink()  # the fix
    status, body = worker.post("/dead-letters/replay", {"event_id": stuck.event_id})
    assert status == 200, body
    assert body == {"replayed": [letter["id"]], "refused": []}
    wait_for(lambda: stuck.event_id in _lines(faults / "effects.log"), 30, "the replayed event")

    # Replaying the same dead letter again (by id, from the CLI) reaches the agent again and
    # changes nothing: the agent is idempotent.
    result = _cli(factory, "dlt", "replay", "--id", letter["id"])
    assert result.returncode == 0, result.stderr
    assert "replayed 1" in result.stdout
    wait_for(lambda: _lines(faults / "calls.log").count(stuck.event_id) == 2, 30, "2nd replay")
    assert _lines(faults / "effects.log").count(stuck.event_id) == 1
    [after] = _dead_letters(worker, event_id=stuck.event_id)
    assert after["status"] == "replayed"


def test_the_loop_guard_stops_an_event_that_keeps_failing(
    setup: tuple[WorkerFactory, Worker, Path],
) -> None:
    factory, worker, faults = setup
    broken = _order(faults, "permanent")
    _send(factory, "faulty.in", (broken.customer_id.encode(), encode(broken)))
    for round_no in (1, 2):
        wait_for(lambda n=round_no: len(_dead_letters(worker, event_id=broken.event_id)) == n,
                 30, f"dead letter {round_no}")  # fmt: skip
        status, body = worker.post("/dead-letters/replay", {"event_id": broken.event_id})
        assert status == 200 and len(body["replayed"]) == 1, body
    letters = wait_for(lambda: (d := _dead_letters(worker, event_id=broken.event_id))
                       and len(d) == 3 and d, 30, "dead letter 3")  # fmt: skip
    assert [d["replays"] for d in letters] == [0, 1, 2]

    status, body = worker.post("/dead-letters/replay", {"event_id": broken.event_id})
    assert status == 200 and body["replayed"] == []
    [refusal] = body["refused"]
    assert "replay limit reached" in refusal["reason"]
    result = _cli(factory, "dlt", "replay", "--event-id", broken.event_id)
    assert result.returncode == 1 and "replay limit reached" in result.stdout
    assert broken.event_id not in _lines(faults / "calls.log")


def test_dead_letters_are_listed_over_http_and_the_cli_with_filters(
    setup: tuple[WorkerFactory, Worker, Path],
) -> None:
    factory, worker, faults = setup
    refused = _order(faults, "permanent")
    _send(factory, "faulty.in", (refused.customer_id.encode(), encode(refused)))
    wait_for(lambda: _dead_letters(worker, event_id=refused.event_id), 30, "the dead letter")

    assert all(d["agent"] == "faulty" for d in _dead_letters(worker, agent="faulty"))
    assert _dead_letters(worker, agent="faulty", since="2999-01-01T00:00:00") == []
    status, body = worker.get("/dead-letters?since=yesterday&colour=red")
    assert status == 422
    assert {p["field"] for p in body["detail"]} == {"since", "colour"}
    status, body = worker.post("/dead-letters/replay", {})
    assert status == 422 and "say what to replay" in body["detail"][0]["message"]

    result = _cli(factory, "dlt", "list", "--agent", "faulty", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert refused.event_id in [d["event_id"] for d in listed]
    table = _cli(factory, "dlt", "list", "--event-id", refused.event_id)
    assert refused.event_id in table.stdout and "NonRetryableError" in table.stdout
    bad = _cli(factory, "dlt", "list", "--since", "yesterday")
    assert bad.returncode == 2 and "since" in bad.stderr


def _cli(factory: WorkerFactory, *args: str) -> subprocess.CompletedProcess[str]:
    env = factory.env(
        PIPELINE_DATA_DIR=str(factory.root / "cli"),
        PIPELINE_EXTRA_MODULES="tests.integration.faulty_agent",
        **RETRY_ENV,
    )
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=PROJECT_ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_retried_record_goes_round_with_its_original_timestamp(
    setup: tuple[WorkerFactory, Worker, Path],
) -> None:
    """Windows by record time must count a retried record where its first delivery went."""
    factory, _, faults = setup
    flaky = _order(faults, "4")  # through retry topic 1 and back, then retry topic 2 and back
    first_sent = _an_hour_ago_ms()
    asyncio.run(_produce_at(factory.bootstrap, factory.topic("faulty.in"), first_sent,
                            flaky.customer_id.encode(), encode(flaky)))  # fmt: skip
    wait_for(lambda: flaky.event_id in _lines(faults / "effects.log"), 90, "the retried event")

    copies = {topic: _copies(factory, topic, encode(flaky))
              for topic in ("retry.1", "retry.2", "redeliver.faulty")}  # fmt: skip
    assert {topic: len(found) for topic, found in copies.items()} == {
        "retry.1": 1, "retry.2": 1, "redeliver.faulty": 2}  # fmt: skip
    for topic, found in copies.items():
        assert [r.timestamp for r in found] == [first_sent] * len(found), topic


def test_a_dead_letter_replayed_twice_keeps_its_original_timestamp(
    setup: tuple[WorkerFactory, Worker, Path],
) -> None:
    """Both replays land in the window of the first delivery, whose ids dedupe the second."""
    factory, worker, faults = setup
    broken = _order(faults, "permanent")
    first_sent = _an_hour_ago_ms()
    asyncio.run(_produce_at(factory.bootstrap, factory.topic("faulty.in"), first_sent,
                            broken.customer_id.encode(), encode(broken)))  # fmt: skip
    for round_no in (1, 2):
        wait_for(lambda n=round_no: len(_dead_letters(worker, event_id=broken.event_id)) == n,
                 30, f"dead letter {round_no}")  # fmt: skip
        status, body = worker.post("/dead-letters/replay", {"event_id": broken.event_id})
        assert status == 200 and len(body["replayed"]) == 1, body
    letters = wait_for(lambda: (d := _dead_letters(worker, event_id=broken.event_id))
                       and len(d) == 3 and d, 30, "dead letter 3")  # fmt: skip
    assert {d["original"]["timestamp"] for d in letters} == {first_sent / 1000}

    replayed = _copies(factory, "redeliver.faulty", encode(broken))
    dead = _copies(factory, "dead-letters", encode(broken))
    assert [r.timestamp for r in replayed] == [first_sent] * 2
    assert [r.timestamp for r in dead] == [first_sent] * 3
