"""``make demo``: the whole pipeline on the embedded defaults, and a stop for all it started.

It starts the local broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` names a cluster of yours), the
SQLite schema and worker processes, then feeds orders from many customers and shows what the
workers made of them. Ctrl-C, SIGTERM or ``--duration`` stop it; it stops the workers and the
broker it started, and leaves running what was running before.

Orders go through the HTTP API of the workers, like a client's would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from pipeline.adapters.db.schema import migrate
from pipeline.cli import prog
from pipeline.settings import PROJECT_ROOT, SOURCE_CHECKOUT, Settings, load_settings

ORDER_EVENTS = "orders.events"
ANALYTICS_EVENTS = "analytics.events"


@dataclass
class Worker:
    index: int
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    url: str


@dataclass
class Progress:
    created: int = 0
    cancelled: int = 0
    rejected: int = 0
    customers: set[str] = field(default_factory=set)


def _get(url: str, token: str = "") -> tuple[int, Any]:
    request = urllib.request.Request(url)  # noqa: S310 - a worker URL we built
    if token:  # the dashboard's figures show customers' spend: they take the token
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=3) as resp:  # noqa: S310 - loopback only
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, None
    except (OSError, ValueError):
        return 0, None


def start_workers(settings: Settings, count: int, base_port: int) -> list[Worker]:
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = []
    for i in range(count):
        port = base_port + i
        log = logs / f"worker-{i + 1}.log"
        # One SQLite database and data directory for all, one RocksDB state directory each.
        env = {**os.environ, "PIPELINE_STATE_DIR": str(settings.data_dir / f"state-{i + 1}"),
               "PIPELINE_DATA_DIR": str(settings.data_dir),
               "DATABASE_URL": settings.database_url}  # fmt: skip
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "worker", "-l", "info", "--web-port", str(port)],
                # An installed package runs where the demo was started, never in site-packages.
                cwd=PROJECT_ROOT if SOURCE_CHECKOUT else None,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Our own session: Ctrl-C reaches the demo, which then stops workers in order.
                start_new_session=True,
            )  # fmt: skip
        started.append(Worker(i + 1, port, proc, log, settings.local_url(port)))
    return started


def wait_ready(workers: list[Worker], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    pending = list(workers)
    while pending and time.monotonic() < deadline:
        for w in list(pending):
            if w.proc.poll() is not None:
                tail = w.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"worker {w.index} exited while starting:\n{tail}")
            if _get(w.url + "/readyz/tables")[0] == 200:
                pending.remove(w)
        time.sleep(0.5)
    if pending:
        raise RuntimeError(f"workers {[w.index for w in pending]} not ready after {timeout}s")


def seed_stock(worker: Worker, token: str, skus: int = 50, units: int = 500) -> None:
    """Stock for the SKUs the generator orders, so most orders are confirmed (a few run out)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for i in range(skus):
        body = json.dumps({"available": units if i % 10 else 20}).encode()
        url = f"{worker.url}/inventory/sku-{i:03d}"
        request = urllib.request.Request(url, data=body, method="PUT", headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - loopback only
            pass


def stop_workers(workers: list[Worker]) -> None:
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.proc.wait(30)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(10)


async def generate_orders(
    workers: list[Worker],
    rate: float,
    stop: asyncio.Event,
    progress: Progress,
    seed: int,
    token: str,
) -> None:
    """Orders through the API from many customers (a few of them frequent), some cancelled
    later, a few invalid; each request goes to the next worker in turn."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible load, not a secret
    customers = [f"customer-{i:04d}" for i in range(200)]
    weights = [1 / (i + 1) for i in range(len(customers))]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    recent: list[str] = []
    n = 0
    async with aiohttp.ClientSession(headers=headers) as http:
        while not stop.is_set():
            base = workers[n % len(workers)].url
            n += 1
            customer = rng.choices(customers, weights)[0]
            body: dict[str, Any] = {
                "customer_id": customer,
                "customer_email": f"{customer}@example.com",
                "items": [
                    {"sku": f"sku-{rng.randrange(50):03d}", "quantity": rng.randint(1, 3),
                     "unit_price": str(Decimal(rng.randrange(199, 9999)) / 100)}
                    for _ in range(rng.randint(1, 3))
                ],
            }  # fmt: skip
            if rng.random() < 0.02:
                body["items"][0]["quantity"] = 0  # an invalid order: the API answers 422
            try:
                async with http.post(f"{base}/orders", json=body) as resp:
                    reply = await resp.json()
                    if resp.status == 201:
                        progress.created += 1
                        progress.customers.add(customer)
                        recent.append(reply["order_id"])
                    else:
                        progress.rejected += 1
                if len(recent) > 20 and rng.random() < 0.1:
                    victim = recent.pop(rng.randrange(len(recent)))
                    async with http.post(f"{base}/orders/{victim}/cancel") as resp:
                        if resp.status == 200:
                            progress.cancelled += 1
            except aiohttp.ClientError:
                progress.rejected += 1
            recent = recent[-200:]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / rate)


def report(workers: list[Worker], progress: Progress, started: float, token: str = "") -> str:
    """One line of live progress: what the generator sent, and the cluster's figures as the
    dashboard sees them (any worker gathers them from all)."""
    sent = (
        f"[{time.monotonic() - started:6.1f}s] orders created {progress.created:6d}  "
        f"cancelled {progress.cancelled:5d}  refused {progress.rejected:4d}"
    )
    status, data = _get(f"{workers[-1].url}/dashboard/data", token)
    if status != 200 or not data:
        return sent + "  | workers busy (rebalancing?)"
    throughput = data["throughput"]
    processed = sum(a["events_processed"] for a in throughput["by_agent"])
    dead = (data.get("dead_letters") or {}).get("total", "?")
    backlog = (data.get("outbox") or {}).get("backlog", "?")
    return (
        f"{sent}  | events processed {processed:8.0f} ({throughput['events_per_second']:6.1f}/s)  "
        f"lag {data['consumer_lag']['total']:5d}  outbox {backlog}  dead letters {dead}"
    )


async def run_flow(settings: Settings, workers: list[Worker], args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.duration:
        loop.call_later(args.duration, stop.set)
    progress = Progress()
    started = time.monotonic()
    token = settings.api_token.get()
    generator = asyncio.create_task(
        generate_orders(workers, args.rate, stop, progress, args.seed, token)
    )
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
        print(await asyncio.to_thread(report, workers, progress, started, token), flush=True)
    await generator
    await asyncio.sleep(2)  # let the workers drain what was just sent
    print(await asyncio.to_thread(report, workers, progress, started, token), flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{prog()} demo")
    parser.add_argument("--duration", type=float, default=0, help="seconds; 0 runs until Ctrl-C")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=50.0, help="orders per second")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    settings = load_settings()

    from pipeline.local.kafka import from_settings

    broker = None if settings.kafka_external else from_settings(settings)
    we_started_broker = False
    workers: list[Worker] = []
    try:
        if broker is not None:
            we_started_broker = broker.running_pid() is None
            print(f"starting local Kafka {settings.kafka_version} ...", flush=True)
            print(f"kafka at {broker.start()}", flush=True)
        else:
            print(f"using your Kafka at {settings.kafka_bootstrap_servers}", flush=True)
        migrate(settings.database_url)
        workers = start_workers(settings, args.workers, settings.web_port)
        print(f"starting {len(workers)} workers (logs in {settings.data_dir / 'logs'}) ...")
        wait_ready(workers)
        for w in workers:
            print(f"worker {w.index}: {w.url}  (try {w.url}/customers/customer-0000/stats)")
        print(f"dashboard: {workers[0].url}/dashboard  (live; any worker serves it)", flush=True)
        seed_stock(workers[0], settings.api_token.get())
        print("feeding orders; Ctrl-C stops everything the demo started", flush=True)
        asyncio.run(run_flow(settings, workers, args))
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping workers ...", flush=True)
        stop_workers(workers)
        if broker is not None and we_started_broker:
            print("stopping local Kafka ...", flush=True)
            broker.stop()
        print("demo stopped", flush=True)
