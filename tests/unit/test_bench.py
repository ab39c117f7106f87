"""The benchmarks' pure helpers (the benchmarks themselves never run in the test suite)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from itertools import islice
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import pytest

from bench.e2e import Hops, Visibility, kept_up, phase_figures, worker_env
from bench.kafka_tools import java_command, parse_consumer, parse_producer
from bench.report import (
    REQUIRED_KEYS,
    Target,
    against,
    missing_keys,
    open_loop_schedule,
    percentile,
    ratio,
    render,
    spread,
    summary_rows,
)
from bench.soak import (
    BOUNDS,
    HOT_CUSTOMER,
    HOT_SKU,
    TableSizes,
    Truth,
    customer_failures,
    customer_figures,
    misordered_revenue,
    order_plan,
    rereads,
    revenue_failures,
    share_failures,
    size_rows,
    status_failures,
    stock_failures,
    window_start,
)
from pipeline.domain.horizon import MAX_VALUE_BYTES

PRODUCER_OUT = """\
100000 records sent, 20000.0 records/sec (5.72 MB/sec), 12.3 ms avg latency, 300.0 ms max latency.
200000 records sent, 64871.878041 records/sec (18.56 MB/sec), 987.90 ms avg latency, \
1367.00 ms max latency, 995 ms 50th, 1321 ms 95th, 1367 ms 99th, 1370 ms 99.9th.
"""

CONSUMER_OUT = """\
start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, \
rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
2026-11-26 21:20:01:000, 2026-11-26 21:20:02:541, 57.2205, 37.1320, 200000, 129785.8533, \
787, 754, 75.8893, 265251.9894
"""


def full_result() -> dict[str, object]:
    return {
        "pipeline": {"events_per_s": 1500.0, "baseline_loop_events_per_s": 4000.0, "ratio": 0.375,
                     "quix_events_per_s": 3000.0, "vs_quix": 0.5,
                     "stock_faust_events_per_s": 900.0, "two_workers_ratio": 1.2,
                     "two_workers_events_per_s": 1800.0},
        "forwarder": {"rows_per_s": 17000.0, "baseline_insert_rows_per_s": 2500.0, "ratio": 6.8,
                      "commit_to_ack_p99_ms": 24.7, "commit_to_ack_p50_ms": 8.0},
        "e2e": {"p99_ms_half_load": 80.0, "max_orders_per_s": 100.0},
        "recovery": {"keys_per_s": 15000.0, "keys": 1_000_000, "seconds": 66.0,
                     "vs_consumer_tool": 0.015},
        "memory": {"keys": 1_000_000, "rss_mib": 201.0, "empty_rss_mib": 88.0,
                   "rss_mib_per_million_keys": 113.0, "growth_keys": 5_000_000,
                   "growth_rss_mib": 650.0, "rss_growth_ratio": 3.23},
        "meta": {"mode": "full"},
    }  # fmt: skip


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile(list(reversed(values)), 100) == 100.0
    assert percentile([7.0], 99.9) == 7.0
    assert math.isnan(percentile([], 50))


def test_spread_gives_median_and_range() -> None:
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}


def test_open_loop_schedule_is_evenly_spaced_from_zero() -> None:
    times = open_loop_schedule(rate=4, seconds=2.5)
    assert times == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25]
    assert open_loop_schedule(0, 10) == []


def test_a_step_is_kept_up_only_with_a_short_backlog_and_no_errors() -> None:
    assert kept_up(backlog=40, rate=100, errors=0)
    assert not kept_up(backlog=60, rate=100, errors=0)
    assert not kept_up(backlog=0, rate=100, errors=1)


def test_an_order_is_visible_when_its_stats_update_arrives_whatever_the_order_of_arrival() -> None:
    seen = Visibility()
    # 1: the usual order: answer, order event, stats update.
    seen.posted("o1", "half", intended=1.0, answered=1.010)
    seen.order_event("e1", "o1", published=1.020, read=1.025, partition=2)
    assert seen.in_flight() == 1
    seen.stats_updated("e1", at=1.050, partition=2)
    # 2: the stats update read before its order event (partitions are read in no fixed
    # order), and both before the POST's answer came back.
    seen.stats_updated("e2", at=2.100, partition=0)
    seen.order_event("e2", "o2", published=2.050, read=2.090, partition=0)
    assert seen.in_flight() == 0  # o1 is done; o2 is not ours until its answer comes back
    seen.posted("o2", "half", intended=2.0, answered=2.060)
    assert seen.in_flight() == 0
    assert seen.latencies("half") == pytest.approx([50.0, 100.0])
    assert seen.visible_at == pytest.approx(2.100)
    assert not seen.early and not seen.orders


def test_repeats_of_an_order_event_or_a_stats_update_count_once() -> None:
    seen = Visibility()
    seen.posted("o1", "80pct", intended=0.0, answered=0.01)
    seen.order_event("e1", "o1", published=0.02, read=0.03, partition=1)
    seen.order_event("e1", "o1", published=0.50, read=0.60, partition=1)  # re-published
    seen.stats_updated("e1", at=0.04, partition=1)
    seen.stats_updated("e1", at=0.70, partition=1)  # sent again on the redelivery
    assert seen.latencies("80pct") == pytest.approx([40.0])
    assert seen.done["80pct"][0].read == pytest.approx(0.03)


def test_orders_count_in_the_phase_they_were_sent_in() -> None:
    seen = Visibility()
    seen.posted("o1", "ramp 20.0", intended=0.0, answered=0.01)
    seen.posted("o2", "half", intended=1.0, answered=1.01)
    for n, at in ((2, 1.2), (1, 1.3)):  # the ramp's order is seen during the next phase
        seen.order_event(f"e{n}", f"o{n}", published=at - 0.1, read=at - 0.05, partition=0)
        seen.stats_updated(f"e{n}", at=at, partition=0)
    assert seen.latencies("half") == pytest.approx([200.0])
    assert seen.latencies("ramp 20.0") == pytest.approx([1300.0])


def test_phase_figures_split_each_order_into_hops_and_show_the_slowest() -> None:
    done = [Hops(intended=n, answered=n + 0.01, published=n + 0.02, read=n + 0.025,
                 visible=n + 0.05, partition=n % 4) for n in range(99)]  # fmt: skip
    done.append(Hops(intended=99, answered=99.01, published=99.02, read=99.03, visible=101.03,
                     partition=3))  # fmt: skip
    figures = phase_figures(done, slowest=2)
    assert figures["p50_ms"] == pytest.approx(50.0)
    assert figures["p99_ms"] == pytest.approx(50.0)
    assert figures["max_ms"] == pytest.approx(2030.0)
    assert figures["hops_p50_p99_ms"]["post"] == pytest.approx([10.0, 10.0])
    assert figures["hops_p50_p99_ms"]["analytics"] == pytest.approx([25.0, 25.0])
    slowest = figures["slowest"][0]
    assert slowest["at_s"] == 99 and slowest["partition"] == 3
    assert slowest["analytics"] == pytest.approx(2000.0)
    assert len(figures["slowest"]) == 2
    assert math.isnan(phase_figures([])["p99_ms"])


def test_the_workers_environment_takes_settings_to_try_from_bench_e2e_env() -> None:
    env = {"BENCH_E2E_ENV": "PIPELINE_COMMIT_INTERVAL_MS=500 PIPELINE_X=a=b"}
    with patch.dict(os.environ, env):
        got = worker_env()
    assert got["PIPELINE_COMMIT_INTERVAL_MS"] == "500"
    assert got["PIPELINE_X"] == "a=b"
    assert got["PIPELINE_LOG_EVENTS"] == "false"


def test_target_verdicts_say_by_how_much_a_target_is_missed() -> None:
    at_least = Target(0.5, True, ">= 0.5x")
    assert at_least.verdict(0.6) == "met"
    assert at_least.verdict(0.36) == "MISSED by 28%"
    below = Target(100.0, False, "p99 < 100 ms")
    assert below.verdict(80.0) == "met"
    assert below.verdict(150.0) == "MISSED by 50%"
    assert below.verdict(None) == "not measured"


def test_required_keys_are_checked_as_numbers() -> None:
    result = full_result()
    assert missing_keys(result) == []
    del result["meta"]
    result["recovery"] = {"keys_per_s": "fast"}
    assert missing_keys(result) == ["recovery.keys_per_s", "recovery.vs_consumer_tool", "meta"]
    assert "e2e.p99_ms_half_load" in REQUIRED_KEYS


def test_summary_table_shows_each_figure_with_its_baseline_and_verdict() -> None:
    text = render(summary_rows(full_result()))
    lines = text.splitlines()
    assert lines[0].split() == ["what", "figure", "baseline", "target"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    ratio = next(line for line in lines if line.startswith("pipeline / plain loop"))
    assert "0.38x" in ratio and ">= 0.8x: MISSED by 53%" in ratio
    e2e = next(line for line in lines if "e2e POST" in line and "p99 80 ms" in line)
    assert "p99 < 100 ms: met" in e2e
    recovery = next(line for line in lines if line.startswith("recovery of 1,000,000 keys"))
    assert "15,000 keys/s" in recovery and "MISSED by 85%" in recovery
    tool = next(line for line in lines if line.startswith("recovery / consumer tool"))
    assert "0.015x" in tool and ">= 0.1x: MISSED by 85%" in tool
    growth = next(line for line in lines if line.startswith("RSS at 5,000,000 keys / at 1,000,000"))
    assert "3.23x" in growth and "RSS 650 MiB" in growth and "<= 1.5x: MISSED by 115%" in growth
    quix = next(line for line in lines if line.startswith("pipeline / Quix Streams"))
    assert "0.50x" in quix and "Quix 3,000/s" in quix and ">= 1.0x: MISSED by 50%" in quix
    assert any(line.startswith("pipeline, stock Faust") and "900 events/s" in line
               for line in lines)  # fmt: skip
    assert any("1,800 events/s (1.20x)" in line for line in lines)


def test_ratios_are_to_each_baseline_and_none_without_one() -> None:
    assert ratio(1500.0, 4000.0) == 0.375
    assert ratio(1500.0, None) is None and ratio(1500.0, 0.0) is None
    assert ratio(float("nan"), 2.0) is None
    assert against(1500.0, {"loop": 4000.0, "Quix": 3000.0}) == "0.38x loop, 0.50x Quix"
    assert against(1500.0, {"loop": 4000.0, "Quix": None}) == "0.38x loop, -x Quix"


def test_the_quix_app_counts_a_repeated_event_once_and_sends_the_same_records() -> None:
    from bench import quix_app  # Quix Streams is a dev dependency, as the benchmarks are
    from bench.pipeline import make_events

    class State(dict[str, object]):  # the part of Quix's State the app uses
        def set(self, key: str, value: object) -> None:
            self[key] = value

    ((key, value),) = make_events(1)
    state = State()
    context = SimpleNamespace(partition=1, offset=7)
    with patch.object(quix_app, "message_context", return_value=context):
        first = quix_app.analytics(value, key, 1_790_000_000_000, None, state)
        stored = json.loads(json.dumps(state["stats"]))
        again = quix_app.analytics(value, key, 1_790_000_000_000, None, state)
    assert again == first and state["stats"] == stored
    assert stored["order_count"] == 1 and first[1] is not None
    assert json.loads(first[1])["event_type"] == "RevenueRecorded"
    assert json.loads(first[0][0])["event_type"] == "CustomerStatsUpdated"


def test_the_stock_faust_entry_installs_no_fix_but_the_commit_hooks() -> None:
    """What the stock-Faust row runs: Faust's own classes, but for the hook that writes the
    tables' values before a commit (in a fresh interpreter: installing is process-wide)."""
    code = """
import faust.transport.consumer as c, faust.tables.base as t
import bench.stock_faust, pipeline.app
from pipeline.streaming.faust_patches import failed_sends, hooks, recovery_mark
assert c.Consumer._commit_tps is hooks._commit_tps
assert c.ThreadDelegateConsumer._commit is failed_sends.STOCK_COMMIT
assert t.Collection._on_changelog_sent is recovery_mark.STOCK_ON_CHANGELOG_SENT
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "KAFKA_"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_producer_tool_summary_is_parsed() -> None:
    out = parse_producer(PRODUCER_OUT)
    assert out["records"] == 200000
    assert out["records_per_s"] == pytest.approx(64871.878041)
    assert out["mb_per_s"] == 18.56
    assert out["p99_latency_ms"] == 1367.0
    assert out["p99.9_latency_ms"] == 1370.0


def test_consumer_tool_csv_is_parsed() -> None:
    out = parse_consumer(CONSUMER_OUT)
    assert out["records"] == 200000
    assert out["fetch_records_per_s"] == pytest.approx(265251.9894)
    assert out["records_per_s"] == pytest.approx(129785.8533)


def test_tool_output_without_a_result_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_producer("nothing here")
    with pytest.raises(ValueError):
        parse_consumer("a, b\n1, 2")


def test_tools_run_on_the_broker_jars_classpath(tmp_path: Path) -> None:
    cmd = java_command(tmp_path, "org.apache.kafka.tools.ProducerPerformance", "--topic", "t")
    assert cmd[-3:] == ["org.apache.kafka.tools.ProducerPerformance", "--topic", "t"]
    assert cmd[cmd.index("-cp") + 1] == f"{tmp_path}/*"


def test_a_profile_summary_shares_the_main_threads_samples_by_category() -> None:
    from bench.profile import summary

    raw = "\n".join([
        "<module> (x.py:1);BaseEventLoop._run_once (a.py:1);EpollSelector.select (s.py:1) 30",
        "<module> (x.py:1);Agent._execute_actor (f.py:1);customer_analytics (agents/a.py:48);"
        "consume (c.py:1);write_customer_stats (t.py:1) 50",
        "<module> (x.py:1);Consumer._drain_messages (f.py:1) 20",
        "Thread._bootstrap (threading.py:1);WorkerThread.run (m.py:1);select (s.py:1) 99",
    ])  # fmt: skip
    assert summary(raw) == {"main_thread_samples": 100, "percent": {
        "agent: analytics (customer stats)": 50.0,
        "idle: waiting on the network": 30.0,
        "Faust: fetcher hand-over to the agents": 20.0,
    }}  # fmt: skip


# -- the soak's pure parts (bench/soak.py) --------------------------------------------------


def test_the_soak_load_is_concentrated_on_one_sku_and_one_customer() -> None:
    plan = list(islice(order_plan(14), 20_000))
    assert plan[:50] == list(islice(order_plan(14), 50))  # the same seed, the same orders
    hot_lines = sum(1 for p in plan for i in p.body["items"] if i["sku"] == HOT_SKU)
    hot_orders = sum(1 for p in plan if p.body["customer_id"] == HOT_CUSTOMER)
    kinds = Counter(p.cancel for p in plan)
    assert hot_lines >= 5_000 and hot_orders >= 2_000
    assert 1_600 <= kinds["early"] + kinds["late"] <= 2_400 and kinds["early"] and kinds["late"]
    for p in plan:  # every body is an order the service takes, a SKU at most once
        skus = [i["sku"] for i in p.body["items"]]
        assert 1 <= len(skus) == len(set(skus)) <= 2


def test_the_soak_judges_stock_and_stats_against_the_database() -> None:
    reserved = {"a": 5, "b": 0}
    bodies = {"a": {"sku": "a", "available": 95, "reserved": 5},
              "b": {"sku": "b", "available": 90, "reserved": 0}}  # fmt: skip
    [wrong] = stock_failures(reserved, bodies, 100)
    assert wrong.startswith("stock of b:")
    figures = customer_figures([("confirmed", Decimal("10.50")), ("cancelled", Decimal("3.00"))])
    assert figures == {"order_count": 2, "cancelled_count": 1, "total_spent": "10.50"}
    stats = {"c1": {**figures, "average_order_value": "10.50"}, "c2": None}
    assert customer_failures({"c1": figures}, stats) == []
    assert customer_failures({"c2": figures}, stats)[0].startswith("stats of c2:")


def test_the_soak_checks_the_shares_and_the_decisions() -> None:
    t = Truth(statuses=Counter(confirmed=900, cancelled=100), orders=1000, hot_sku_lines=260)
    t.hot_customer_orders, t.cancelled_from = 100, Counter(created=60, confirmed=40)
    assert share_failures(t, 1000) == [] and status_failures(t) == []
    t.hot_sku_lines, t.statuses["created"] = 249, 3
    assert share_failures(t, 1001) == [
        "1000 orders in the database, 1001 placed",
        "hot SKU on 249 lines, fewer than 250",
    ]
    assert status_failures(t) == ["3 orders still 'created' after the drain"]
    t.cancelled_from = Counter(created=100)
    assert "not both before and after" in share_failures(t, 1000)[-1]


def test_the_soak_reports_each_tables_largest_value_against_its_bound() -> None:
    assert BOUNDS["stock"] == BOUNDS["customer_stats"] == MAX_VALUE_BYTES
    stock, stats = TableSizes(), TableSizes()
    stock.add(b"sku", b'{"v":1,"lines":{"o:1":["S",5],"o:2":["R",6]}}')
    stock.add(b"sku", None)  # a tombstone counts as a record, not as a value
    stats.add(b"hot", b"x" * (MAX_VALUE_BYTES + 1))
    rows = {r["table"]: r for r in size_rows({"stock": stock, "customer_stats": stats})}
    assert rows["stock"]["records"] == 2 and rows["stock"]["entries_in_largest"] == 2
    assert rows["stock"]["within_bound"] and not rows["customer_stats"]["within_bound"]
    assert rows["customer_stats"]["largest_key"] == "hot"


def test_the_soak_compares_each_revenue_window_with_the_database() -> None:
    start = window_start(datetime(2026, 11, 30, 20, 7, 30, tzinfo=UTC))
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 11, 30, 20, 5, tzinfo=UTC)
    windows = [{"window_start": "2026-11-30T20:05:00+00:00", "revenue": "10.00", "orders": 2}]
    assert revenue_failures(windows, {start: [Decimal("10.00"), 2]}) == []
    assert revenue_failures(windows, {start: [Decimal("12.50"), 3], start + 300: [0, 0]}) == [
        "revenue window 20:05:00: 2 orders, 10.00; the database 3, 12.50"
    ]


def test_the_soak_finds_revenue_records_that_arrive_below_their_streams_mark() -> None:
    one, two = Decimal("1.00"), Decimal("2.00")
    records = [
        ("a", "s0@10", 0, one, 1),
        ("b", "s0@12", 0, two, 1),
        ("a", "s0@10", 0, one, 1),  # a repeat: dropped, rightly
        ("c", "s0@11", 0, two, 1),  # handled after 12 (a re-read): dropped, wrongly
        ("d", "s0@5", 300, one, -1),  # another window has marks of its own
        ("e", "s1@1", 0, one, 1),
    ]
    assert misordered_revenue(records) == [1, two, 1]


def test_the_soak_counts_records_handled_again_per_agent() -> None:
    assert rereads({"analytics": 1050.0}, {"analytics": 1000, "revenue": 10}) == {
        "analytics": 50, "revenue": -10,
    }  # fmt: skip
