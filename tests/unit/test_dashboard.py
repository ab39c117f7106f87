"""The dashboard's merge of every worker's snapshot, its rates and its page, offline."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest

from pipeline.domain.customer_stats import CustomerStats
from pipeline.domain.dashboard import (
    CounterHistory,
    CustomerFigures,
    Lag,
    WorkerSnapshot,
    dead_letter_summary,
    merge,
    top_customers,
)
from tables.customer_stats import read_figures

W1, W2 = "http://127.0.0.1:7001", "http://127.0.0.1:7002"


def figures(customer: str, spent: str, orders: int = 1, cancelled: int = 0) -> CustomerFigures:
    return CustomerFigures(customer, orders, cancelled, Decimal(spent))


def snapshot(url: str, partitions: tuple[int, ...], **kwargs: Any) -> WorkerSnapshot:
    return WorkerSnapshot(url=url, ready=True, customer_partitions=partitions, **kwargs)


def test_top_customers_rank_by_spend_then_orders_then_id_and_stop_at_n() -> None:
    everyone = [
        figures("c", "10.00", orders=2),
        figures("a", "10.00", orders=2),
        figures("b", "10.00", orders=3),
        figures("d", "99.50"),
        figures("e", "0.00", orders=5, cancelled=5),
    ]
    assert [c.customer_id for c in top_customers(everyone, 3)] == ["d", "b", "a"]
    assert len(top_customers(everyone, 10)) == 5


def test_merge_sums_counters_unites_lag_and_takes_the_clusters_top_customers() -> None:
    one = snapshot(
        W1, (0, 2),
        events_processed={"analytics": 10, "inventory": 4}, events_per_second={"analytics": 2.25},
        orders_created=7, orders_per_second=1.0,
        lag=(Lag("t.orders.events", 2, 5), Lag("t.orders.events", 0, 0)),
        top_customers=(figures("a", "50.00"), figures("b", "20.00")),
    )  # fmt: skip
    two = snapshot(
        W2, (1, 3),
        events_processed={"analytics": 5}, events_per_second={"analytics": 1.0},
        orders_created=3, orders_per_second=0.5, lag=(Lag("t.orders.events", 1, 2),),
        top_customers=(figures("c", "30.00"), figures("d", "10.00")),
        revenue=[{"window_start": "w", "window_end": "e", "revenue": "80.00", "orders": 4}],
    )  # fmt: skip
    merged = merge([two, one], {}, partitions=4, top_n=3)
    assert merged["complete"]
    t = merged["throughput"]
    assert t["by_agent"] == [
        {"agent": "analytics", "events_per_second": 3.2, "events_processed": 15},
        {"agent": "inventory", "events_per_second": 0.0, "events_processed": 4},
    ]
    assert (t["events_per_second"], t["orders_created"], t["orders_per_second"]) == (3.2, 10, 1.5)
    lag = merged["consumer_lag"]
    assert lag["total"] == 7
    assert [(p["partition"], p["worker"]) for p in lag["partitions"]] == [(0, W1), (1, W2), (2, W1)]
    assert [c["customer_id"] for c in merged["top_customers"]] == ["a", "c", "b"]
    assert merged["revenue"]["windows"][0]["revenue"] == "80.00"
    assert [w["url"] for w in merged["workers"]] == [W1, W2]


@pytest.mark.parametrize(
    ("snapshots", "unreachable"),
    [
        ([snapshot(W1, (0, 1, 2))], {}),  # a partition nobody reported
        ([snapshot(W1, (0, 1, 2)), snapshot(W2, (2, 3))], {}),  # one reported twice
        ([snapshot(W1, (0, 1, 2, 3))], {W2: "TimeoutError"}),  # a worker did not answer
        ([WorkerSnapshot(W1, ready=False, customer_partitions=(0, 1, 2, 3))], {}),
    ],
)
def test_merge_is_incomplete_unless_every_worker_answered_and_partitions_cover_once(
    snapshots: list[WorkerSnapshot], unreachable: dict[str, str]
) -> None:
    merged = merge(snapshots, unreachable, partitions=4, top_n=10)
    assert not merged["complete"]
    assert [w["url"] for w in merged["workers"] if w["error"]] == list(unreachable)


def test_a_snapshot_travels_as_json_unchanged() -> None:
    shot = snapshot(
        W1, (1,), events_processed={"analytics": 3.0}, events_per_second={"analytics": 0.5},
        orders_created=2.0, lag=(Lag("t", 1, 9),), top_customers=(figures("a", "1.10", 2, 1),),
        revenue=[],
    )  # fmt: skip
    assert WorkerSnapshot.from_json(json.loads(json.dumps(shot.to_json()))) == shot


def test_counter_rates_span_the_window_and_start_at_zero() -> None:
    history = CounterHistory(window=10.0)
    assert history.rates() == {}
    history.add(100.0, {"analytics": 0.0})
    assert history.rates() == {"analytics": 0.0}
    for second in range(1, 21):  # 5 events a second, and a new agent from second 15 on
        totals = {"analytics": 5.0 * second}
        if second >= 15:
            totals["revenue"] = 2.0 * (second - 14)
        history.add(100.0 + second, totals)
    rates = history.rates()
    assert rates["analytics"] == pytest.approx(5.0)
    assert rates["revenue"] == pytest.approx(12.0 / 10)  # counted from zero within the window


def test_dead_letters_are_counted_per_reason_most_first() -> None:
    summary = dead_letter_summary(
        [("poison", "open", 3), ("permanent", "open", 1), ("poison", "replayed", 2)]
    )
    assert summary == {
        "total": 6,
        "open": 4,
        "by_reason": [{"reason": "poison", "count": 5}, {"reason": "permanent", "count": 1}],
    }


def test_read_figures_skips_the_dedupe_ids_and_agrees_with_the_public_view() -> None:
    stats = CustomerStats(
        'odd,"seen":[id', order_count=3, cancelled_count=1, total_spent=Decimal("12.30"),
        seen={f"event-{n}": (n, f"s0@{n}") for n in range(1000)}, milestones={"first_order": "x"},
    )  # fmt: skip
    raw = json.dumps(stats.to_value(), separators=(",", ":")).encode()
    got = CustomerFigures.from_json(read_figures(raw))
    public = stats.public()
    assert got.to_json() == {k: public[k] for k in got.to_json()}


def test_the_page_loads_nothing_from_elsewhere_and_its_csp_admits_its_own_code() -> None:
    from pipeline.web.dashboard import CONTENT_SECURITY_POLICY, PAGE

    links = re.findall(r"\b(?:src|href)\s*=\s*\"([^\"]*)\"", PAGE)
    assert all(link.startswith("data:") for link in links), links
    assert set(re.findall(r"https?://[^\s\"']+", PAGE)) == {"http://www.w3.org/2000/svg"}
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY
    assert CONTENT_SECURITY_POLICY.count("'sha256-") == 2
