"""What a worker process owns besides Faust's own parts: the database engine, the order
service, the outbox forwarder and the metrics. Built from the settings once, started and
stopped with the app (``app.service``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from functools import cached_property
from typing import Any
from urllib.parse import quote

import aiohttp
from faust.exceptions import NotReady
from mode import Service
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.adapters.db.dead_letters import DeadLetterStore
from pipeline.adapters.db.orders import OrderStore
from pipeline.adapters.db.outbox import OutboxStore
from pipeline.adapters.db.outbox_admin import OutboxAdmin
from pipeline.adapters.db.ping import known_revisions, make_ping_engine, ping
from pipeline.adapters.db.reconcile import ReconcileStore
from pipeline.adapters.db.schema import make_bookkeeping_engine, make_engine
from pipeline.adapters.kafka.ping import KafkaPing
from pipeline.adapters.kafka.producer import producer_for
from pipeline.adapters.kafka.scan import scan_event_ids
from pipeline.adapters.kafka.security import client_options
from pipeline.app import app, settings
from pipeline.domain.events import utc_now
from pipeline.domain.failures import AGENT, Headers, Unavailable, original_timestamp_ms
from pipeline.domain.reconcile import Report, TopicIds
from pipeline.metrics import Metrics
from pipeline.services.dead_letters import DeadLetters
from pipeline.services.orders import OrderService
from pipeline.services.outbox import OutboxForwarder, export_outbox_state, forwarder_for
from pipeline.services.outbox_admin import OutboxOperations
from pipeline.services.readiness import Check, Readiness, readiness
from pipeline.services.reconcile import reconcile
from pipeline.settings import Settings
from pipeline.streaming import consume, faust_patches
from pipeline.streaming.rebalances import RebalanceSensor
from pipeline.streaming.topics import (
    AGENT_SOURCES,
    ALL_TOPICS,
    ORDER_EVENTS,
    egress,
    redelivery_topic_name,
    redelivery_topics,
    replay_partition,
)

log = logging.getLogger(__name__)

# How long a scrape of /metrics waits for the outbox's state from the database.
METRICS_DATABASE_SECONDS = 1.0


class Runtime(Service):
    def __init__(self, settings: Settings, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.metrics = Metrics()
        consume.use_metrics(self.metrics)
        app.sensors.add(RebalanceSensor(self.metrics))
        faust_patches.after_commit(self.metrics.observe_commit)
        # Set once on_start is done (topics declared, forwarder running): /readyz and
        # /readyz/tables wait for it.
        self.ready = False
        self._kafka_ping = KafkaPing(settings)
        self._forwarder: OutboxForwarder | None = None
        self._forwarder_task: asyncio.Task[None] | None = None

    @cached_property
    def engine(self) -> AsyncEngine:
        url = self.settings.database_url
        pool = {"pool_size": 10, "max_overflow": 20} if url.startswith("postgresql") else {}
        return make_engine(url, **pool)

    @cached_property
    def order_store(self) -> OrderStore:
        return OrderStore(self.engine, self.settings.event_write_version)

    @cached_property
    def outbox_store(self) -> OutboxStore:
        return OutboxStore(make_bookkeeping_engine(self.settings.database_url))

    @cached_property
    def outbox_operations(self) -> OutboxOperations:
        # The order engine: a requeue is one transaction, which the bookkeeping engine
        # (autocommit on PostgreSQL) cannot hold.
        retention = timedelta(seconds=self.settings.outbox_retention_seconds)
        return OutboxOperations(OutboxAdmin(self.engine), retention=retention)

    @cached_property
    def _ping_engine(self) -> AsyncEngine:
        return make_ping_engine(self.settings.database_url)

    @cached_property
    def _checks(self) -> list[Check]:
        async def started() -> None:
            if not self.ready:
                raise Unavailable("starting: topics not declared or forwarder not started yet")

        revisions = known_revisions()
        return [
            Check("database", lambda: ping(self._ping_engine, revisions)),
            Check("kafka", self._kafka_ping),
            Check("services", started, remember=0),
        ]

    async def readiness(self) -> Readiness:
        """Whether this worker can take requests now (``GET /readyz``): the database and Kafka
        answer and its services have started. Partitions and tables are not asked."""
        return await readiness(self._checks)

    @cached_property
    def dead_letter_store(self) -> DeadLetterStore:
        return DeadLetterStore(self.engine)

    @cached_property
    def dead_letters(self) -> DeadLetters:
        return DeadLetters(
            self.dead_letter_store,
            self._send_replay,
            replay_limit=self.settings.replay_limit,
            max_age_seconds=self.settings.replay_max_age_seconds,
            redelivery_topic=redelivery_topic_name,
            known_agents=lambda: list(AGENT_SOURCES),
            replay_partition=replay_partition,
        )

    def consumer_lag(self) -> dict[tuple[str, int], int]:
        """Per partition this worker consumes (changelogs aside): the partition's end offset
        (from the last fetch response, or the last record Faust saw) minus the offset this
        worker last committed."""
        monitor, consumer = app.monitor, app.consumer
        lag: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            if tp.topic.endswith("-changelog") or "__assignor" in tp.topic:
                continue
            end = consumer.highwater(tp)
            if end is None:
                end = monitor.tp_end_offsets.get(tp)
            committed = monitor.tp_committed_offsets.get(tp)
            if end is not None:
                lag[(tp.topic, tp.partition)] = max(0, end - (committed or 0))
        return lag

    async def refresh_metrics(self) -> None:
        """Bring the gauges a scrape reads up to date: consumer lag, records restored, and the
        outbox's state from the database (within a second: a scrape must not hang on it)."""
        with contextlib.suppress(Exception):  # no assignment yet (starting, rebalancing)
            self.metrics.set_lag(app.conf.id, self.consumer_lag())
        self.metrics.set_restored(faust_patches.restore.restored)
        try:
            async with asyncio.timeout(METRICS_DATABASE_SECONDS):
                await export_outbox_state(self.outbox_store, self.metrics)
        except (Unavailable, OSError, TimeoutError, SQLAlchemyError) as exc:
            # The forwarder reports a database that is down; the gauges keep their last values.
            log.debug("GET /metrics: the outbox's state is not read (%s)", type(exc).__name__)

    async def _send_replay(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers, partition: int
    ) -> None:
        # With the original record's timestamp, so a replay lands in the window its first
        # delivery did, however often it is replayed. Not ``consume.send_reliably``: a replay
        # the broker refuses is the operator's to hear of, not a reason to stop the worker.
        await egress.deliver_reliably(topic, value, key=key, headers=headers,
                                      partition=partition,
                                      timestamp_ms=original_timestamp_ms(headers))  # fmt: skip
        agent = dict(headers).get(AGENT, b"?").decode("utf-8", "replace")
        self.metrics.replays.labels(agent).inc()

    async def reconcile(self, *, scan_kafka: bool = True) -> Report:
        """The database against this pipeline's tables (read through the routed views of this
        worker, so every key is answered by its owner), the outbox and Kafka."""
        s = self.settings
        base = s.local_url(app.conf.web_port)  # the port Faust serves on (--web-port)
        limit = asyncio.Semaphore(16)
        timeout = aiohttp.ClientTimeout(total=30)
        token = s.api_token.get()
        auth = {"Authorization": f"Bearer {token}"} if token else None
        async with aiohttp.ClientSession(timeout=timeout, headers=auth) as session:

            async def read(path: str) -> dict[str, Any] | None:
                async with limit:
                    for _ in range(50):  # a rebalance answers 503 for a moment
                        async with session.get(base + path) as resp:
                            if resp.status == 200:
                                return dict(await resp.json())
                            if resp.status == 404:
                                return None
                        await asyncio.sleep(0.2)
                    raise OSError(f"{path} kept answering {resp.status}")

            async def scan() -> TopicIds:
                return await scan_event_ids(
                    s.kafka_bootstrap_servers, s.topic_name(ORDER_EVENTS), **client_options(s)
                )

            return await reconcile(
                ReconcileStore(self.engine),
                utc_now() - timedelta(seconds=s.outbox_retention_seconds),
                read_stats=lambda c: read(f"/customers/{quote(c, safe='')}/stats"),
                read_stock=lambda k: read(f"/inventory/{quote(k, safe='')}"),
                scan=scan if scan_kafka else None,
            )

    @cached_property
    def orders(self) -> OrderService:
        return OrderService(
            self.order_store, max_items=self.settings.max_order_items, on_committed=self._wake
        )

    def _wake(self) -> None:
        if self._forwarder is not None:
            self._forwarder.wake()

    async def _purge_keys(self) -> None:
        ttl = timedelta(seconds=self.settings.idempotency_key_ttl_seconds)
        await self.order_store.purge_idempotency_keys(utc_now() - ttl)

    async def on_start(self) -> None:
        try:
            for topic in (*ALL_TOPICS, *redelivery_topics()):
                await topic.maybe_declare()
        except NotReady:
            if app.should_stop:  # told to stop while starting: the producer is gone already
                return
            raise
        if self.settings.forwarder_enabled:
            await self._start_forwarder()
        self.ready = True

    async def _start_forwarder(self) -> None:
        s = self.settings
        self._producer = producer_for(s)
        await self._producer.start()
        forwarder = forwarder_for(
            s, self.outbox_store, self._producer, self.metrics,
            topic=s.topic_name(ORDER_EVENTS), wake=self._wake, purge_keys=self._purge_keys,
        )  # fmt: skip
        self._forwarder = forwarder
        self._forwarder_task = asyncio.ensure_future(forwarder.run())

    async def on_stop(self) -> None:
        if self._forwarder is not None:
            self._forwarder.stop()
        if self._forwarder_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._forwarder_task, 10)
        if self._forwarder is not None:
            await self._producer.stop()
        if "engine" in self.__dict__:
            await self.engine.dispose()
        if "outbox_store" in self.__dict__:
            await self.outbox_store.engine.dispose()
        if "_ping_engine" in self.__dict__:
            await self._ping_engine.dispose()
        await self._kafka_ping.close()


runtime = Runtime(settings)
# Faust starts service instances as well as classes (App._prepare_subservice).
app.service(runtime)  # type: ignore[arg-type]
