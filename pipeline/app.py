"""The Faust application, and nothing else: agents, tables and views register themselves.

This module is the composition root: it reads the settings once and builds the app from them.
"""

from __future__ import annotations

from typing import Any

import faust

from pipeline.adapters.kafka.security import faust_credentials
from pipeline.settings import Settings, load_settings
from pipeline.streaming import faust_patches, fencing
from pipeline.streaming.versioned_store import store_url

faust_patches.install()
fencing.install()


def broker_urls(bootstrap_servers: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap_servers.split(",") if host.strip()]


# Faust's RocksDB defaults are per partition database: a 2 GiB block cache and 3 write buffers
# of 64 MiB, so a worker holding 5 tables x 4 partitions could grow to tens of GiB. These bound
# each database to a 16 MiB block cache and 2 x 16 MiB write buffers (48 MiB at most).
ROCKSDB_OPTIONS = {
    "block_cache_size": 16 * 1024 * 1024,
    "write_buffer_size": 16 * 1024 * 1024,
    "max_write_buffer_number": 2,
}


class Table(faust.Table):
    """Faust's table with the bounded RocksDB options above (a table's own options win)."""

    def __init__(self, app: Any, *, options: dict[str, Any] | None = None, **kw: Any) -> None:
        # A fresh dict per table: Faust's store pops keys from the one it is given.
        super().__init__(app, options={**ROCKSDB_OPTIONS, **(options or {})}, **kw)


def create_app(settings: Settings) -> faust.App:
    # Faust has no setting for the consumer's fetch sizing (faust_patches.fetch).
    faust_patches.fetch.configure(
        settings.consumer_fetch_min_bytes, settings.consumer_fetch_max_wait_ms
    )
    return faust.App(
        settings.app_id,
        origin="pipeline.app",
        broker=broker_urls(settings.kafka_bootstrap_servers),
        # Faust's default store is memory://; ours is RocksDB unless a test says otherwise.
        store=store_url(settings.store),
        datadir=str(settings.state_dir),
        autodiscover=[
            *(f"agents.{name}" for name in settings.agents),
            # Retry topics and the dead-letter index serve every agent, so every worker runs them.
            "agents.failures",
            *settings.extra_modules,
            "tables",
            "pipeline.web.views",
            "pipeline.web.dashboard",
            "pipeline.web.admin",
        ],
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        # Agents decode their own bytes (pipeline.domain.events), so a bad record is ours to handle.
        key_serializer="raw",
        value_serializer="raw",
        Worker="pipeline.streaming.worker:Worker",
        Table=Table,
        producer_acks=-1,
        broker_credentials=faust_credentials(settings),
        # Agents send several records per event; a few ms of linger turns them into batches
        # instead of one produce request each (the send path was the top of the profile).
        producer_linger=settings.producer_linger_ms / 1000,
        # How often handled offsets are committed (Faust's default is 2.8 s): what a crashed
        # worker's successor handles again, and how long the last events of a burst wait to
        # count as done.
        broker_commit_interval=settings.commit_interval_ms / 1000,
        # How soon a dead or frozen worker's partitions move to the others.
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.heartbeat_seconds,
        producer_max_batch_size=512 * 1024,
        # Bind to loopback unless told otherwise; the raw /table endpoints expose every value.
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        # Where peers send routed table reads: never the bind address when that is 0.0.0.0
        # (the worker re-derives it once --web-port/--web-host are applied).
        canonical_url=settings.advertised_url(),
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_application_options={"client_max_size": 64 * 1024},
    )


settings = load_settings()
app = create_app(settings)
