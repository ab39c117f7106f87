"""The fault suite's independent checker, shown to pass a consistent world and to fail each
way a broken pipeline can break one: an effect applied twice, an event dropped, an
acknowledged order lost, a refused order written, a mail sent twice. Offline: the checker's
judge is a pure function of the history, the database rows, the topics and the API answers."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.integration.history import (
    ApiSnapshot,
    DbSnapshot,
    Mail,
    Op,
    OrderRow,
    Rec,
    Verdict,
    evidence,
    judge,
)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def rec(value: dict[str, Any], offset: int, partition: int = 0, key: bytes = b"k") -> Rec:
    raw = json.dumps(value).encode()
    return Rec(partition, offset, key, raw, value)


def world() -> dict[str, Any]:
    """Three orders: o1 confirmed; o2 confirmed, then cancelled a minute later; o3 rejected."""
    orders = {
        "o1": OrderRow("cust-a", "confirmed", Decimal("200.00"), T0, T0),
        "o2": OrderRow(
            "cust-a",
            "cancelled",
            Decimal("150.00"),
            T0 + timedelta(seconds=10),
            T0 + timedelta(seconds=70),
        ),
        "o3": OrderRow(
            "cust-b",
            "rejected",
            Decimal("500.00"),
            T0 + timedelta(seconds=20),
            T0 + timedelta(seconds=21),
        ),
    }
    history = [
        Op("stock", "sku-0", {"available": 10}, 0, 0, 202, {}),
        *(
            Op(
                "order",
                f"k{n}",
                {"customer_id": orders[f"o{n}"].customer_id},
                n,
                n,
                201,
                {"order_id": f"o{n}"},
            )
            for n in (1, 2, 3)
        ),
        Op("cancel", "o2", {}, 4, 4, 200, {}),
    ]
    db = DbSnapshot(
        orders=orders,
        lines={"o1": [("sku-0", 2)], "o2": [("sku-0", 1)], "o3": [("sku-0", 9)]},
        keys={"k1": "o1", "k2": "o2", "k3": "o3"},
        pending_outbox=0,
        dead_letters=0,
    )

    def created(n: int, customer: str, total: str) -> dict[str, Any]:
        return {"event_type": "OrderCreated", "event_id": f"e{n}", "order_id": f"o{n}",
                "customer_id": customer, "total": total}  # fmt: skip

    topics = {
        "orders.events": [
            rec(created(1, "cust-a", "200.00"), 0),
            rec(created(2, "cust-a", "150.00"), 1),
            rec(
                {
                    "event_type": "OrderCancelled",
                    "event_id": "e4",
                    "order_id": "o2",
                    "customer_id": "cust-a",
                    "total": "150.00",
                },
                2,
            ),
            rec(created(3, "cust-b", "500.00"), 0, partition=1),
        ],
        "orders.status": [
            rec({"event_type": "OrderConfirmed", "event_id": "d1", "order_id": "o1"}, 0),
            rec({"event_type": "OrderConfirmed", "event_id": "d2", "order_id": "o2"}, 1),
            rec({"event_type": "OrderRejected", "event_id": "d3", "order_id": "o3"}, 2),
        ],
        "analytics.events": [
            rec({"event_type": "CustomerStatsUpdated", "event_id": "s1", "caused_by": "e1"}, 0),
            *(
                rec(
                    {
                        "event_type": "MilestoneReached",
                        "event_id": f"m{n}",
                        "caused_by": cause,
                        "customer_id": customer,
                        "milestone": name,
                    },
                    n,
                )
                for n, (customer, name, cause) in enumerate(
                    [
                        ("cust-a", "first_order", "e1"),
                        ("cust-a", "lifetime_value", "e2"),
                        ("cust-b", "first_order", "e3"),
                        ("cust-b", "lifetime_value", "e3"),
                    ],
                    1,
                )
            ),
        ],
        "dead-letters": [],
    }
    api = ApiSnapshot(
        stats={
            "cust-a": (
                200,
                {
                    "order_count": 2,
                    "cancelled_count": 1,
                    "total_spent": "200.00",
                    "average_order_value": "200.00",
                    "first_order_at": T0.isoformat(),
                    "last_order_at": (T0 + timedelta(seconds=10)).isoformat(),
                },
            ),
            "cust-b": (
                200,
                {
                    "order_count": 1,
                    "cancelled_count": 0,
                    "total_spent": "500.00",
                    "average_order_value": "500.00",
                    "first_order_at": (T0 + timedelta(seconds=20)).isoformat(),
                    "last_order_at": (T0 + timedelta(seconds=20)).isoformat(),
                },
            ),
        },
        stock={"sku-0": (200, {"sku": "sku-0", "available": 8, "reserved": 2})},
        revenue=(
            200,
            {
                "windows": [
                    {
                        "window_start": (T0 + timedelta(minutes=1)).isoformat(),
                        "revenue": "-150.00",
                        "orders": -1,
                    },
                    {"window_start": T0.isoformat(), "revenue": "850.00", "orders": 3},
                ]
            },
        ),
        mails=[Mail(name, "/w1/mailbox", 100.0) for name in ("d1", "d2", "d3")],
    )
    return {"history": history, "db": db, "topics": topics, "api": api}


def verdict_of(w: dict[str, Any]) -> Verdict:
    return judge(w["history"], w["db"], w["topics"], w["api"], window_seconds=60,
                 lifetime_value=Decimal("300.00"))  # fmt: skip


def flagged(verdict: Verdict, *words: str) -> bool:
    return any(all(word in v for word in words) for v in verdict.violations)


def test_a_consistent_world_passes_with_no_evidence_of_faults() -> None:
    verdict = verdict_of(world())
    assert verdict.ok, verdict
    assert verdict.evidence["forwarder_resends"] == 0
    assert set(verdict.evidence["redelivered"].values()) == {0}


def test_an_effect_applied_twice_fails() -> None:
    """What an agent without its dedupe does with a redelivered order event."""
    w = world()
    status, body = w["api"].stats["cust-a"]
    w["api"].stats["cust-a"] = (status, {**body, "order_count": 3, "total_spent": "400.00"})
    w["api"].stock["sku-0"] = (200, {"sku": "sku-0", "available": 6, "reserved": 4})
    verdict = verdict_of(w)
    assert flagged(verdict, "cust-a", "order_count")
    assert flagged(verdict, "sku-0", "reserved 4")


def test_an_event_dropped_fails() -> None:
    """o3's OrderCreated never reached Kafka: nothing downstream of it can be right."""
    w = world()
    w["topics"]["orders.events"] = [r for r in w["topics"]["orders.events"]
                                    if r.value["event_id"] != "e3"]  # fmt: skip
    verdict = verdict_of(w)
    assert flagged(verdict, "o3", "0 distinct OrderCreated")
    assert flagged(verdict, "milestone", "cust-b")


def test_an_acknowledged_order_lost_or_a_refused_one_written_fails() -> None:
    w = world()
    w["db"] = replace(w["db"], orders={k: r for k, r in w["db"].orders.items() if k != "o1"})
    assert flagged(verdict_of(w), "o1", "acknowledged and is not in the database")

    w = world()
    w["history"] = [op if op.key != "k3" else replace(op, status=503, reply={})
                    for op in w["history"]]  # fmt: skip
    assert flagged(verdict_of(w), "k3", "refused (503) and its order was written")

    w = world()  # an unanswered request may have gone either way: not a violation
    w["history"] = [op if op.key != "k3" else replace(op, status=0, reply=None)
                    for op in w["history"]]  # fmt: skip
    assert verdict_of(w).ok


def test_an_acknowledged_cancellation_missing_fails() -> None:
    w = world()
    w["db"].orders["o2"] = replace(w["db"].orders["o2"], status="confirmed")
    assert flagged(verdict_of(w), "o2", "cancellation acknowledged")


def test_a_mail_sent_twice_or_a_decision_unmailed_fails() -> None:
    w = world()
    w["api"].mails.append(Mail("d1", "/w2/mailbox", 105.0))  # a zombie's, say
    assert flagged(verdict_of(w), "mail d1 was sent 2 times")
    w = world()
    w["api"].mails[:] = [m for m in w["api"].mails if m.name != "d3"]
    assert flagged(verdict_of(w), "o3 is rejected", "mail sent for []")


def test_a_second_mail_is_allowed_only_where_a_kill_explains_it() -> None:
    """The documented window: killed after the mail left, before its mark was in the changelog."""
    w = world()
    w["api"].mails.append(Mail("d1", "/w2/mailbox", 103.0))
    killed_at = [("/w1/mailbox", 100.5)]
    verdict = judge(w["history"], w["db"], w["topics"], w["api"], window_seconds=60,
                    lifetime_value=Decimal("300.00"), kills=killed_at)  # fmt: skip
    assert verdict.ok and verdict.evidence["mail_repeats_after_a_kill"] == 1
    late = [("/w1/mailbox", 130.0)]  # killed long after: the mark had had time; not explained
    verdict = judge(w["history"], w["db"], w["topics"], w["api"], window_seconds=60,
                    lifetime_value=Decimal("300.00"), kills=late)  # fmt: skip
    assert flagged(verdict, "mail d1 was sent 2 times")


def test_only_the_revenue_windows_the_api_shows_are_compared() -> None:
    """It answers the newest 60: with 60 shown, older windows are not judged; with fewer, a
    window missing from the answer is."""
    w = world()
    newest = T0 + timedelta(minutes=2)
    shown = [{"window_start": (newest + timedelta(minutes=n)).isoformat(), "revenue": "0.00",
              "orders": 0} for n in range(60)]  # fmt: skip
    w["api"].revenue = (200, {"windows": shown})
    assert not flagged(verdict_of(w), "revenue window")
    w["api"].revenue = (200, {"windows": shown[:59]})
    assert flagged(verdict_of(w), "revenue window")


def test_a_revenue_window_off_or_a_dead_letter_fails() -> None:
    w = world()
    w["api"].revenue[1]["windows"][0]["revenue"] = "0.00"
    assert flagged(verdict_of(w), "revenue window")
    w = world()
    w["topics"]["dead-letters"] = [rec({"event_id": "x"}, 0)]
    assert flagged(verdict_of(w), "dead letters: 1 on the topic")


def test_evidence_tells_forwarder_resends_from_agent_redeliveries() -> None:
    w = world()
    topics = w["topics"]
    # The forwarder sent e1 twice: the stats update it caused twice is explained by that.
    topics["orders.events"].append(topics["orders.events"][0])
    topics["analytics.events"].append(topics["analytics.events"][0])
    e = evidence(topics)
    assert e["forwarder_resends"] == 1 and e["redelivered"]["analytics.events"] == 0
    # e3 reached Kafka once, and its stats update is there twice: the agent handled it again.
    stats = {"event_type": "CustomerStatsUpdated", "event_id": "s3", "caused_by": "e3"}
    topics["analytics.events"] += [rec(stats, 10), rec(stats, 11)]
    assert evidence(topics)["redelivered"]["analytics.events"] == 1


def test_evidence_counts_late_changelog_writes_not_resends() -> None:
    values = [{"v": 1, "n": 1}, {"v": 2, "n": 2}, {"v": 2, "n": 2}, {"v": 1, "n": 1},
              {"v": 2, "n": 5}, {"v": 3, "n": 3}]  # fmt: skip
    topics = {"changelog:stock": [rec(v, n) for n, v in enumerate(values)]}
    # The repeat of version 2 is a re-send; version 1 after 2, and another version 2, are late.
    assert evidence(topics)["stale_changelog"] == {"stock": 2}
