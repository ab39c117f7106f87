"""Real worker processes (``python -m pipeline worker``) and Kafka helpers for the tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from pipeline.adapters.db.schema import migrate
from pipeline.local.postgres import LocalPostgres, LocalPostgresError
from pipeline.settings import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _call(request: urllib.request.Request | str, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


def http_get(
    url: str, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    return _call(urllib.request.Request(url, headers=headers or {}), timeout)


def http_post(
    url: str, body: Any, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return _call(urllib.request.Request(url, data=data, method="POST", headers=headers or {}),
                 timeout)  # fmt: skip


def http_put(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    return _call(urllib.request.Request(url, data=data, method="PUT", headers=headers or {}), 10)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly ``labels`` in Prometheus text output
    (parsed, so the order the labels are printed in does not matter)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    web_port: int
    data_dir: Path
    log_path: Path
    # Where "partitions assigned and tables recovered" is asked: the previous release (run by
    # the rolling-upgrade test) answered it on /readyz.
    ready_path: str = "/readyz/tables"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def get(self, path: str) -> tuple[int, Any]:
        return http_get(self.url + path)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return http_post(self.url + path, body, headers)

    def put(self, path: str, body: Any) -> tuple[int, Any]:
        return http_put(self.url + path, body)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
                )
            try:
                return self.get(self.ready_path)[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout, f"worker {self.name} to be ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@dataclass
class WorkerFactory:
    bootstrap: str
    root: Path
    app_id: str
    topic_prefix: str
    database_url: str
    partitions: int = 4
    started: list[Worker] = field(default_factory=list)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "KAFKA_"))}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            DATABASE_URL=self.database_url,
            PIPELINE_APP_ID=self.app_id,
            PIPELINE_TOPIC_PREFIX=self.topic_prefix,
            PIPELINE_PARTITIONS=str(self.partitions),
            PIPELINE_STORE="rocksdb://",
            PYTHONUNBUFFERED="1",
        )
        env.update(overrides)
        return env

    def topic(self, base: str) -> str:
        return f"{self.topic_prefix}{base}"

    def start(self, name: str = "w1", *, data_dir: Path | None = None, wait: bool = True,
              code: Path | None = None, port: int | None = None, **env: str
              ) -> Worker:  # fmt: skip
        """Start a worker of this checkout, or of the release whose packages (``pipeline``,
        ``agents``, ``tables``) are under ``code`` (run from there, so they are imported first)."""
        if code is not None:
            env["PYTHONPATH"] = str(code)
        data_dir = data_dir or self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        log_path = data_dir / f"worker-{len(self.started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "worker", "-l", "info", "--web-port", str(port)],
                cwd=code or PROJECT_ROOT,
                env=self.env(PIPELINE_DATA_DIR=str(data_dir), **env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        worker = Worker(name, proc, port, data_dir, log_path,
                        ready_path="/readyz" if code is not None else "/readyz/tables")  # fmt: skip
        self.started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


# -- Kafka helpers ---------------------------------------------------------------------------------


async def create_topics(bootstrap: str, names: list[str], partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, records: list[tuple[Any, ...]]) -> None:
    """Send ``(key, value)`` or ``(key, value, headers)`` records, each acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value, *headers in records:
            await producer.send_and_wait(topic, value, key=key,
                                         headers=list(headers[0]) if headers else None)  # fmt: skip
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, *, count: int, timeout: float = 30.0) -> list[Any]:
    """Read ``count`` records from the start of ``topic`` (fewer if the timeout expires)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            batch = await consumer.getmany(timeout_ms=int(min(remaining, 1.0) * 1000))
            for partition_records in batch.values():
                records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


def drop_test_database(postgres: LocalPostgres | None, name: str | None) -> None:
    """Drop a database a test made (none: it made none), warning when the server is down."""
    if postgres is None or name is None:
        return
    try:
        postgres.drop_database(name)
    except LocalPostgresError as exc:  # the server is down after a failed fault test
        warnings.warn(f"test database {name} left behind: {exc}", stacklevel=1)


@contextmanager
def migrated_workers(
    bootstrap: str, root: Path, test_id: str, database_url: str
) -> Iterator[WorkerFactory]:
    """Workers on ``bootstrap`` and ``database_url`` (migrated first), all stopped after."""
    migrate(database_url)
    workers = WorkerFactory(bootstrap, root, f"it-{test_id}", f"t{test_id}.", database_url)
    try:
        yield workers
    finally:
        workers.stop_all()
