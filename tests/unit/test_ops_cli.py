"""The operator commands offline: arguments and their errors, the order plan, open-loop pacing,
the load summary's figures and verdict, and the topic plan. The commands against a real worker,
database and Kafka are in tests/integration/test_ops_cli.py."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.adapters.kafka.admin import TopicSpec, compare
from pipeline.cli.errors import CommandError
from pipeline.cli.load import LoadSummary, ProgressReport, TransportError, drive, percentile
from pipeline.cli.main import build_parser, run
from pipeline.cli.ops import worker_url
from pipeline.cli.order_generator import OrderGenerator, PlannedOrder
from pipeline.settings import SettingsError, load_settings
from pipeline.streaming.topics import topic_plan

# -- arguments -------------------------------------------------------------------------------


def test_load_arguments_have_usable_defaults() -> None:
    args = build_parser().parse_args(["load"])
    assert (args.orders, args.rate, args.seed) == (1000, 50.0, 7)
    assert (args.cancel_ratio, args.invalid_ratio, args.url, args.token) == (0.1, 0.0, None, None)
    args = build_parser().parse_args(["load", "-n", "5", "-r", "2.5", "--invalid-ratio", "0.2"])
    assert (args.orders, args.rate, args.invalid_ratio) == (5, 2.5, 0.2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["load", "--rate", "0"], "--rate: 0 must be a number above 0"),
        (["load", "--rate", "fast"], "--rate: 'fast' is not a number"),
        (["load", "--rate", "inf"], "--rate: inf must be a number above 0"),
        (["load", "-n", "0"], "--orders: 0 must be between 1"),
        (["load", "-n", "2000000"], "--orders: 2000000 must be between 1 and 1000000"),
        (["load", "--cancel-ratio", "1.5"], "--cancel-ratio: 1.5 must be between 0 and 1"),
        (["load", "--invalid-ratio", "-0.1"], "--invalid-ratio: -0.1 must be between 0 and 1"),
        (["stock", "set", "sku-1", "-3"], "-3 must be between 0 and 1000000000"),
        (["stock", "set", "sku-1", "ten"], "'ten' is not a whole number"),
        (["stock", "set", "x" * 65, "1"], "must be 1 to 64 characters"),
        (["stock"], "required: action"),
        (["outbox"], "required: action"),
        (["topics", "delete"], "invalid choice: 'delete'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_url_that_is_not_http_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["load", "--url", "ftp://example.com"]) == 2
    assert run(["stock", "show", "sku-1", "--url", "localhost:6066"]) == 2
    err = capsys.readouterr().err
    assert err.count("must be an http:// or https:// URL") == 2


def test_stock_show_without_skus_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["stock", "show"]) == 2
    assert "name the SKUs to show" in capsys.readouterr().err


def test_outbox_status_on_a_missing_database_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "pipeline.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{missing}")
    assert run(["outbox", "status"]) == 2
    assert "no database at" in capsys.readouterr().err
    assert not missing.exists() and not missing.parent.exists()


def test_worker_url_defaults_to_the_local_worker() -> None:
    assert worker_url(load_settings({}), None) == "http://127.0.0.1:6066"
    everywhere = load_settings({"PIPELINE_WEB_HOST": "0.0.0.0", "PIPELINE_WEB_PORT": "7000"})
    assert worker_url(everywhere, None) == "http://127.0.0.1:7000"
    assert worker_url(load_settings({"PIPELINE_WEB_HOST": "::1"}), None) == "http://[::1]:6066"
    assert worker_url(load_settings({}), "https://w1:6066/") == "https://w1:6066"
    with pytest.raises(CommandError):
        worker_url(load_settings({}), "http://")


def test_topic_retention_setting() -> None:
    assert load_settings({}).topic_retention_hours == 168
    assert load_settings({"PIPELINE_TOPIC_RETENTION_HOURS": "-1"}).topic_retention_hours == -1
    for bad in ("0", "-2", "week"):
        with pytest.raises(SettingsError, match="PIPELINE_TOPIC_RETENTION_HOURS"):
            load_settings({"PIPELINE_TOPIC_RETENTION_HOURS": bad})


# -- the orders ------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_orders() -> None:
    first = OrderGenerator(3, cancel_ratio=0.2, invalid_ratio=0.1).orders(200)
    assert first == OrderGenerator(3, cancel_ratio=0.2, invalid_ratio=0.1).orders(200)
    assert first != OrderGenerator(4, cancel_ratio=0.2, invalid_ratio=0.1).orders(200)


def test_ratios_change_only_what_they_govern() -> None:
    plain = OrderGenerator(5).orders(300)
    mixed = OrderGenerator(5, cancel_ratio=0.3).orders(300)
    assert [o.body for o in plain] == [o.body for o in mixed]
    assert not any(o.cancel for o in plain)
    assert 50 < sum(o.cancel for o in mixed) < 130


def test_invalid_orders_are_never_cancelled_and_fail_validation() -> None:
    orders = OrderGenerator(1, cancel_ratio=1.0, invalid_ratio=0.5).orders(400)
    invalid = [o for o in orders if not o.valid]
    assert 140 < len(invalid) < 260
    assert all(not o.cancel and o.body["items"][0]["quantity"] == 0 for o in invalid)
    assert all(o.cancel for o in orders if o.valid)
    assert all(1 <= i["quantity"] <= 3 for o in orders if o.valid for i in o.body["items"])


def test_customers_are_skewed_a_few_buy_often() -> None:
    orders = OrderGenerator(9, customers=200).orders(4000)
    counts: dict[str, int] = {}
    for o in orders:
        counts[o.body["customer_id"]] = counts.get(o.body["customer_id"], 0) + 1
    ranked = sorted(counts.values(), reverse=True)
    assert counts["customer-0000"] == ranked[0]
    assert sum(ranked[:10]) > 0.4 * len(orders)  # the top 5% place over 40% of the orders
    assert len(counts) > 150  # and the long tail is there


# -- the summary -----------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def _order(index: int = 0, *, valid: bool = True, cancel: bool = False) -> PlannedOrder:
    return PlannedOrder(index, {"customer_id": "c"}, valid=valid, cancel=cancel)


def test_summary_figures_and_verdict() -> None:
    s = LoadSummary(intended=4, target_rate=2.0, valid=3)
    s.sent, s.send_span, s.elapsed = 4, 1.5, 1.6
    for i in range(3):
        s.record(_order(i), 201)
    s.record(_order(3, valid=False), 422)
    s.latencies = [0.010, 0.020, 0.030, 0.400]
    j = s.to_json()
    assert j["accepted"] == 3 and j["refused"] == {"422": 1}
    assert j["achieved_rate"] == 2.0
    assert (j["latency_p50_ms"], j["latency_p99_ms"]) == (20.0, 400.0)
    assert s.exit_code() == 0 and j["exit_code"] == 0
    assert "ok: every valid order accepted" in "\n".join(s.lines())


@pytest.mark.parametrize(
    ("outcomes", "code"),
    [
        ([(True, 201), (False, 422)], 0),
        ([(True, 201), (True, 503)], 1),  # a valid order refused
        ([(True, 201), (False, 201)], 1),  # an invalid order accepted
        ([(True, 201), (False, 500)], 1),  # an invalid order not answered with a 4xx
        ([(True, 201), (True, 401)], 2),  # the token was refused
    ],
)
def test_exit_code(outcomes: list[tuple[bool, int]], code: int) -> None:
    s = LoadSummary(intended=len(outcomes), target_rate=1, valid=sum(v for v, _ in outcomes))
    s.sent = len(outcomes)
    for i, (valid, status) in enumerate(outcomes):
        s.record(_order(i, valid=valid), status)
    assert s.exit_code() == code


def test_no_answer_or_a_short_run_is_a_failure() -> None:
    s = LoadSummary(intended=2, valid=2, target_rate=1, sent=2, accepted_valid=1, errors=1)
    assert s.exit_code() == 1
    s = LoadSummary(intended=2, valid=2, target_rate=1, sent=1, accepted_valid=1)
    assert s.exit_code() == 1


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise() -> None:
    s = LoadSummary(intended=10, target_rate=1, valid=10, sent=5, accepted=4)
    bar = ProgressReport(s, io.StringIO(), tty=True, interval=5).text()
    line = ProgressReport(s, io.StringIO(), tty=False, interval=5).text()
    assert bar.startswith("\r[###############") and "5/10" in bar and not bar.endswith("\n")
    assert line.endswith("\n") and "50%" in line and "accepted 4" in line


# -- pacing ----------------------------------------------------------------------------------


class FakeWorker:
    """Answers after ``delay`` seconds, with ``status`` for orders and cancellations."""

    def __init__(self, delay: float = 0.0, status: int = 201, cancel_status: int = 200) -> None:
        self.delay, self.status, self.cancel_status = delay, status, cancel_status
        self.sent_at: list[float] = []
        self.cancelled: list[str] = []

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        if path == "/orders":
            self.sent_at.append(time.monotonic())
            await asyncio.sleep(self.delay)
            if body.get("fail"):
                raise TransportError("connection reset")
            status = 422 if body["items"][0]["quantity"] == 0 else self.status
            return status, {"order_id": f"o-{len(self.sent_at)}"}
        self.cancelled.append(path)
        return self.cancel_status, {}


async def test_sends_are_scheduled_from_the_start_not_after_each_reply() -> None:
    orders = OrderGenerator(1).orders(20)
    worker = FakeWorker(delay=0.3)  # far slower than the 10 ms between orders
    summary = LoadSummary(20, target_rate=100.0)
    start = time.monotonic()
    await drive(orders, 100.0, worker.post, summary)
    offsets = [t - start for t in worker.sent_at]
    for i, offset in enumerate(offsets):
        assert i / 100 - 0.005 <= offset <= i / 100 + 0.15, (i, offset)
    assert summary.elapsed < 2.0  # closed loop would take 20 x 0.3 s
    assert summary.sent == summary.accepted == 20
    assert min(summary.latencies) >= 0.29  # measured from each order's due time
    assert summary.rate == pytest.approx(100.0, rel=0.2)


async def test_cancellations_follow_accepted_orders() -> None:
    orders = OrderGenerator(2, cancel_ratio=0.5, invalid_ratio=0.2).orders(40)
    worker = FakeWorker()
    summary = LoadSummary(40, target_rate=1000.0)
    await drive(orders, 1000.0, worker.post, summary)
    assert summary.cancelled == len(worker.cancelled) == sum(o.cancel for o in orders)
    assert summary.refused == {422: sum(not o.valid for o in orders)}
    assert summary.exit_code() == 0

    rejected_first = FakeWorker(cancel_status=409)
    summary = LoadSummary(40, target_rate=1000.0)
    await drive(orders, 1000.0, rejected_first.post, summary)
    assert summary.cancel_refused == sum(o.cancel for o in orders)
    assert summary.exit_code() == 0  # the worker's answer, not the tool's failure


async def test_a_refused_token_stops_the_load() -> None:
    orders = OrderGenerator(3).orders(50)
    summary = LoadSummary(50, target_rate=200.0)
    await drive(orders, 200.0, FakeWorker(status=401).post, summary)
    assert summary.unauthorized and summary.sent < 50
    assert summary.exit_code() == 2


async def test_no_answer_counts_as_an_error() -> None:
    orders = [
        PlannedOrder(0, {"items": [{"quantity": 1}]}, valid=True, cancel=False),
        PlannedOrder(1, {"fail": True}, valid=True, cancel=False),
    ]
    summary = LoadSummary(2, target_rate=100.0)
    await drive(orders, 100.0, FakeWorker().post, summary)
    assert (summary.accepted, summary.errors) == (1, 1)
    assert "connection reset" in summary.first_problem
    assert summary.exit_code() == 1


async def test_stop_ends_scheduling_and_marks_the_run_interrupted() -> None:
    orders = OrderGenerator(4).orders(100)
    stop = asyncio.Event()
    summary = LoadSummary(100, target_rate=50.0)
    asyncio.get_running_loop().call_later(0.1, stop.set)
    await drive(orders, 50.0, FakeWorker().post, summary, stop=stop)
    assert summary.interrupted and 1 <= summary.sent <= 20
    assert summary.exit_code() == 1


# -- topics ----------------------------------------------------------------------------------


def test_topic_plan_has_every_topic_with_its_partitions_and_retention() -> None:
    plan = {s.name: s for s in topic_plan(load_settings({"PIPELINE_TOPIC_RETENTION_HOURS": "2"}))}
    assert {
        "orders.events",
        "inventory.commands",
        "inventory.events",
        "orders.status",
        "analytics.events",
        "analytics.revenue",
        "dead-letters",
        "retry.1",
        "retry.2",
        "retry.3",
        "redeliver.analytics",
        "redeliver.revenue",
    } <= set(plan)
    assert plan["analytics.revenue"].partitions == plan["redeliver.revenue"].partitions == 1
    assert plan["orders.events"].partitions == plan["dead-letters"].partitions == 4
    assert plan["orders.events"].config == {"retention.ms": str(2 * 3600 * 1000)}
    forever = topic_plan(load_settings({"PIPELINE_TOPIC_RETENTION_HOURS": "-1"}))
    assert {s.config["retention.ms"] for s in forever} == {"-1"}


def test_topic_plan_has_the_outbox_topics_named_in_full() -> None:
    env = {"PIPELINE_OUTBOX_TOPICS": "payments.events,audit.*", "PIPELINE_TOPIC_PREFIX": "p."}
    names = {s.name for s in topic_plan(load_settings(env))}
    assert "p.payments.events" in names
    assert not any(name.startswith("p.audit") for name in names)  # a prefix names no topic


def test_existing_topics_are_kept_and_a_different_shape_is_a_problem() -> None:
    plan = [TopicSpec("a", 4, 1), TopicSpec("b", 4, 1), TopicSpec("c", 1, 1), TopicSpec("d", 4, 3)]
    outcomes = compare(plan, {"b": (4, 1), "c": (4, 1), "d": (4, 1)})
    assert [(o.spec.name, o.state) for o in outcomes] == [
        ("a", "create"),
        ("b", "exists"),
        ("c", "problem"),
        ("d", "problem"),
    ]
    assert "4 partitions" in outcomes[2].detail and "replication 1" in outcomes[3].detail
