"""What the monitoring files in ``deploy/`` query, and what a ``/metrics`` page exports, for the
tests that hold the two together (``tests/unit/test_deploy.py``, and on a real worker
``tests/integration/test_observability.py``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "orders-pipeline.json"

# The names our processes export: ours, and the process, platform and GC collectors'. ``up`` is
# Prometheus' own (1 when a scrape succeeded), not exported by anyone.
METRIC_NAME = re.compile(r"(?<![\w:])(?:pipeline|process|python)_[A-Za-z0-9_:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
# Grafana's variables, with values that keep an expression valid PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$job": ".*"}

# The sample names a family of each type exports (a counter's family name has no ``_total``).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}


def promtool() -> str:
    """The path of ``promtool``, or a failure that says how to get it."""
    return _installed("promtool")


def prometheus() -> str:
    """The path of the Prometheus server (the same package as ``promtool``)."""
    return _installed("prometheus")


def _installed(program: str) -> str:
    found = shutil.which(program)
    assert found, (
        f"{program} is missing: install Debian's prometheus package (`make promtool`, or "
        "`apt-get install -y prometheus` as root)"
    )
    return found


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_expressions(*, as_promql: bool = False, rate_interval: str = "5m") -> list[str]:
    """Every panel query; ``as_promql``: with Grafana's variables given values."""
    values = {**GRAFANA_VARIABLES, "$__rate_interval": rate_interval}
    found = []
    for panel in dashboard_panels():
        for target in panel["targets"]:
            expr = target["expr"]
            if as_promql:
                for variable, value in values.items():
                    expr = expr.replace(variable, value)
            found.append(expr)
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (string literals, label values, skipped)."""
    return set(METRIC_NAME.findall(STRING.sub('""', expr)))


def queried_names() -> dict[str, set[str]]:
    """Each metric name the alert rules and the dashboard query, with where."""
    where: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names(str(rule["expr"])):
            where.setdefault(name, set()).add(f"alert {rule['alert']}")
    for panel in dashboard_panels():
        for target in panel["targets"]:
            for name in metric_names(target["expr"]):
                where.setdefault(name, set()).add(f"panel {panel['title']!r}")
    return where


def exported_names(exposition: str) -> tuple[set[str], set[str]]:
    """From a ``/metrics`` page: the names of the samples it holds, and the names its declared
    families would give samples (a labelled family before its first sample is declared with
    ``# TYPE`` alone)."""
    sampled: set[str] = set()
    declared: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        sampled.update(sample.name for sample in family.samples)
        declared.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return sampled, declared
