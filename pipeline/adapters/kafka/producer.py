"""The outbox forwarder's producer: idempotent, ``acks=all``, with the settings' security."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from pipeline.adapters.kafka.security import client_options
from pipeline.settings import Settings


def make_producer(
    bootstrap_servers: str, max_message_bytes: int, **security: Any
) -> AIOKafkaProducer:
    # aiokafka defaults to acks=1 without idempotence: a leader failover could lose an acked
    # event, and a retried send could duplicate or reorder one. Ours must do neither.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        max_batch_size=256 * 1024,
        max_request_size=max_message_bytes,
        request_timeout_ms=30_000,
        client_id="orders-pipeline-outbox",
        **security,
    )


def producer_for(settings: Settings) -> AIOKafkaProducer:
    """The forwarder's producer for these settings (security included); not started."""
    return make_producer(
        settings.kafka_bootstrap_servers, settings.outbox_max_message_bytes,
        **client_options(settings),
    )  # fmt: skip
