"""Every topic the pipeline uses, by name, and the only place events are sent from.

Topic values are raw bytes: producers encode with :mod:`pipeline.domain.events` and consumers decode
with it, so the wire format is one JSON schema whoever writes it (the outbox forwarder is not a
Faust producer). Topics that are read by key-partitioned tables share the partition count.
"""

from __future__ import annotations

import importlib
import logging
from datetime import datetime
from typing import Any

import faust
from faust.streams import current_event

from pipeline.adapters.kafka.admin import TopicSpec
from pipeline.adapters.kafka.egress import Egress, event_headers
from pipeline.adapters.kafka.migration import Route, target_partition
from pipeline.app import app, settings
from pipeline.domain.events import Event, encode, written_version
from pipeline.settings import Settings
from pipeline.streaming import faust_patches

log = logging.getLogger(__name__)

ORDER_EVENTS = "orders.events"  # key: customer id
INVENTORY_COMMANDS = "inventory.commands"  # key: SKU (the repartition of order lines by SKU)
INVENTORY_EVENTS = "inventory.events"  # key: order id
ORDER_STATUS = "orders.status"  # key: order id
ANALYTICS_EVENTS = "analytics.events"  # key: customer id
ANALYTICS_REVENUE = "analytics.revenue"  # one partition: the revenue windows have one owner

# Topics whose partition count is part of the design rather than PIPELINE_PARTITIONS: a partition
# migration (``topics migrate``) keeps it, and their agents' redelivery topics' and tables'.
FIXED_PARTITIONS = {ANALYTICS_REVENUE: 1}

# The topic feeding the agent that writes each table. A table's changelog record goes to the
# partition of the event being handled (pipeline.streaming.versions.write, as Faust's own
# Table), and each table's key bytes are that topic's record key bytes, so a key's state lives
# in the partition its events hash to; ``topics migrate`` copies the changelogs by that rule.
# An agent of PIPELINE_EXTRA_MODULES that writes a table of its own adds it here.
TABLE_SOURCES: dict[str, str] = {
    "customer_stats": ORDER_EVENTS,  # key: customer id
    "stock": INVENTORY_COMMANDS,  # key: SKU
    "order_progress": INVENTORY_EVENTS,  # key: order id
    "notifications_sent": ORDER_STATUS,  # key: order id
    "revenue": ANALYTICS_REVENUE,  # one partition
}


def _topic(base: str, partitions: int | None = None) -> faust.TopicT:
    return app.topic(
        settings.topic_name(base),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions or settings.partitions,
        replicas=settings.replication_factor,
        # Faust creates only "internal" topics before subscribing; an agent whose source topic
        # is missing at start-up ignores it and never picks it up once it appears.
        internal=True,
    )


order_events_topic = _topic(ORDER_EVENTS)
inventory_commands_topic = _topic(INVENTORY_COMMANDS)
inventory_events_topic = _topic(INVENTORY_EVENTS)
order_status_topic = _topic(ORDER_STATUS)
analytics_events_topic = _topic(ANALYTICS_EVENTS)
analytics_revenue_topic = _topic(ANALYTICS_REVENUE, partitions=FIXED_PARTITIONS[ANALYTICS_REVENUE])

DEAD_LETTERS = "dead-letters"  # key: the failed record's own key
dead_letters_topic = _topic(DEAD_LETTERS)

# One retry topic per configured delay; a record's due time travels in its headers.
retry_topics = tuple(_topic(f"retry.{n}") for n in range(1, len(settings.retry_delays) + 1))

# Each agent's source and partition count. A record leaving a retry topic, or replayed from
# the dead letters, goes back to its agent alone through the agent's redelivery topic, into
# the partition it first came from: a table written while handling it then writes the same
# changelog partition as for the original, and the key's owner is the one handling it.
AGENT_SOURCES: dict[str, faust.TopicT] = {
    "inventory-requests": order_events_topic,
    "inventory": inventory_commands_topic,
    "order-status": inventory_events_topic,
    "notifications": order_status_topic,
    "analytics": order_events_topic,
    "revenue": analytics_revenue_topic,
}


def redelivery_topic_name(agent: str) -> str:
    return settings.topic_name(f"redeliver.{agent}")


def agent_source(agent: str, source: faust.TopicT | None = None) -> faust.TopicT:
    """What agent ``agent`` consumes: its source topic and its redelivery topic, one channel.
    Agents from ``PIPELINE_EXTRA_MODULES`` pass their own ``source`` and are registered."""
    if source is None:
        source = AGENT_SOURCES[agent]
    else:
        AGENT_SOURCES[agent] = source
    return app.topic(
        source.get_topic_name(),
        redelivery_topic_name(agent),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=source.partitions,
        replicas=settings.replication_factor,
        internal=True,
    )


def replay_partition(agent: str, key: bytes | None, first: int) -> int:
    """The partition of ``agent``'s redelivery topic a replayed dead letter goes to: where its
    key hashes to among the source's partitions, which is the partition it first came from
    (every producer of ours sends by key) unless ``topics migrate`` changed the count since;
    without a key, the one it came from."""
    source = AGENT_SOURCES[agent]
    fixed = fixed_partitions(source.get_topic_name().removeprefix(settings.topic_prefix))
    partitions = source.partitions or settings.partitions
    return target_partition(Route("", "", partitions, keyed=fixed is None), key, first)


def redelivery_topics() -> list[faust.TopicT]:
    return [
        _topic(f"redeliver.{agent}", partitions=source.partitions)
        for agent, source in AGENT_SOURCES.items()
    ]


# Every topic, for declaring at start-up: Faust declares a topic only when an agent of this
# worker consumes it, but a worker running some agents (PIPELINE_AGENTS) still produces to the
# others, and a topic the broker auto-creates gets its default partition count (the revenue
# topic must have exactly one).
ALL_TOPICS = (
    order_events_topic,
    inventory_commands_topic,
    inventory_events_topic,
    order_status_topic,
    analytics_events_topic,
    analytics_revenue_topic,
    dead_letters_topic,
    *retry_topics,
)


async def publish(
    topic: faust.TopicT, key: str, event: Event, *, timestamp: datetime | None = None
) -> None:
    """Send ``event`` keyed by ``key``, its id and type in headers for consumers to dedupe.

    Inside an agent's batch of events (:mod:`pipeline.streaming.faust_patches.batches`) the
    record is staged and goes to the producer when the batch ends, before its events are
    acknowledged. Otherwise it goes through the worker's :data:`egress`, straight to the app's
    Kafka client (:func:`kafka_producer`) rather than
    ``Topic.send``: the channel machinery around ``Topic.send`` cost more CPU than the send
    itself in our profile. Inside an agent this returns once the record is queued, and its
    delivery is checked before the offset of the event that caused it is committed
    (:func:`pipeline.streaming.faust_patches.track_delivery`): a record the broker refuses stops the
    worker with that offset uncommitted. Outside an agent (an HTTP view) there is no offset to
    hold back, so this waits for the broker and raises its refusal to the caller. A record the
    client refuses at once (over ``max_request_size``) raises here in either case.
    """
    name = topic.get_topic_name()
    value = encode(event)
    headers = event_headers(event.event_id, event.event_type, written_version(event))
    timestamp_ms = None if timestamp is None else int(timestamp.timestamp() * 1000)
    batch = faust_patches.current_batch()
    if batch is not None and current_event() is not None:
        # Staged until the agent's batch of events ends (_send_staged), then sent as one
        # produce batch per partition; the batch's events are acknowledged after that.
        egress.stage(batch.sends, name, value, key=key.encode(), headers=headers,
                     timestamp_ms=timestamp_ms)  # fmt: skip
        return
    delivery = await egress.submit(name, value, key=key.encode(), timestamp_ms=timestamp_ms,
                                   headers=headers)  # fmt: skip
    if current_event() is None:
        await delivery
    else:
        faust_patches.track_delivery(delivery, name)


def kafka_producer() -> Any:
    """The aiokafka producer inside the app's Faust producer, which the agents' records go to.

    Faust's ``Producer.send`` wraps it with, per record, a signal nothing here listens to
    (``on_produce_message``), a transaction lookup and conversions of what we already pass in
    aiokafka's form; 3% of a busy worker's CPU for four records per event (``make bench``).
    Faust's flush before each offset commit flushes this same client.
    """
    producer: Any = app.producer  # Faust's aiokafka transport
    return producer._ensure_producer()


# Every record this worker sends goes out here: its agents' events, its tables' changelogs,
# its retries, dead letters and replays (pipeline.adapters.kafka.egress).
egress = Egress(kafka_producer, retention_hours=settings.topic_retention_hours)


async def _send_staged(batch: faust_patches.Batch) -> None:
    """At the end of an agent's batch of events, before they are acknowledged: what
    :func:`publish` staged for them goes to the producer, each delivery held like a record sent
    at once (:func:`pipeline.streaming.faust_patches.track_delivery`)."""
    if not batch.sends:
        return
    topic = batch.sends[0][0]
    try:
        deliveries = await egress.send_staged(batch.sends)
    except Exception as exc:  # refused at once: nothing of the batch is committed
        batch.sends.clear()
        faust_patches.refuse_commits(topic, exc)
        raise
    for delivery, name in deliveries:
        faust_patches.track_delivery(delivery, name)


faust_patches.at_batch_end(_send_staged)


def consumed_topic_names() -> set[str]:
    """The topics the pipeline's consumer group reads: its agents' sources and redelivery
    topics, the retry topics and the dead letters (not analytics.events: nobody of ours)."""
    return {
        *(source.get_topic_name() for source in AGENT_SOURCES.values()),
        *(redelivery_topic_name(agent) for agent in AGENT_SOURCES),
        *(topic.get_topic_name() for topic in retry_topics),
        dead_letters_topic.get_topic_name(),
    }


def fixed_partitions(base: str) -> int | None:
    """The partition count of topic ``base`` (unprefixed) when the design fixes it."""
    if base in FIXED_PARTITIONS:
        return FIXED_PARTITIONS[base]
    agent = base.removeprefix("redeliver.")
    if agent != base and agent in AGENT_SOURCES:
        source = AGENT_SOURCES[agent].get_topic_name().removeprefix(settings.topic_prefix)
        return FIXED_PARTITIONS.get(source)
    return None


def topic_plan(settings: Settings) -> list[TopicSpec]:
    """Every topic the pipeline reads or writes: the event topics, the dead letters, the retry
    topics, each agent's redelivery topic and the outbox topics of other services
    (``PIPELINE_OUTBOX_TOPICS``, those named in full). Faust creates its own (table changelogs, the
    leader topic) when a worker starts: they need its compaction settings."""
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
    # Other services' outbox topics named in full (a prefix names no topic to create).
    for pattern in settings.outbox_topics:
        if not pattern.endswith("*"):
            name = settings.topic_name(pattern)
            specs[name] = TopicSpec(name, settings.partitions, settings.replication_factor, config)
    return list(specs.values())
