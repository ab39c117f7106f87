"""The topics the pipeline needs, and making them: what each should be (partitions,
replication, retention), compared with what the cluster has, created where missing."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    from pipeline.adapters.kafka.security import client_options

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
