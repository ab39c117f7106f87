"""``python -m pipeline topics create``: every topic the pipeline uses, made before the workers.
(``topics migrate``, which changes the partition count: :mod:`pipeline.cli.partitions`.)

Workers declare the topics they use when they start, with the broker's default retention; an
operator who creates them first chooses retention and replication once, for all of them, and
learns at once if an existing topic has a shape the pipeline cannot use. Creating is
idempotent: topics already there are reported and left alone.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from pipeline.adapters.kafka.admin import PARTITION_HINT, REPLICATION_HINT, create_topics
from pipeline.adapters.kafka.security import unreachable_hint
from pipeline.cli.errors import CommandError
from pipeline.settings import Settings
from pipeline.streaming.topics import topic_plan


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "migrate":
        from pipeline.cli.partitions import cmd_migrate

        return cmd_migrate(settings, args)
    return cmd_create(settings, args)


def cmd_create(settings: Settings, args: argparse.Namespace) -> int:
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
    topics = sub.add_parser(
        "topics", help="create the pipeline's Kafka topics, or move them to another partition count"
    )
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
    from pipeline.cli import partitions

    partitions.add_parser(topic_actions)
