"""``topics migrate`` offline: where each record goes, when the command refuses to start, the
progress record, and which topics and changelogs it moves. On real Kafka and workers:
tests/integration/test_partition_migration.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pipeline.adapters.kafka.migration import (
    GroupState,
    Progress,
    Route,
    refusals,
    renamed,
    target_partition,
)
from pipeline.cli.errors import CommandError
from pipeline.cli.main import build_parser
from pipeline.cli.partitions import changelog_names, check_target, routes
from pipeline.settings import load_settings
from pipeline.streaming.topics import TABLE_SOURCES, consumed_topic_names

# Kafka's own test vectors for its murmur2 (UtilsTest.testMurmur2, Java client): what the Java
# producers and aiokafka's default partitioner hash a key to, before the sign bit is masked.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("partitions", [1, 4, 8, 12])
def test_a_keyed_record_goes_where_the_default_partitioner_sends_its_key(partitions: int) -> None:
    route = Route("old", "new", partitions, keyed=True)
    for key, hashed in JAVA_MURMUR2.items():
        for old_partition in range(4):  # wherever it was before
            assert target_partition(route, key, old_partition) == (
                (hashed & 0x7FFFFFFF) % partitions
            )


def test_a_record_without_key_keeps_its_partition_number() -> None:
    route = Route("old", "new", 8, keyed=True)
    assert [target_partition(route, None, p) for p in range(4)] == [0, 1, 2, 3]
    shrunk = Route("old", "new", 2, keyed=True)
    assert [target_partition(shrunk, None, p) for p in range(4)] == [0, 1, 0, 1]


def test_a_fixed_topic_keeps_each_record_in_its_partition() -> None:
    route = Route("old", "new", 1, keyed=False)
    assert {target_partition(route, key, 0) for key in JAVA_MURMUR2} == {0}


def test_changelog_names_change_with_the_app_id() -> None:
    assert renamed("a-stock-changelog", "a-", "b8-") == "b8-stock-changelog"
    with pytest.raises(ValueError, match="does not start"):
        renamed("x-stock-changelog", "a-", "b-")


# -- preconditions ---------------------------------------------------------------------------

CONSUMED = ["t.orders.events", "t.dead-letters"]
BOUNDS = {
    ("t.orders.events", 0): (0, 10),
    ("t.orders.events", 1): (5, 5),  # emptied by retention: nothing to handle
    ("t.dead-letters", 0): (0, 0),
    ("t.analytics.events", 0): (0, 40),  # nobody of the group reads it
}


def test_a_stopped_drained_pipeline_may_be_migrated() -> None:
    state = GroupState(0, {("t.orders.events", 0): 10})
    assert refusals("g", state, CONSUMED, BOUNDS, outbox_waiting=0) == []


def test_a_running_worker_is_refused_with_what_to_do() -> None:
    state = GroupState(2, {("t.orders.events", 0): 10})
    [problem] = refusals("g", state, CONSUMED, BOUNDS, outbox_waiting=0)
    assert "consumer group g has 2 active member(s)" in problem
    assert "stop every worker" in problem


def test_lag_is_refused_naming_the_partitions() -> None:
    state = GroupState(0, {("t.orders.events", 0): 7})
    [problem] = refusals("g", state, CONSUMED, BOUNDS, outbox_waiting=0)
    assert "t.orders.events[0] 3" in problem and "lag is 0" in problem


def test_records_never_handled_are_lag() -> None:
    [problem] = refusals("g", GroupState(0, {}), CONSUMED, BOUNDS, outbox_waiting=0)
    assert "t.orders.events[0] 10" in problem
    assert "analytics.events" not in problem


def test_an_outbox_with_rows_waiting_is_refused() -> None:
    state = GroupState(0, {("t.orders.events", 0): 10})
    [problem] = refusals("g", state, CONSUMED, BOUNDS, outbox_waiting=3)
    assert "the outbox has 3 row(s) waiting" in problem and "forwarder" in problem


def test_every_problem_is_said_at_once() -> None:
    assert len(refusals("g", GroupState(1, {}), CONSUMED, BOUNDS, outbox_waiting=1)) == 3


# -- progress --------------------------------------------------------------------------------

PLAN = {"from": {"prefix": "", "app_id": "a"}, "to": {"prefix": "p8.", "app_id": "b"}}


def test_progress_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "migrations" / "a-to-b.json"
    progress = Progress.open(path, PLAN)
    topic = progress.topic("orders.events")
    topic.next.update({0: 12, 1: 7})
    topic.written.update({3: 19})
    progress.save()
    again = Progress.open(path, PLAN)
    assert again.topics["orders.events"].next == {0: 12, 1: 7}
    assert again.topics["orders.events"].written == {3: 19}
    assert not again.done
    assert [p.name for p in path.parent.iterdir()] == ["a-to-b.json"]  # no temporary left


def test_progress_of_another_plan_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a-to-b.json"
    path.write_text(json.dumps({"plan": {**PLAN, "partitions": 8}, "topics": {}}))
    with pytest.raises(ValueError, match="records another migration"):
        Progress.open(path, {**PLAN, "partitions": 12})


# -- the command -----------------------------------------------------------------------------


def args(*argv: str) -> argparse.Namespace:
    return build_parser(with_faust=False).parse_args(["topics", "migrate", *argv])


def test_the_new_names_must_be_new() -> None:
    settings = load_settings()
    with pytest.raises(CommandError, match="is the current PIPELINE_TOPIC_PREFIX"):
        check_target(settings, args("--partitions", "8", "--to-prefix", settings.topic_prefix,
                                    "--to-app-id", "b"))  # fmt: skip
    with pytest.raises(CommandError, match="is the current PIPELINE_APP_ID"):
        check_target(settings, args("--partitions", "8", "--to-prefix", "p8.",
                                    "--to-app-id", settings.app_id))  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ["--partitions", "0", "--to-prefix", "p.", "--to-app-id", "b"],
        ["--partitions", "eight", "--to-prefix", "p.", "--to-app-id", "b"],
        ["--partitions", "8", "--to-prefix", "p/", "--to-app-id", "b"],
        ["--partitions", "8", "--to-prefix", "p.", "--to-app-id", ""],
        ["--partitions", "8", "--to-prefix", "p."],
    ],
)
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        args(*argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_every_topic_and_changelog_moves_and_the_revenue_keeps_one_partition() -> None:
    settings = load_settings()
    plan = {r.source: r for r in routes(settings, args("--partitions", "8", "--to-prefix", "p8.",
                                                      "--to-app-id", "b8"))}  # fmt: skip
    revenue = settings.topic_name("analytics.revenue")
    assert plan[revenue].target == "p8.analytics.revenue"
    assert (plan[revenue].partitions, plan[revenue].keyed) == (1, False)
    redeliver_revenue = plan[settings.topic_name("redeliver.revenue")]
    assert (redeliver_revenue.partitions, redeliver_revenue.keyed) == (1, False)
    changelog = plan[f"{settings.app_id}-revenue-changelog"]
    assert (changelog.target, changelog.partitions) == ("b8-revenue-changelog", 1)
    for base in ("orders.events", "inventory.commands", "inventory.events", "orders.status",
                 "analytics.events", "dead-letters", "retry.1", "redeliver.inventory"):  # fmt: skip
        route = plan[settings.topic_name(base)]
        assert (route.target, route.partitions, route.keyed) == (f"p8.{base}", 8, True)
    for table in ("customer_stats", "stock", "order_progress", "notifications_sent"):
        route = plan[f"{settings.app_id}-{table}-changelog"]
        assert (route.target, route.partitions, route.keyed) == (f"b8-{table}-changelog", 8, True)


def test_every_table_says_which_topic_its_changelog_follows() -> None:
    assert set(changelog_names()) == set(TABLE_SOURCES)


def test_the_group_reads_its_sources_and_not_analytics_events() -> None:
    settings = load_settings()
    consumed = consumed_topic_names()
    assert settings.topic_name("orders.events") in consumed
    assert settings.topic_name("redeliver.notifications") in consumed
    assert settings.topic_name("dead-letters") in consumed
    assert settings.topic_name("analytics.events") not in consumed


# -- dead letters opened before a migration --------------------------------------------------


def test_a_replay_goes_to_the_partition_its_key_hashes_to_now() -> None:
    """A dead letter names the partition its record came from under the old partition count;
    after ``topics migrate`` its key's state is where the key hashes to among the new ones, and
    the replay (and any retry of it) goes there."""
    import asyncio
    import time
    from typing import Any

    from pipeline.domain import failures
    from pipeline.domain.dead_letters import DeadLetter, parse_filter
    from pipeline.domain.events import encode
    from pipeline.services.dead_letters import DeadLetters
    from pipeline.streaming.topics import replay_partition
    from tests.conftest import order_created

    settings = load_settings()
    key = b"a-little-bit-longer-string"
    now_partition = (JAVA_MURMUR2[key] & 0x7FFFFFFF) % settings.partitions
    first = (now_partition + 1) % settings.partitions  # where it came from before
    assert replay_partition("analytics", key, first) == now_partition
    assert replay_partition("analytics", None, first) == first
    assert replay_partition("revenue", key, 0) == 0
    event = order_created(key.decode())
    state = failures.Failure(
        agent="analytics",
        origin=failures.Origin("orders.events", first, 9, time.time()),
        attempts=3, retry_tier=0, replays=0, first_failure_at=failures.now_utc(),
    )  # fmt: skip
    headers = failures.dead_letter_headers(
        [("event_id", event.event_id.encode())], state, "permanent", ValueError("v"),
        failures.now_utc(),
    )  # fmt: skip
    letter = DeadLetter.from_record(0, 1, key, encode(event), headers, time.time())
    assert letter.original_partition == first
    sent: list[tuple[Any, ...]] = []

    class Store:
        async def find(self, where: object) -> list[DeadLetter]:
            return [letter]

        async def replay_count(self, agent: str, key: str) -> int:
            return 0

        async def claim_replay(self, letter: DeadLetter) -> bool:
            return True

        async def release_replay(self, letter: DeadLetter) -> None:
            return None

        async def record_replay(self, letter: DeadLetter, at: object, by: str) -> None:
            return None

    async def send(*args: object) -> None:
        sent.append(args)

    store: Any = Store()
    service = DeadLetters(
        store, send, replay_limit=3, redelivery_topic=lambda a: f"redeliver.{a}",
        known_agents=lambda: ["analytics"], replay_partition=replay_partition,
    )  # fmt: skip
    asyncio.run(service.replay(parse_filter({}), "test"))
    [(topic, sent_key, _value, sent_headers, partition)] = sent
    assert (topic, sent_key, partition) == ("redeliver.analytics", key, now_partition)
    assert dict(sent_headers)[failures.ORIGINAL_PARTITION] == str(now_partition).encode()
