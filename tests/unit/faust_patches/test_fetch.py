"""A fetch answered per record under load (:mod:`pipeline.streaming.faust_patches.fetch`)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from pipeline.streaming.faust_patches import fetch


async def _worker_consumer(create: Any) -> Any:
    app = faust.App(f"fetch-{id(object())}", broker="kafka://127.0.0.1:1")
    thread = app.consumer._thread
    return create(thread, thread.transport)


def test_fausts_worker_consumer_fetches_whatever_one_record_is() -> None:
    """Pins the cost: Faust makes its worker's consumer with aiokafka's 1-byte minimum."""
    consumer = asyncio.run(_worker_consumer(fetch.STOCK_CREATE_WORKER_CONSUMER))
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (1, 1500)


def test_the_worker_consumer_gets_the_configured_fetch_sizing() -> None:
    previous = fetch._fetch
    fetch.configure(65536, 10)
    try:
        consumer = asyncio.run(_worker_consumer(fetch._create_worker_consumer))
    finally:
        fetch._fetch = previous
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (65536, 10)


def test_the_app_configures_it_from_the_settings() -> None:
    from pipeline.app import settings

    assert fetch._fetch == (settings.consumer_fetch_min_bytes, settings.consumer_fetch_max_wait_ms)
