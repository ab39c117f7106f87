"""``python -m pipeline forwarder``: the outbox forwarder as a process of its own.

Every worker runs a forwarder by default, and the database lock lets one of them publish at a
time. Where the order API and the agents should scale apart from publishing (the Procfile's
``forwarder`` process type), run this process and start the workers with
``PIPELINE_FORWARDER_ENABLED=false``. It needs only ``DATABASE_URL`` and
``KAFKA_BOOTSTRAP_SERVERS``: no Faust, no tables. It serves ``/metrics`` and ``/livez`` (or
``/healthz``) on ``--web-port`` (bound to ``PIPELINE_WEB_HOST``; beyond loopback only with
``PIPELINE_API_TOKEN`` set, as a worker), and stops on SIGTERM or Ctrl-C after its current
batch.

With PostgreSQL it wakes on the NOTIFY sent with each order; with SQLite it polls every
``PIPELINE_OUTBOX_POLL_INTERVAL`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from datetime import timedelta

from aiohttp import web

from pipeline import logs
from pipeline.adapters.db.orders import OrderStore
from pipeline.adapters.db.outbox import OutboxStore
from pipeline.adapters.db.schema import make_bookkeeping_engine, make_engine
from pipeline.adapters.kafka.producer import producer_for
from pipeline.domain.events import utc_now
from pipeline.metrics import Metrics
from pipeline.services.outbox import OutboxForwarder, forwarder_for
from pipeline.settings import Settings, web_bind_refusal
from pipeline.web.errors import json_errors
from pipeline.web.instrument import instrument

log = logging.getLogger(__name__)

ORDER_EVENTS = "orders.events"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "forwarder", help="run only the outbox forwarder (Procfile: forwarder)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )  # fmt: skip
    parser.add_argument(
        "--web-port", type=int, default=None,
        help="port for /metrics and /livez (default: PIPELINE_WEB_PORT)",
    )  # fmt: skip


def run(settings: Settings, args: argparse.Namespace) -> int:
    # The same rule as a worker's web server (pipeline.streaming.worker), before anything starts.
    refusal = web_bind_refusal(settings.web_host, settings.api_token)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper().replace("WARN", "WARNING"))
    logs.configure(logging.root, settings.log_format)
    port = args.web_port or settings.web_port
    try:
        asyncio.run(serve(settings, port))
    except OSError as exc:
        print(f"error: cannot serve on {settings.web_host}:{port}: {exc}", file=sys.stderr)
        return 2
    return 0


async def serve(settings: Settings, port: int) -> None:
    metrics = Metrics()
    holder: list[OutboxForwarder] = []
    orders_engine = make_engine(settings.database_url)
    store = OutboxStore(make_bookkeeping_engine(settings.database_url))
    producer = producer_for(settings)
    await producer.start()

    async def purge_keys() -> None:
        ttl = timedelta(seconds=settings.idempotency_key_ttl_seconds)
        await OrderStore(orders_engine).purge_idempotency_keys(utc_now() - ttl)

    forwarder = forwarder_for(
        settings, store, producer, metrics, topic=settings.topic_name(ORDER_EVENTS),
        wake=lambda: holder[0].wake() if holder else None, purge_keys=purge_keys,
    )  # fmt: skip
    holder.append(forwarder)
    runner = await _start_web(settings.web_host, port, metrics, forwarder)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, forwarder.stop)
    log.info("outbox forwarder process serving /metrics on %s:%d", settings.web_host, port)
    try:
        await forwarder.run()
    finally:
        await runner.cleanup()
        await producer.stop()
        await store.engine.dispose()
        await orders_engine.dispose()
        log.info("outbox forwarder process stopped")


async def _start_web(
    host: str, port: int, metrics: Metrics, forwarder: OutboxForwarder
) -> web.AppRunner:
    async def metrics_view(request: web.Request) -> web.Response:
        with contextlib.suppress(Exception):  # the database may be down: serve what we have
            await forwarder.refresh_metrics()
        return web.Response(body=metrics.render(), content_type="text/plain")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    # Its errors (an unknown route, a wrong method) in the API's one shape (pipeline.web.errors).
    app = web.Application(client_max_size=1024, middlewares=[json_errors])
    instrument(app, metrics)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/livez", health)
    app.router.add_get("/healthz", health)  # /livez under its older name, as on the workers
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
