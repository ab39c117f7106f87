"""``python -m pipeline topics create``: every topic the pipeline uses, made before the workers.

Workers declare the topics they use when they start, with the broker's default retention; an
operator who creates them first chooses retention and replication once, for all of them, and
learns at once if an existing topic has a shape the pipeline cannot use. Creating is
idempotent: topics already there are reported and left alone.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from pipeline.kafka_security import unreachable_hint
from pipeline.ops_cli import CommandError
from pipeline.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicOutcome:
    spec: TopicSpec
    state: str  # "create", "created", "exists" or "problem"
    detail: str = ""


def topic_plan(settings: Settings) -> list[TopicSpec]:
    """Every topic the pipeline reads or writes: the event topics, the dead letters, the retry
    topics and each agent's redelivery topic. Faust creates its own (table changelogs, the
    leader topic) when a worker starts: they need its compaction settings."""
    from pipeline.topics import ALL_TOPICS, redelivery_topics

    for module in settings.extra_modules:  # their agents get redelivery topics too
        importlib.import_module(module)
    hours = settings.topic_retention_hours
    config = {"retention.ms": "-1" if hours < 0 else str(hours * 3_600_000)}
    specs: dict[str, TopicSpec] = {}
    for topic in (*ALL_TOPICS, *redelivery_topics()):
        name = topic.get_topic_name()
        specs[name] = TopicSpec(
            name,
            topic.partitions or settings.partitions,
            topic.replicas or settings.replication_factor,
            config,
        )
    return list(specs.values())


PARTITION_HINT = (
    "another partition count sends keys to other partitions than the tables expect: recreate "
    "the topic (or use a new PIPELINE_TOPIC_PREFIX), or set PIPELINE_PARTITIONS to match"
)
REPLICATION_HINT = (
    "to change a topic's replication factor, reassign its partitions "
    "(kafka-reassign-partitions), or set PIPELINE_REPLICATION_FACTOR to match"
)


def compare(plan: list[TopicSpec], existing: dict[str, tuple[int, int]]) -> list[TopicOutcome]:
    """What to do with each planned topic, given the (partitions, replication) that exist."""
    outcomes = []
    for spec in plan:
        partitions, replication = existing.get(spec.name, (0, 0))
        if spec.name not in existing:
            outcomes.append(TopicOutcome(spec, "create"))
        elif partitions != spec.partitions:
            outcomes.append(TopicOutcome(spec, "problem", f"exists with {partitions} partitions"))
        elif replication != spec.replication:
            outcomes.append(TopicOutcome(spec, "problem", f"exists with replication {replication}"))
        else:
            outcomes.append(TopicOutcome(spec, "exists"))
    return outcomes


async def create_topics(
    settings: Settings, plan: list[TopicSpec], *, dry_run: bool, request_timeout: float
) -> list[TopicOutcome]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from pipeline.kafka_security import client_options

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        request_timeout_ms=int(request_timeout * 1000),
        **client_options(settings),
    )
    await admin.start()
    try:
        # All topics' metadata: asking for named topics may auto-create them on some brokers.
        described = await admin.describe_topics(None)
        existing = {
            t["topic"]: (
                len(t["partitions"]),
                len(t["partitions"][0]["replicas"]) if t["partitions"] else 0,
            )
            for t in described
            if t["error_code"] == 0
        }
        outcomes = compare(plan, existing)
        wanted = [o.spec for o in outcomes if o.state == "create"]
        if dry_run or not wanted:
            return outcomes
        new = [
            NewTopic(s.name, s.partitions, s.replication, topic_configs=s.config) for s in wanted
        ]
        response = (await admin.create_topics(new)).to_object()
    finally:
        await admin.close()
    errors = {e["topic"]: e for e in response["topic_errors"] if e["error_code"]}
    result = []
    for o in outcomes:
        if o.state != "create":
            result.append(o)
        elif o.spec.name not in errors:
            result.append(TopicOutcome(o.spec, "created"))
        elif errors[o.spec.name]["error_code"] == 36:  # TOPIC_ALREADY_EXISTS: created meanwhile
            result.append(TopicOutcome(o.spec, "exists", "created by someone else just now"))
        else:
            e = errors[o.spec.name]
            result.append(
                TopicOutcome(
                    o.spec,
                    "problem",
                    f"not created (Kafka error {e['error_code']}): {e['error_message']}",
                )
            )
    return result


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    # aiokafka logs each failed connection; the error below says it once, with what to do.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    plan = topic_plan(settings)
    try:
        outcomes = asyncio.run(
            create_topics(settings, plan, dry_run=args.dry_run, request_timeout=args.timeout)
        )
    except (KafkaError, OSError) as exc:
        raise CommandError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} "
            f"({type(exc).__name__}); {unreachable_hint(settings)}"
        ) from None
    width = max(len(o.spec.name) for o in outcomes)
    labels = {
        "create": "would create",
        "created": "created",
        "exists": "exists",
        "problem": "PROBLEM",
    }
    for o in outcomes:
        s = o.spec
        shape = f"{s.partitions:>3} partition{'s' if s.partitions != 1 else ' '}  "
        shape += f"replication {s.replication}"
        if o.state in ("create", "created"):
            hours = settings.topic_retention_hours
            shape += f"  retention {'forever' if hours < 0 else f'{hours} h'}"
        line = f"{labels[o.state]:<12}  {s.name.ljust(width)}  {shape}"
        print(f"{line}  {o.detail}".rstrip())
    counts = {state: sum(o.state == state for o in outcomes) for state in labels}
    head = (
        f"dry run: {counts['create']} to create" if args.dry_run else f"{counts['created']} created"
    )
    print(f"{head}, {counts['exists']} already there, {counts['problem']} problems")
    details = [o.detail for o in outcomes if o.state == "problem"]
    if any("partitions" in d for d in details):
        print(f"problem: {PARTITION_HINT}", file=sys.stderr)
    if any("replication" in d for d in details):
        print(f"problem: {REPLICATION_HINT}", file=sys.stderr)
    return 1 if counts["problem"] else 0


def add_parser(sub: Any) -> None:
    topics = sub.add_parser("topics", help="create the pipeline's Kafka topics")
    topic_actions = topics.add_subparsers(dest="action", required=True)
    create = topic_actions.add_parser(
        "create",
        help="create every topic the pipeline uses; existing ones are left alone",
        description="Creates the event, dead-letter, retry and redelivery topics on "
        "KAFKA_BOOTSTRAP_SERVERS with PIPELINE_PARTITIONS, "
        "PIPELINE_REPLICATION_FACTOR and PIPELINE_TOPIC_RETENTION_HOURS (Faust "
        "creates its changelog topics itself). Safe to run again. Exits 1 if an "
        "existing topic has another partition count or replication factor, 2 if "
        "Kafka does not answer.",
    )
    create.add_argument("--dry-run", action="store_true", help="show what would be created")
    create.add_argument("--timeout", type=float, default=30.0, help="Kafka request timeout (s)")
