"""Prometheus metrics of one worker, served at ``GET /metrics`` in the text format.

Each worker has its own registry (not the process-global default), so tests can build
several and nothing registers twice.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.orders_created = Counter(
            "pipeline_orders_created", "Orders accepted by POST /orders", registry=r
        )
        self.orders_cancelled = Counter(
            "pipeline_orders_cancelled", "Orders cancelled by POST /orders/{id}/cancel", registry=r
        )
        self.http_rejected = Counter(
            "pipeline_http_rejected", "Requests answered with a 4xx/5xx", ["reason"], registry=r
        )
        self.outbox_published = Counter(
            "pipeline_outbox_published", "Outbox rows acknowledged by Kafka", registry=r
        )
        self.outbox_parked = Counter(
            "pipeline_outbox_parked", "Outbox rows parked as unpublishable", registry=r
        )
        self.outbox_errors = Counter(
            "pipeline_outbox_errors", "Forwarder loop errors (retried)", registry=r
        )
        self.outbox_backlog = Gauge(
            "pipeline_outbox_backlog", "Outbox rows waiting to be published", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "pipeline_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox row",
            registry=r,
        )
        self.outbox_leader = Gauge(
            "pipeline_outbox_forwarder_active", "1 on the worker whose forwarder publishes",
            registry=r,
        )  # fmt: skip
        self.outbox_commit_to_ack = Histogram(
            "pipeline_outbox_commit_to_ack_seconds",
            "From the order transaction to Kafka's acknowledgement of its event",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self.retries = Counter(
            "pipeline_retries",
            "Failed attempts that are retried, by agent, error and stage (in-place, topic-N)",
            ["agent", "error", "stage"],
            registry=r,
        )
        self.dead_letters = Counter(
            "pipeline_dead_letters",
            "Records sent to the dead-letter topic, by agent, reason and error",
            ["agent", "reason", "error"],
            registry=r,
        )
        self.replays = Counter(
            "pipeline_dead_letter_replays", "Dead letters replayed, by agent", ["agent"],
            registry=r,
        )  # fmt: skip

        self.events_processed = Counter(
            "pipeline_events_processed",
            "Events an agent handled (its effect applied, or found already applied), by agent",
            ["agent"],
            registry=r,
        )
        self.event_latency = Histogram(
            "pipeline_event_latency_seconds",
            "From the record's timestamp in Kafka until the agent has handled it, by agent",
            ["agent"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "pipeline_consumer_lag",
            "Records in a partition this worker consumes past its last committed offset",
            ["topic", "partition"],
            registry=r,
        )

        self.restored_in_batches = Gauge(
            "pipeline_table_records_restored_in_batches",
            "Changelog records this worker applied to a table's store a fetch at a time "
            "(pipeline.streaming.faust_patches.restore), since it started, by table",
            ["table"],
            registry=r,
        )

    def set_restored(self, restored: Mapping[str, int]) -> None:
        for table, records in restored.items():
            self.restored_in_batches.labels(table).set(records)

    def set_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        """Replace the lag samples with ``lag`` (partitions no longer assigned disappear)."""
        self.consumer_lag.clear()
        for (topic, partition), records in lag.items():
            self.consumer_lag.labels(topic, str(partition)).set(records)

    def render(self) -> bytes:
        return generate_latest(self.registry)
