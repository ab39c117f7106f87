"""The monitoring files in ``deploy/`` hold: Prometheus (``promtool``, Debian's prometheus
package) takes the alert rules and the scrape configuration, the rules' own unit tests fire
the alerts they should, the dashboard's queries are valid PromQL, every alert says how bad it
is and where its runbook is, and every metric they query is one our metrics declare (on a real
worker that has done some work: ``tests/integration/test_observability.py``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.metrics import Metrics
from tests.monitoring import (
    DASHBOARD,
    PROMETHEUS_CONFIG,
    ROOT,
    RULE_TESTS,
    RULES,
    alert_rules,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    exported_names,
    metric_names,
    promtool,
    queried_names,
)
from tests.unit.test_docs import anchors

OPERATIONS = ROOT / "docs" / "operations.md"


def run_promtool(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def test_promtool_takes_the_alert_rules() -> None:
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_takes_the_example_scrape_configuration_with_its_rules() -> None:
    result = run_promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_in_their_promtool_unit_tests() -> None:
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_fails_a_rule_test_whose_alert_does_not_fire(tmp_path: Path) -> None:
    """The rule tests can fail: the same file, expecting a wrong value, does not pass."""
    (tmp_path / RULES.name).write_text(RULES.read_text())
    tests = RULE_TESTS.read_text()
    assert "the oldest outbox row is 5m 0s old" in tests
    (tmp_path / RULE_TESTS.name).write_text(tests.replace("is 5m 0s old", "is 4m 0s old"))
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0 and "PipelineOutboxStalled" in result.stdout + result.stderr


def test_the_rule_tests_cover_several_alerts() -> None:
    tested = {line.split(":", 1)[1].strip() for line in RULE_TESTS.read_text().splitlines()
              if line.strip().startswith("alertname:")}  # fmt: skip
    assert len(tested) >= 2 and tested <= {rule["alert"] for rule in alert_rules()}


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_each_alert_says_how_bad_it_is_and_where_its_runbook_is(rule: dict[str, object]) -> None:
    assert rule.get("for"), "an alert needs a for: so that one bad scrape does not page"
    labels, notes = rule["labels"], rule["annotations"]
    assert isinstance(labels, dict) and labels.get("severity") in ("critical", "warning")
    assert isinstance(notes, dict) and notes.get("summary") and notes.get("description")
    page, _, anchor = str(notes["runbook_url"]).partition("#")
    assert page == "docs/operations.md"
    assert anchor in anchors(OPERATIONS), f"no heading #{anchor} in docs/operations.md"


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel's query, its Grafana variables given values, as a recording rule promtool
    parses."""
    rules = [{"record": f"dashboard:query{n}", "expr": expr}
             for n, expr in enumerate(dashboard_expressions(as_promql=True))]  # fmt: skip
    import yaml

    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 30
    assert "datasource" in {v["name"] for v in board["templating"]["list"]}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize(
    ("what", "metric"),
    [
        ("orders intake", "pipeline_orders_created_total"),
        ("HTTP latency per route", "pipeline_http_request_duration_seconds_bucket"),
        ("HTTP errors", "pipeline_http_requests_total"),
        ("consumer lag", "pipeline_consumer_lag"),
        ("outbox waiting", "pipeline_outbox_backlog"),
        ("outbox oldest row", "pipeline_outbox_oldest_unpublished_age_seconds"),
        ("parked rows", "pipeline_outbox_parked_rows"),
        ("dead letters", "pipeline_dead_letters_total"),
        ("rebalances", "pipeline_rebalances_total"),
        ("commit latency", "pipeline_offset_commit_duration_seconds_bucket"),
        ("commit failures", "pipeline_offset_commit_failures_total"),
        ("process memory", "process_resident_memory_bytes"),
        ("process CPU", "process_cpu_seconds_total"),
        ("garbage collector", "python_gc_collections_total"),
    ],
)
def test_the_dashboard_shows(what: str, metric: str) -> None:
    assert any(metric in metric_names(expr) for expr in dashboard_expressions()), what


def test_the_metric_name_finder_skips_label_values_and_functions() -> None:
    expr = (
        'sum by (route) (rate(pipeline_http_requests_total{code=~"5..", route="pipeline_x"}'
        "[5m])) / on() group_left process_cpu_seconds_total"
    )
    assert metric_names(expr) == {"pipeline_http_requests_total", "process_cpu_seconds_total"}


def test_every_metric_the_alerts_and_dashboard_query_is_declared() -> None:
    sampled, declared = exported_names(Metrics().render().decode())
    missing = {name: where for name, where in queried_names().items()
               if name not in sampled | declared}  # fmt: skip
    assert not missing, f"queried but not exported: {missing}"
    assert DASHBOARD.exists()
