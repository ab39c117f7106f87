"""Pure helpers for the benchmarks: percentiles, spreads, the open-loop schedule, the targets
and the one summary table. No I/O here, so each piece is unit tested (tests/unit/test_bench.py).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The keys latest.json must hold (issue 8), dotted paths into the nested result.
REQUIRED_KEYS = (
    "pipeline.events_per_s",
    "pipeline.baseline_loop_events_per_s",
    "pipeline.ratio",
    # issue 17: the peer (a Quix Streams application doing the same work), stock Faust, scaling
    "pipeline.quix_events_per_s",
    "pipeline.vs_quix",
    "pipeline.stock_faust_events_per_s",
    "pipeline.two_workers_ratio",
    "forwarder.rows_per_s",
    "forwarder.baseline_insert_rows_per_s",
    "forwarder.ratio",
    "forwarder.commit_to_ack_p99_ms",
    "e2e.p99_ms_half_load",
    "recovery.keys_per_s",
    # issue 17: recovery against Kafka's consumer tool, and RSS flat in the key count
    "recovery.vs_consumer_tool",
    "memory.rss_growth_ratio",
)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(len(ordered), max(rank, 1)) - 1]


def spread(runs: Sequence[float]) -> dict[str, float]:
    """Median, lowest and highest of repeated runs."""
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs)}


def open_loop_schedule(rate: float, seconds: float) -> list[float]:
    """Intended send times (seconds from the start) of a constant-rate open loop.

    Latencies are measured from these times, not from when a request actually went out, so a
    stall that delays the sender shows up in the figures instead of hiding (coordinated
    omission)."""
    if rate <= 0 or seconds <= 0:
        return []
    return [n / rate for n in range(int(rate * seconds))]


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline`` to three places; None when either is missing or the baseline is not
    positive (a ratio to nothing is no figure)."""
    if value is None or baseline is None or not baseline > 0 or math.isnan(value):
        return None
    return round(value / baseline, 3)


def against(value: float | None, baselines: Mapping[str, float | None]) -> str:
    """``value`` as a ratio to each named baseline: ``0.46x loop, 0.52x Quix`` (``-`` for a
    baseline not measured)."""
    return ", ".join(
        f"{_num(ratio(value, baseline), '.2f')}x {name}" for name, baseline in baselines.items()
    )


def get_path(result: Mapping[str, Any], dotted: str) -> Any:
    node: Any = result
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def missing_keys(result: Mapping[str, Any]) -> list[str]:
    """The required keys that are absent or not numbers, plus ``meta`` if absent."""
    missing = [
        key
        for key in REQUIRED_KEYS
        if not isinstance(get_path(result, key), int | float)
        or isinstance(get_path(result, key), bool)
    ]
    if not isinstance(result.get("meta"), Mapping):
        missing.append("meta")
    return missing


@dataclass(frozen=True)
class Target:
    """A target on a figure: at least (``higher=True``) or below ``bound``."""

    bound: float
    higher: bool
    text: str

    def verdict(self, value: float | None) -> str:
        if value is None or math.isnan(value):
            return "not measured"
        if (value >= self.bound) if self.higher else (value < self.bound):
            return "met"
        if self.higher:
            return f"MISSED by {(1 - value / self.bound) * 100:.0f}%"
        return f"MISSED by {(value / self.bound - 1) * 100:.0f}%"


TARGETS = {
    "pipeline.ratio": Target(0.8, True, ">= 0.8x"),
    "pipeline.vs_quix": Target(1.0, True, ">= 1.0x"),
    "forwarder.ratio": Target(1.0, True, ">= 1.0x"),
    "forwarder.commit_to_ack_p99_ms": Target(50.0, False, "p99 < 50 ms"),
    "e2e.p99_ms_half_load": Target(100.0, False, "p99 < 100 ms"),
    "recovery.keys_per_s": Target(100_000.0, True, ">= 100k keys/s"),
    "recovery.vs_consumer_tool": Target(0.1, True, ">= 0.1x"),
    "memory.rss_growth_ratio": Target(1.5, False, "<= 1.5x"),
}


def _num(value: Any, fmt: str) -> str:
    if not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def summary_rows(r: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, figure, baseline, target and verdict) for every figure in a result."""
    g = lambda key: get_path(r, key)  # noqa: E731 - a local shorthand
    rows: list[tuple[str, str, str, str]] = []

    def add(what: str, figure: str, baseline: str, key: str | None = None) -> None:
        target = TARGETS.get(key or "")
        verdict = f"{target.text}: {target.verdict(g(key or ''))}" if target else ""
        rows.append((what, figure, baseline, verdict))

    if g("kafka_tools") is not None:
        add(
            "kafka-producer-perf-test (~300 B, acks=all)",
            f"{_num(g('kafka_tools.producer_records_per_s'), ',.0f')} rec/s",
            "",
        )
        add("kafka-consumer-perf-test (orders topic)",
            f"{_num(g('kafka_tools.consumer_records_per_s'), ',.0f')} rec/s", "")  # fmt: skip
    if g("pipeline") is not None:
        add(
            "pipeline, one worker",
            f"{_num(g('pipeline.events_per_s'), ',.0f')} events/s",
            f"aiokafka loop {_num(g('pipeline.baseline_loop_events_per_s'), ',.0f')}/s",
        )
        add("pipeline / plain loop", f"{_num(g('pipeline.ratio'), '.2f')}x", "", "pipeline.ratio")
        if g("pipeline.quix_events_per_s") is not None:
            add(
                "pipeline / Quix Streams",
                f"{_num(g('pipeline.vs_quix'), '.2f')}x",
                f"Quix {_num(g('pipeline.quix_events_per_s'), ',.0f')}/s",
                "pipeline.vs_quix",
            )
        if g("pipeline.stock_faust_events_per_s") is not None:
            add(
                "pipeline, stock Faust",
                f"{_num(g('pipeline.stock_faust_events_per_s'), ',.0f')} events/s",
                f"one worker {_num(g('pipeline.events_per_s'), ',.0f')}/s",
            )
        if g("pipeline.two_workers_events_per_s") is not None:
            add("pipeline, two workers",
                f"{_num(g('pipeline.two_workers_events_per_s'), ',.0f')} events/s "
                f"({_num(g('pipeline.two_workers_ratio'), '.2f')}x)",
                f"one worker {_num(g('pipeline.events_per_s'), ',.0f')}/s")  # fmt: skip
    if g("forwarder") is not None:
        add(
            "forwarder drain",
            f"{_num(g('forwarder.rows_per_s'), ',.0f')} rows/s",
            f"asyncpg inserts {_num(g('forwarder.baseline_insert_rows_per_s'), ',.0f')}/s",
        )
        add(
            "forwarder / insert loop",
            f"{_num(g('forwarder.ratio'), '.2f')}x",
            "",
            "forwarder.ratio",
        )
        add("commit -> Kafka ack, half load",
            f"p99 {_num(g('forwarder.commit_to_ack_p99_ms'), '.1f')} ms",
            f"p50 {_num(g('forwarder.commit_to_ack_p50_ms'), '.1f')} ms",
            "forwarder.commit_to_ack_p99_ms")  # fmt: skip
    if g("e2e") is not None:
        add(
            "e2e max rate (2 workers, POST -> stats)",
            f"{_num(g('e2e.max_orders_per_s'), ',.0f')} orders/s",
            "",
        )
        for load in ("half", "80pct"):
            add(f"e2e POST -> stats at {_num(g(f'e2e.{load}_load_orders_per_s'), ',.0f')}/s",
                f"p99 {_num(g(f'e2e.p99_ms_{load}_load'), ',.0f')} ms",
                f"p50 {_num(g(f'e2e.p50_ms_{load}_load'), ',.0f')}, "
                f"p99.9 {_num(g(f'e2e.p999_ms_{load}_load'), ',.0f')} ms",
                "e2e.p99_ms_half_load" if load == "half" else None)  # fmt: skip
    if g("recovery") is not None:
        add(f"recovery of {_num(g('recovery.keys'), ',.0f')} keys",
            f"{_num(g('recovery.keys_per_s'), ',.0f')} keys/s "
            f"({_num(g('recovery.seconds'), '.1f')} s)",
            f"consumer tool {_num(g('recovery.baseline_consumer_records_per_s'), ',.0f')} rec/s",
            "recovery.keys_per_s")  # fmt: skip
        add("recovery / consumer tool", f"{_num(g('recovery.vs_consumer_tool'), '.3f')}x", "",
            "recovery.vs_consumer_tool")  # fmt: skip
    if g("memory") is not None:
        add("worker RSS per million keys",
            f"{_num(g('memory.rss_mib_per_million_keys'), ',.0f')} MiB",
            f"RSS {_num(g('memory.rss_mib'), ',.0f')} MiB, "
            f"empty {_num(g('memory.empty_rss_mib'), ',.0f')} MiB")  # fmt: skip
        add(f"RSS at {_num(g('memory.growth_keys'), ',.0f')} keys / at "
            f"{_num(g('memory.keys'), ',.0f')}",
            f"{_num(g('memory.rss_growth_ratio'), '.2f')}x",
            f"RSS {_num(g('memory.growth_rss_mib'), ',.0f')} MiB",
            "memory.rss_growth_ratio")  # fmt: skip
    return rows


def render(rows: Iterable[tuple[str, ...]]) -> str:
    """Rows as aligned text columns."""
    rows = [("what", "figure", "baseline", "target"), *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
