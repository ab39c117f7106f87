"""The worker's instrumentation, offline: requests counted and timed by route template, commits
timed through the driver's commit, rebalances through Faust's sensors, the outbox's gauges
from its store, and the process and garbage-collector collectors on the worker's registry."""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import faust.transport.drivers.aiokafka as faust_aiokafka
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from faust.sensors.base import SensorDelegate

from pipeline.adapters.memory import MemoryDatabase, MemoryOutboxStore
from pipeline.domain.events import utc_now
from pipeline.domain.failures import Unavailable
from pipeline.metrics import Metrics
from pipeline.services.outbox import export_outbox_state
from pipeline.streaming.faust_patches import hooks
from pipeline.streaming.rebalances import RebalanceSensor
from pipeline.web.instrument import instrument, middleware, served_routes
from tests.conftest import order_created

STATS = "/customers/{customer_id}/stats"


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def web_app() -> web.Application:
    async def stats(request: web.Request) -> web.Response:
        if request.match_info["customer_id"] == "nobody":
            return web.json_response({"error": "not_found"}, status=404)
        return web.json_response({"customer_id": request.match_info["customer_id"]})

    async def boom(request: web.Request) -> web.Response:
        raise LookupError("a bug")

    async def too_large(request: web.Request) -> web.Response:
        raise web.HTTPRequestEntityTooLarge(max_size=1, actual_size=2)

    app = web.Application()
    app.router.add_get(STATS, stats)
    app.router.add_get("/boom", boom)
    app.router.add_post("/upload", too_large)
    return app


async def serve(app: web.Application, metrics: Metrics, method: str, path: str) -> int:
    """``path`` answered through the router and the middleware, as aiohttp would."""
    match = await app.router.resolve(make_mocked_request(method, path, app=app))
    request = make_mocked_request(method, path, app=app)
    request._match_info = match  # as aiohttp's request handler sets it
    try:
        response = await middleware(metrics)(request, match.handler)
    except web.HTTPException as exc:
        return exc.status
    except LookupError:
        return 500
    return response.status


async def test_requests_are_counted_by_route_template_method_and_code() -> None:
    metrics, app = Metrics(), web_app()
    for customer in ("alice", "bob", "carol"):
        assert await serve(app, metrics, "GET", f"/customers/{customer}/stats") == 200
    assert await serve(app, metrics, "GET", "/customers/nobody/stats") == 404
    counted = {"method": "GET", "route": STATS}
    assert value(metrics, "pipeline_http_requests_total", code="200", **counted) == 3
    assert value(metrics, "pipeline_http_requests_total", code="404", **counted) == 1
    assert value(metrics, "pipeline_http_request_duration_seconds_count", **counted) == 4
    assert value(metrics, "pipeline_http_request_duration_seconds_sum", **counted) > 0
    # one series per route, whatever the keys asked for
    assert "alice" not in metrics.render().decode()


async def test_a_path_no_route_serves_is_counted_as_unmatched() -> None:
    metrics, app = Metrics(), web_app()
    assert await serve(app, metrics, "GET", "/no/such/route") == 404
    assert await serve(app, metrics, "DELETE", "/boom") == 405
    assert value(metrics, "pipeline_http_requests_total", method="GET", route="unmatched",
                 code="404") == 1  # fmt: skip
    # aiohttp's router answers a method a route does not serve without naming the route
    assert value(metrics, "pipeline_http_requests_total", method="DELETE", route="unmatched",
                 code="405") == 1  # fmt: skip
    assert "/no/such/route" not in metrics.render().decode()


async def test_aiohttps_own_errors_and_a_raising_handler_are_counted_with_their_status() -> None:
    metrics, app = Metrics(), web_app()
    assert await serve(app, metrics, "POST", "/upload") == 413
    assert await serve(app, metrics, "GET", "/boom") == 500
    assert value(metrics, "pipeline_http_requests_total", method="POST", route="/upload",
                 code="413") == 1  # fmt: skip
    assert value(metrics, "pipeline_http_requests_total", method="GET", route="/boom",
                 code="500") == 1  # fmt: skip


@pytest.mark.parametrize("added", ["before", "after"])
async def test_the_status_counted_is_the_one_the_client_gets_whatever_else_answers(
    added: str,
) -> None:
    """Another middleware (one that turns exceptions into answers, say), added before or after
    the instrumentation, runs inside it."""
    metrics, app = Metrics(), web_app()

    @web.middleware
    async def failures_as_503(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return cast(web.StreamResponse, await handler(request))
        except LookupError:
            return web.json_response({"error": "unavailable"}, status=503)

    if added == "before":
        app.middlewares.append(failures_as_503)
    instrument(app, metrics)
    if added == "after":
        app.middlewares.append(failures_as_503)
    match = await app.router.resolve(make_mocked_request("GET", "/boom", app=app))
    request = make_mocked_request("GET", "/boom", app=app)
    request._match_info = match
    handler = match.handler
    for outer in reversed(app.middlewares):  # aiohttp's order: the first is the outermost
        handler = functools.partial(outer, handler=handler)
    assert (await handler(request)).status == 503
    counted = {"method": "GET", "route": "/boom"}
    assert value(metrics, "pipeline_http_requests_total", code="503", **counted) == 1
    assert value(metrics, "pipeline_http_requests_total", code="500", **counted) == 0


async def test_every_route_is_shown_at_zero_once_the_server_starts() -> None:
    metrics, app = Metrics(), web_app()
    instrument(app, metrics)

    async def later(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/added/{later}", later)  # a route added after instrument()
    app.freeze()
    await app.startup()
    for method, route in (("GET", STATS), ("GET", "/boom"), ("POST", "/upload"),
                          ("GET", "/added/{later}")):  # fmt: skip
        sample = metrics.registry.get_sample_value(
            "pipeline_http_request_duration_seconds_count", {"method": method, "route": route}
        )
        assert sample == 0, (method, route)
    assert ("HEAD", STATS) not in set(served_routes(app))  # aiohttp's implicit HEAD for GET


def test_the_workers_routes_are_instrumented_by_their_templates() -> None:
    from pipeline.app import app
    from pipeline.web import views  # registers the views and the middleware

    web_app = app.web.web_app  # type: ignore[attr-defined]
    routes = set(served_routes(web_app))
    assert {("GET", STATS), ("POST", "/orders"), ("GET", "/metrics")} <= routes
    assert views.instrument is instrument
    assert [m for m in web_app.middlewares if m.__qualname__.startswith("middleware.")]


async def test_each_offset_commit_is_timed_and_a_refused_one_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter([True, False, True])

    async def stock_commit(self: Any, offsets: Any) -> bool:
        await asyncio.sleep(0.01)
        return next(answers)

    metrics = Metrics()
    monkeypatch.setattr(hooks, "STOCK_THREAD_COMMIT", stock_commit)
    monkeypatch.setattr(hooks, "_after_commit", [])
    hooks.after_commit(metrics.observe_commit)
    hooks.after_commit(metrics.observe_commit)  # registered twice: observed once
    assert [await hooks._timed_commit(object(), {}) for _ in range(3)] == [True, False, True]
    assert value(metrics, "pipeline_offset_commit_duration_seconds_count") == 3
    assert value(metrics, "pipeline_offset_commit_duration_seconds_sum") >= 0.03
    assert value(metrics, "pipeline_offset_commit_failures_total") == 1


def test_the_drivers_commit_is_the_timed_one_and_the_runtime_observes_it() -> None:
    from pipeline.bootstrap import runtime

    assert faust_aiokafka.AIOKafkaConsumerThread._commit is hooks._timed_commit
    assert runtime.metrics.observe_commit in hooks._after_commit


def test_a_rebalance_is_counted_and_timed_through_fausts_sensors() -> None:
    from pipeline.app import app

    metrics = Metrics()
    sensors = SensorDelegate(app)
    sensors.add(RebalanceSensor(metrics))
    state = sensors.on_rebalance_start(app)
    assert value(metrics, "pipeline_rebalances_total") == 1
    assert value(metrics, "pipeline_rebalancing") == 1
    sensors.on_rebalance_return(app, state)
    sensors.on_rebalance_end(app, state)
    assert value(metrics, "pipeline_rebalancing") == 0
    assert value(metrics, "pipeline_rebalance_duration_seconds_count") == 1


def test_the_runtime_listens_to_rebalances() -> None:
    from pipeline.app import app
    from pipeline.bootstrap import runtime

    mine = [s for s in app.sensors if isinstance(s, RebalanceSensor)]
    assert [s.metrics for s in mine] == [runtime.metrics]


def test_lag_is_labelled_with_the_consumer_group() -> None:
    metrics = Metrics()
    metrics.set_lag("orders-pipeline", {("orders.events", 0): 7, ("orders.events", 1): 0})
    assert value(metrics, "pipeline_consumer_lag", group="orders-pipeline",
                 topic="orders.events", partition="0") == 7  # fmt: skip
    metrics.set_lag("orders-pipeline", {("orders.events", 1): 2})  # partition 0 moved away
    assert metrics.registry.get_sample_value(
        "pipeline_consumer_lag", {"group": "orders-pipeline", "topic": "orders.events",
                                  "partition": "0"}
    ) is None  # fmt: skip


async def test_the_outbox_gauges_come_from_the_store() -> None:
    db = MemoryDatabase()
    store = MemoryOutboxStore(db)
    created = utc_now() - timedelta(seconds=90)
    for n in range(3):
        db.add_event(order_created(f"c{n}", at=created))
    rows = await store.pending(10)
    await store.record([rows[0].id], [(rows[1].id, "too large")], utc_now())
    metrics = Metrics()
    await export_outbox_state(store, metrics)
    assert value(metrics, "pipeline_outbox_backlog") == 1
    assert value(metrics, "pipeline_outbox_parked_rows") == 1
    assert 89 < value(metrics, "pipeline_outbox_oldest_unpublished_age_seconds") < 120


class _Store:
    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay, self.error = delay, error

    async def backlog(self) -> tuple[int, None]:
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return 5, None

    async def parked_count(self) -> int:
        return 0


@pytest.mark.parametrize("store", [_Store(error=Unavailable("down")), _Store(delay=5)],
                         ids=["database down", "database slow"])  # fmt: skip
async def test_a_scrape_keeps_the_outbox_gauges_when_the_database_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, store: _Store
) -> None:
    from pipeline import bootstrap
    from pipeline.bootstrap import runtime

    monkeypatch.setattr(bootstrap, "METRICS_DATABASE_SECONDS", 0.05)
    monkeypatch.setitem(runtime.__dict__, "outbox_store", _Store())
    await runtime.refresh_metrics()
    assert value(runtime.metrics, "pipeline_outbox_backlog") == 5
    monkeypatch.setitem(runtime.__dict__, "outbox_store", store)
    async with asyncio.timeout(2):
        await runtime.refresh_metrics()
    assert value(runtime.metrics, "pipeline_outbox_backlog") == 5


def test_the_registry_carries_the_process_platform_and_gc_collectors() -> None:
    text = Metrics().render().decode()
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                 "python_gc_collections_total", "python_info"):  # fmt: skip
        assert f"\n{name}" in text, name
    assert Metrics().registry.get_sample_value("process_resident_memory_bytes", {}) > 0


async def test_fausts_driver_commit_answers_false_when_the_coordinator_refuses() -> None:
    """Pinned: the commit failures counted are the driver's False answers (a commit refused
    after a rebalance; any other error also crashes the consumer)."""
    from aiokafka.errors import CommitFailedError, KafkaConnectionError
    from faust.types import TP

    crashed: list[BaseException] = []

    def thread(error: BaseException | None) -> Any:
        async def commit(offsets: Any) -> None:
            if error is not None:
                raise error

        async def crash(exc: BaseException) -> None:
            crashed.append(exc)

        consumer = SimpleNamespace(commit=commit)
        tp = TP("orders.events", 0)
        return SimpleNamespace(
            _ensure_consumer=lambda: consumer, assignment=lambda: {tp}, tp_last_committed_at={},
            log=SimpleNamespace(exception=lambda *a, **k: None), crash=crash,
        ), {tp: 10}  # fmt: skip

    stock = hooks.STOCK_THREAD_COMMIT
    assert await stock(*thread(None)) is True
    rebalanced = CommitFailedError("Commit cannot be completed since the group has already "
                                   "rebalanced")  # fmt: skip
    assert await stock(*thread(rebalanced)) is False and not crashed
    assert await stock(*thread(KafkaConnectionError())) is False and len(crashed) == 1
