"""Prometheus metrics of one worker, served at ``GET /metrics`` in the text format.

Each worker has its own registry (not the process-global default), so tests can build
several and nothing registers twice; the process, platform and garbage-collector collectors
that the default registry would carry are registered on it too. ``docs/operations.md``
lists every metric; ``deploy/`` holds a Grafana dashboard and Prometheus alert rules on them.

Names follow Prometheus' conventions: base units (seconds, bytes), ``_total`` on counters
(added by the client), the ``pipeline_`` prefix. Labels take bounded values only: an HTTP
request is labelled with its route's template (``/customers/{customer_id}/stats``), never
its path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A rebalance lasts from the revocation until every table has recovered: seconds to minutes.
REBALANCE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# The route label of a request no route matched (a 404 or 405 from the router itself).
UNMATCHED_ROUTE = "unmatched"


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
        self.http_requests = Counter(
            "pipeline_http_requests",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "code"],
            registry=r,
        )
        self.http_duration = Histogram(
            "pipeline_http_request_duration_seconds",
            "From the request's headers in until its answer is ready, by method and route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
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
        self.outbox_parked_rows = Gauge(
            "pipeline_outbox_parked_rows",
            "Outbox rows parked as unpublishable, waiting for an operator", registry=r,
        )  # fmt: skip
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
            "Records in a partition this worker consumes past its last committed offset, by "
            "consumer group (the app id), topic and partition",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.rebalances = Counter(
            "pipeline_rebalances", "Rebalances this worker took part in (started)", registry=r
        )
        self.rebalance_duration = Histogram(
            "pipeline_rebalance_duration_seconds",
            "From a rebalance's start until this worker's tables had recovered and it consumed "
            "again (the time /readyz answered 503 for it)",
            buckets=REBALANCE_BUCKETS,
            registry=r,
        )
        self.rebalancing = Gauge(
            "pipeline_rebalancing", "1 while this worker is rebalancing", registry=r
        )
        self.commit_duration = Histogram(
            "pipeline_offset_commit_duration_seconds",
            "Offset commits to the consumer group's coordinator, committed or not",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_failures = Counter(
            "pipeline_offset_commit_failures",
            "Offset commits the coordinator did not take (the events since the last commit are "
            "handled again by whoever owns their partitions next)",
            registry=r,
        )

        self.restored_in_batches = Gauge(
            "pipeline_table_records_restored_in_batches",
            "Changelog records this worker applied to a table's store a fetch at a time "
            "(pipeline.streaming.faust_patches.restore), since it started, by table",
            ["table"],
            registry=r,
        )

        # What the default registry carries: the process's CPU, memory and file descriptors,
        # Python's version, and the garbage collector's collections by generation.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def set_restored(self, restored: Mapping[str, int]) -> None:
        for table, records in restored.items():
            self.restored_in_batches.labels(table).set(records)

    def set_lag(self, group: str, lag: Mapping[tuple[str, int], int]) -> None:
        """Replace the lag samples with ``lag`` (partitions no longer assigned disappear)."""
        self.consumer_lag.clear()
        for (topic, partition), records in lag.items():
            self.consumer_lag.labels(group, topic, str(partition)).set(records)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered with ``status`` after ``seconds``."""
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)

    def declare_routes(self, routes: Iterable[tuple[str, str]]) -> None:
        """Show each ``(method, route template)`` served at zero before its first request, so
        a dashboard draws a flat line rather than no data."""
        for method, route in routes:
            self.http_duration.labels(method, route)

    def observe_commit(self, seconds: float, committed: bool) -> None:
        self.commit_duration.observe(seconds)
        if not committed:
            self.commit_failures.inc()

    def rebalance_started(self) -> None:
        self.rebalances.inc()
        self.rebalancing.set(1)

    def rebalance_ended(self, seconds: float) -> None:
        self.rebalance_duration.observe(seconds)
        self.rebalancing.set(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
