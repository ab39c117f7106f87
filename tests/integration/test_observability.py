"""What a real worker's ``/metrics`` says once it has done some work: HTTP requests counted by
route template and status, its rebalance and offset commits, its consumer lag by group, the
process and garbage-collector collectors; and every metric that the alert rules and the
Grafana dashboard in ``deploy/`` query is one it exports."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pipeline.adapters.db.schema import migrate
from tests.integration.workers import (
    Worker,
    WorkerFactory,
    free_port,
    http_get,
    metric,
    produce,
    wait_for,
)
from tests.monitoring import (
    PROMETHEUS_CONFIG,
    RULES,
    alert_rules,
    dashboard_expressions,
    exported_names,
    prometheus,
    queried_names,
)

STATS = "/customers/{customer_id}/stats"
# A labelled counter whose first sample comes with an event this test does not cause (a
# retry): its family is declared from the start (``# TYPE``).
ONLY_ON_EVENTS = {"pipeline_retries_total"}


def order(customer: str) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "customer_email": f"{customer}@example.com",
        "items": [{"sku": "sku-1", "quantity": 2, "unit_price": "5.25"}],
    }


def requests(text: str, method: str, route: str, code: str) -> float:
    return metric(text, "pipeline_http_requests_total", method=method, route=route,
                  code=code) or 0.0  # fmt: skip


def lag_labels(text: str) -> set[tuple[str, str]]:
    """The (group, topic) of each consumer lag sample."""
    return {(s.labels["group"], s.labels["topic"])
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "pipeline_consumer_lag"}  # fmt: skip


@pytest.fixture
def worker(workers: WorkerFactory, sqlite_url: str) -> Iterator[Worker]:
    migrate(sqlite_url)
    yield workers.start()


def test_http_requests_are_counted_and_timed_by_route_template(worker: Worker) -> None:
    before = worker.metrics()
    # every route shows at zero before its first request
    assert metric(before, "pipeline_http_request_duration_seconds_count", method="GET",
                  route=STATS) == 0  # fmt: skip
    customer = f"obs-{uuid.uuid4().hex[:8]}"
    assert worker.post("/orders", order(customer))[0] == 201
    assert worker.post("/orders", {"customer_id": customer})[0] == 422
    assert worker.post("/orders", b"{not json")[0] == 400
    assert worker.get("/customers/nobody-here/stats")[0] == 404
    assert worker.get("/no/such/route")[0] == 404

    after = worker.metrics()
    for method, route, code, more in [
        ("POST", "/orders", "201", 1),
        ("POST", "/orders", "422", 1),
        ("POST", "/orders", "400", 1),
        ("GET", STATS, "404", 1),
        ("GET", "unmatched", "404", 1),
    ]:
        assert requests(after, method, route, code) - requests(before, method, route, code) == more
    wait_for(lambda: worker.get(f"/customers/{customer}/stats")[0] == 200, 60,
             "the order to reach the customer's stats")  # fmt: skip
    assert requests(worker.metrics(), "GET", STATS, "200") >= 1
    timed = metric(after, "pipeline_http_request_duration_seconds_count", method="POST",
                   route="/orders")  # fmt: skip
    assert timed is not None and timed >= 3
    # one series per route: no customer id, no raw path in any label
    final = worker.metrics()
    assert customer not in final and "nobody-here" not in final and "/no/such" not in final
    assert requests(final, "GET", "/metrics", "200") >= 2


def test_the_worker_exports_its_rebalance_commits_lag_and_process(
    worker: Worker, workers: WorkerFactory
) -> None:
    customer = f"obs-{uuid.uuid4().hex[:8]}"
    assert worker.post("/orders", order(customer))[0] == 201

    def committed() -> str | None:
        text = worker.metrics()
        count = metric(text, "pipeline_offset_commit_duration_seconds_count")
        return text if count and count > 0 else None

    text = wait_for(committed, 60, "an offset commit")
    assert (metric(text, "pipeline_offset_commit_failures_total") or 0) == 0
    assert (metric(text, "pipeline_rebalances_total") or 0) >= 1  # it joined its group
    assert (metric(text, "pipeline_rebalance_duration_seconds_count") or 0) >= 1
    assert metric(text, "pipeline_rebalancing") == 0  # ready: the rebalance ended
    lagged = wait_for(lambda: lag_labels(worker.metrics()), 30, "the consumer lag")
    assert {(workers.app_id, workers.topic("orders.events"))} <= lagged
    assert metric(text, "pipeline_outbox_parked_rows") == 0
    assert (metric(text, "process_resident_memory_bytes") or 0) > 10_000_000
    assert (metric(text, "process_cpu_seconds_total") or 0) > 0
    assert metric(text, "python_gc_collections_total", generation="0") is not None


def test_every_metric_the_alerts_and_the_dashboard_query_is_exported(
    worker: Worker, workers: WorkerFactory, kafka_bootstrap: str
) -> None:
    customer = f"obs-{uuid.uuid4().hex[:8]}"
    assert worker.post("/orders", order(customer))[0] == 201
    poison = b'{"event_type": "OrderCreated", "event_id": "no-other-fields"}'
    asyncio.run(produce(kafka_bootstrap, workers.topic("orders.events"),
                        [(customer.encode(), poison)]))  # fmt: skip

    def worked() -> str | None:
        text = worker.metrics()
        sampled, _ = exported_names(text)
        done = {"pipeline_dead_letters_total", "pipeline_events_processed_total",
                "pipeline_offset_commit_duration_seconds_count"}  # fmt: skip
        return text if done <= sampled else None

    text = wait_for(worked, 90, "an order handled, a poison pill dead-lettered, a commit")
    sampled, declared = exported_names(text)
    queried = queried_names()
    missing = {n: sorted(w) for n, w in queried.items() if n not in sampled | declared}
    assert not missing, f"queried by deploy/ but not exported by the worker: {missing}"
    unseen = {n for n in queried if n not in sampled}
    assert unseen <= ONLY_ON_EVENTS, f"declared but never sampled: {sorted(unseen)}"


def test_a_real_prometheus_scrapes_the_worker_and_evaluates_the_rules_and_the_dashboard(
    worker: Worker, tmp_path: Path
) -> None:
    """Debian's Prometheus server, scraping the worker every second with the rules in
    ``deploy/``: every rule evaluates without error, the dashboard's queries return data, and
    once the worker stops, ``PipelineWorkerDown`` is pending."""
    port = free_port()
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{worker.web_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (tmp_path / "prometheus.log").open("wb") as log:
        server = subprocess.Popen(
            [prometheus(), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list[Any]:
        status, body = http_get(f"{api}/query?{urlencode({'query': expr})}")
        assert status == 200 and body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    try:
        wait_for(lambda: _answers(f"{api}/status/buildinfo"), 30, "Prometheus to start")
        for n in range(3):
            assert worker.post("/orders", order(f"prom-{n}-{uuid.uuid4().hex[:6]}"))[0] == 201
        assert worker.get("/customers/nobody-here/stats")[0] == 404
        wait_for(lambda: query('pipeline_offset_commit_duration_seconds_count > 0'), 60,
                 "a scrape after an offset commit")  # fmt: skip
        time.sleep(5)  # a few more scrapes, for the rates

        _, rules = http_get(f"{api}/rules")
        evaluated = [r for g in rules["data"]["groups"] for r in g["rules"]]
        assert len(evaluated) == len(alert_rules())
        assert [r for r in evaluated if r["health"] != "ok"] == []
        queries = dashboard_expressions(as_promql=True, rate_interval="10s")
        answers = {expr: query(expr) for expr in queries}
        empty = {expr for expr, result in answers.items() if not result}
        for shown in ("pipeline_orders_created_total", "pipeline_http_request_duration_seconds",
                      "pipeline_consumer_lag", "pipeline_outbox_oldest_unpublished_age_seconds",
                      "pipeline_offset_commit_duration_seconds", "process_resident_memory_bytes",
                      "python_gc_collections_total", "pipeline_rebalances_total"):  # fmt: skip
            showing = {expr for expr in answers if shown in expr}
            assert showing and not showing & empty, (shown, showing & empty)
        assert not query('ALERTS{alertname="PipelineWorkerDown"}')

        worker.stop()

        def pending() -> list[Any]:
            return query('ALERTS{alertname="PipelineWorkerDown", alertstate="pending"}')

        [alert] = wait_for(pending, 30, "PipelineWorkerDown pending")
        assert alert["metric"]["severity"] == "critical"
    finally:
        server.terminate()
        server.wait(30)


def _answers(url: str) -> bool:
    try:
        return http_get(url)[0] == 200
    except OSError:
        return False
