"""Private faust-streaming API our own code, not a patch, relies on: pinned beside the patches,
so an upgrade that moves it fails here and not in a worker."""

from __future__ import annotations

from typing import Any

import pytest


async def test_the_agents_send_through_the_apps_own_kafka_client() -> None:
    """``pipeline.streaming.topics.kafka_producer`` reaches inside Faust's producer
    (``_ensure_producer``): pinned, so a faust-streaming upgrade that moves it fails here and not in
    a worker."""
    from aiokafka import AIOKafkaProducer
    from faust.exceptions import NotReady

    from pipeline.app import app
    from pipeline.streaming.topics import kafka_producer

    faust_producer: Any = app.producer
    assert faust_producer._producer is None  # not started in a unit test
    with pytest.raises(NotReady):
        kafka_producer()
    client = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started
    faust_producer._producer = client
    try:
        assert kafka_producer() is client
    finally:
        faust_producer._producer = None
