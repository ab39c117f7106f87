"""The Procfile, run by a Procfile runner (honcho) as a user would: a web worker, a worker and
the separate outbox forwarder, on real Kafka and SQLite. An order posted to the web worker is
published by the forwarder process (the workers' own forwarders are off) and decided by the
agents; every process stops on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from pipeline.adapters.db.schema import migrate
from pipeline.settings import PROJECT_ROOT
from tests.integration.workers import free_port, http_get, http_post, http_put, metric, wait_for


def _base_port() -> int:
    """A base port with its +100 and +200 neighbours free (honcho's port per process type)."""
    for _ in range(50):
        base = free_port()
        if base + 200 < 65536 and all(_free(base + step) for step in (100, 200)):
            return base
    raise AssertionError("no free port triple")


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _up(url: str) -> bool:
    try:
        return http_get(url, timeout=2)[0] == 200
    except OSError:
        return False


def test_the_procfile_runs_web_worker_and_forwarder_under_honcho(
    kafka_bootstrap: str, tmp_path: Path, test_id: str, sqlite_url: str
) -> None:
    migrate(sqlite_url)
    base = _base_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "KAFKA_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        DATABASE_URL=sqlite_url,
        PIPELINE_APP_ID=f"it-{test_id}",
        PIPELINE_TOPIC_PREFIX=f"t{test_id}.",
        PIPELINE_DATA_DIR=str(tmp_path),
        PIPELINE_FORWARDER_ENABLED="false",
        PIPELINE_OUTBOX_POLL_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path / "honcho.log"
    with log_path.open("wb") as log:
        honcho = subprocess.Popen(
            [str(Path(sys.executable).parent / "honcho"), "-f", str(PROJECT_ROOT / "Procfile"),
             "-d", str(tmp_path), "start", "-p", str(base), "web", "worker", "forwarder"],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    web, worker, forwarder = (f"http://127.0.0.1:{base + step}" for step in (0, 100, 200))
    try:
        for url in (web + "/readyz/tables", worker + "/readyz/tables", forwarder + "/livez"):
            wait_for(lambda u=url: _up_under(honcho, u, log_path), 120,
                     f"{url} ({log_path.read_text(errors='replace')[-3000:]})")  # fmt: skip
        assert (tmp_path / f"state-{base}").is_dir()  # each worker its own state dir
        assert (tmp_path / f"state-{base + 100}").is_dir()

        assert http_put(web + "/inventory/sku-proc", {"available": 10})[0] == 202
        status, placed = http_post(web + "/orders", {
            "customer_id": "cust-procfile", "customer_email": "c@example.com",
            "items": [{"sku": "sku-proc", "quantity": 2, "unit_price": "4.50"}],
        })  # fmt: skip
        assert status == 201, placed
        order_url = f"{web}/orders/{placed['order_id']}"
        wait_for(lambda: http_get(order_url)[1].get("status") == "confirmed", 90,
                 "the order to be confirmed")  # fmt: skip

        # One order followed through the JSON logs of every process by its id.
        order_id = placed["order_id"]
        wait_for(lambda: "notifications" in _trace(log_path, order_id), 30, "the notification")
        trace = _trace(log_path, order_id)
        assert trace["order-api"] == ["order created for cust-procfile: 1 lines, total 9.00"]
        assert trace["analytics"] == ["analytics handled OrderCreated"]
        assert trace["inventory-requests"] == ["inventory-requests handled OrderCreated"]
        assert "inventory handled LineReservationRequested" in trace["inventory"]
        assert "order-status handled InventoryReserved" in trace["order-status"]
        assert "notifications handled OrderConfirmed" in trace["notifications"]

        text = _text(forwarder + "/metrics")
        assert metric(text, "pipeline_outbox_forwarder_active") == 1
        assert (metric(text, "pipeline_outbox_published_total") or 0) >= 1
        processed: dict[str, float] = {}
        for url in (web, worker):  # the workers published nothing themselves
            text = _text(url + "/metrics")
            assert metric(text, "pipeline_outbox_published_total") == 0
            for agent in ("analytics", "order-status"):
                count = metric(text, "pipeline_events_processed_total", agent=agent) or 0
                processed[agent] = processed.get(agent, 0) + count
            wait_for(lambda u=url: "pipeline_consumer_lag{" in _text(u + "/metrics"), 15,
                     f"consumer lag samples at {url}")  # fmt: skip
        assert processed["analytics"] >= 1 and processed["order-status"] >= 1
    finally:
        with contextlib.suppress(ProcessLookupError):  # honcho already stopped everything
            os.killpg(honcho.pid, signal.SIGTERM)
        try:
            honcho.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            raise
    assert not any(_up(u + "/healthz") for u in (web, worker, forwarder))


def _up_under(honcho: subprocess.Popen[bytes], url: str, log_path: Path) -> bool:
    """Is ``url`` answering? Fails at once, with the log, when honcho has stopped (it stops
    every process when one of them exits), rather than waiting out the deadline."""
    if honcho.poll() is not None:
        raise AssertionError(
            f"honcho exited ({honcho.returncode}) before {url} answered: "
            f"{log_path.read_text(errors='replace')[-3000:]}"
        )
    return _up(url)


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def _trace(log_path: Path, order_id: str) -> dict[str, list[str]]:
    """The JSON log lines of every process carrying ``order_id``: messages by agent (the
    order API's under "order-api")."""
    found: dict[str, list[str]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        _, sep, body = line.partition("| ")
        if not sep or not body.startswith("{"):
            continue
        try:
            record = json.loads(body)
        except ValueError:
            continue
        if record.get("order_id") == order_id and record.get("logger") == "pipeline.trace":
            found.setdefault(record.get("agent", "order-api"), []).append(record["message"])
    return found
