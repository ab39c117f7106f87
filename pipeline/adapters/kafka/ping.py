"""Whether Kafka answers: a metadata request over one client kept between checks.

The readiness probe (``GET /readyz``) asks this. The client is the worker's own, apart from
Faust's consumer and producer, so the answer does not depend on what the consumer group is
doing (a rebalance is not Kafka being unreachable), and it holds its connection between
probes: a check is one small request, not a new connection and handshake.
"""

from __future__ import annotations

import asyncio

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from pipeline.adapters.kafka.security import client_options
from pipeline.domain.failures import Unavailable
from pipeline.settings import Settings


class KafkaPing:
    """``await ping()`` returns when a broker answers a metadata request, else raises
    :class:`Unavailable` (naming the error type only: its text lists broker addresses).
    Bound its time from outside (``asyncio.wait_for``); a check cut short leaves the client
    usable. ``await ping.close()`` when done."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: AIOKafkaClient | None = None

    async def __call__(self) -> None:
        try:
            client = await self._connected()
            await client.fetch_all_metadata()
        except (KafkaError, OSError) as exc:
            raise Unavailable(f"Kafka is unavailable ({type(exc).__name__})") from exc

    async def _connected(self) -> AIOKafkaClient:
        if self._client is None:
            client = AIOKafkaClient(
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                client_id="orders-pipeline-readiness",
                request_timeout_ms=10_000,
                **client_options(self._settings),
            )
            try:
                await client.bootstrap()
            except BaseException:  # refused, or the check's time ran out: try afresh next time
                await asyncio.shield(client.close())
                raise
            self._client = client
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
