"""HTTP views served by every worker.

Reads of table state are routed to the worker that owns the key (``table_route``), so any
worker answers any read. Errors are ``{"error": "<code>", "detail": ...}``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any, cast

from aiokafka.errors import KafkaError
from faust.web import Request, Response, View
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from pipeline.app import app, settings
from pipeline.bootstrap import runtime
from pipeline.domain.dead_letters import BadFilter, Filter, parse_filter, parse_replay_request
from pipeline.domain.events import StockSet, utc_now
from pipeline.domain.failures import Unavailable
from pipeline.domain.orders import MAX_ID_LENGTH, ValidationFailed, is_storable_text
from pipeline.domain.paging import BadRequest
from pipeline.domain.revenue import REVENUE_KEY
from pipeline.services.orders import (
    Cancelled,
    CancelResult,
    Created,
    NotFound,
    Placed,
)
from pipeline.streaming.topics import inventory_commands_topic, publish
from pipeline.web.answers import answer
from pipeline.web.contract import OPENAPI_PATH, openapi_document
from pipeline.web.errors import json_errors
from pipeline.web.http import (
    HttpError,
    JsonView,
    error,
    not_sent,
    read_json,
    require_token,
)
from pipeline.web.instrument import instrument
from tables.customer_stats import customer_stats, customer_stats_table
from tables.inventory import stock, stock_table
from tables.revenue import recent_windows, revenue_table

log = logging.getLogger(__name__)
DB_DOWN = HttpError(503, "database_unavailable", "the database is unavailable; retry shortly",
                    {"Retry-After": "2"})  # fmt: skip
REBALANCING = HttpError(503, "rebalancing", "partitions are being reassigned; retry shortly",
                        {"Retry-After": "1"})  # fmt: skip

# Every request counted and timed by its route's template (GET /metrics).
instrument(cast(AiohttpWeb, app.web).web_app, runtime.metrics)


Handler = Callable[..., Awaitable[Response]]

# Every answer in the one error shape, whoever makes it (pipeline.web.errors); aiohttp freezes the
# list when the server starts, after the views are imported.
app.web.web_app.middlewares.append(json_errors)  # type: ignore[attr-defined]  # aiohttp driver

# How long a view waits for the broker to acknowledge what it sends before answering 503: the
# producer itself would wait for its request timeout (Faust's default: 20 minutes).
SEND_WAIT_SECONDS = 10.0


async def _within(seconds: float, sending: Awaitable[None]) -> None:
    """``sending`` awaited for at most ``seconds`` (``TimeoutError`` after): the send itself is
    not cancelled, as a record already handed to the producer may still be delivered."""
    task = asyncio.ensure_future(sending)
    task.add_done_callback(_retrieved)
    await asyncio.wait_for(asyncio.shield(task), seconds)


def _retrieved(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # the waiter reported it, or gave up waiting: not "never retrieved"


def unavailable_while_rebalancing(handler: Handler) -> Handler:
    """Answer 503 with a retry hint while partitions move: ownership, and so routing, is in
    flux and a table may still be recovering. Applied outside ``table_route``."""

    @functools.wraps(handler)
    async def guarded(view: View, request: Request, **kwargs: Any) -> Response:
        if app.rebalancing:
            return REBALANCING.response(view)
        return await handler(view, request, **kwargs)

    return guarded


def answered(handler: Handler) -> Handler:
    """Every failure of a view in the one error shape: an :class:`HttpError` as
    itself, bad input as ``422`` naming the fields, the database down as ``503``."""

    @functools.wraps(handler)
    async def answering(view: View, request: Request, **kwargs: Any) -> Response:
        try:
            return await handler(view, request, **kwargs)
        except HttpError as exc:
            return exc.response(view)
        except BadRequest as exc:
            return error(view, 422, "validation_failed", exc.problems)
        except Unavailable:
            return DB_DOWN.response(view)

    return answering


def within_calendar(where: Filter) -> Filter:
    """``where`` if its times can be compared with stored ones, else :class:`BadFilter`: a time
    whose UTC form falls before year 1 or after 9999 (``0001-01-01T00:00:00+14:00``) raises
    ``OverflowError`` when it is bound to a column."""
    problems: list[dict[str, str]] = []
    for name in ("since", "until"):
        when = getattr(where, name)
        try:
            if when is not None:
                when.astimezone(UTC)
        except OverflowError:
            problems.append({"field": name, "message": "must fall within years 1 to 9999 in UTC"})
    if problems:
        raise BadFilter(problems)
    return where


def _answer(view: View, outcome: Placed | CancelResult) -> Response:
    status, body, headers = answer(outcome)
    return view.json(body, status=status, headers=headers or None)


async def _alive(view: View) -> Response:
    return view.json({"status": "ok"})


@app.page("/livez")
class Live(JsonView):
    """Liveness: the process is up and its event loop answers. Nothing else is asked: a
    database or broker outage is no reason to restart the worker."""

    async def get(self, request: Request) -> Response:
        return await _alive(self)


@app.page("/healthz")
class Health(JsonView):
    """``/livez`` under its older name."""

    async def get(self, request: Request) -> Response:
        return await _alive(self)


@app.page("/readyz")
class Ready(JsonView):
    """Readiness for traffic: the database and Kafka answer and the worker's services have
    started (:mod:`pipeline.services.readiness`). A rebalance does not change it: order intake
    needs no table, and table reads answer ``503 rebalancing`` themselves meanwhile."""

    async def get(self, request: Request) -> Response:
        state = await runtime.readiness()
        if not state.ready:
            return self.json(state.to_json(), status=503, headers={"Retry-After": "2"})
        return self.json(state.to_json())


@app.page("/readyz/tables")
class TablesReady(JsonView):
    """Table readiness: partitions assigned, tables recovered and the worker's services
    started, so routed table reads are answered (``503`` + ``Retry-After`` while partitions
    move)."""

    async def get(self, request: Request) -> Response:
        recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        if app.rebalancing or not recovered or not runtime.ready:
            return self.json(
                {
                    "status": "starting",
                    "rebalancing": app.rebalancing,
                    "recovered": recovered,
                    "services": runtime.ready,
                },
                status=503,
                headers={"Retry-After": "1"},
            )
        return self.json({"status": "ready"})


@app.page(OPENAPI_PATH)
class OpenApi(JsonView):
    """``GET /openapi.json``: the API's contract (pipeline.web.contract); public, like the
    document in docs/openapi.json it equals."""

    document = openapi_document()

    async def get(self, request: Request) -> Response:
        return self.json(self.document)


@app.page("/metrics")
class MetricsView(JsonView):
    async def get(self, request: Request) -> Response:
        await runtime.refresh_metrics()
        return self.bytes(runtime.metrics.render(), content_type="text/plain; version=0.0.4")


@app.page("/orders")
class Orders(JsonView):
    """``POST /orders``: the order, its items and its event commit together, or nothing."""

    async def post(self, request: Request) -> Response:
        try:
            require_token(request, settings)
            body = await read_json(request, settings)
            placed = await runtime.orders.place_order(body, request.headers.get("Idempotency-Key"))
        except HttpError as exc:
            runtime.metrics.http_rejected.labels(exc.code).inc()
            return exc.response(self)
        except ValidationFailed as exc:
            runtime.metrics.http_rejected.labels("validation_failed").inc()
            return error(self, 422, "validation_failed", [e.to_dict() for e in exc.errors])
        except Unavailable as exc:
            log.warning("POST /orders: database unavailable: %s", type(exc).__name__)
            runtime.metrics.http_rejected.labels("database_unavailable").inc()
            return DB_DOWN.response(self)
        if isinstance(placed, Created):
            runtime.metrics.orders_created.inc()
        return _answer(self, placed)


@app.page("/orders/{order_id}/cancel")
class CancelOrder(JsonView):
    """``POST /orders/{order_id}/cancel``: 200, 404 unknown, 409 already cancelled."""

    async def post(self, request: Request, order_id: str) -> Response:
        try:
            require_token(request, settings)
            if not is_storable_text(order_id, MAX_ID_LENGTH):  # no such order can exist
                return _answer(self, NotFound(order_id))
            result = await runtime.orders.cancel_order(order_id)
        except HttpError as exc:
            return exc.response(self)
        except Unavailable:
            return DB_DOWN.response(self)
        if isinstance(result, Cancelled):
            runtime.metrics.orders_cancelled.inc()
        return _answer(self, result)


@app.page("/orders/{order_id}")
class OrderDetail(JsonView):
    """``GET /orders/{order_id}``: the order, its items and its status (it shows the
    customer's email: it takes the token when one is set)."""

    async def get(self, request: Request, order_id: str) -> Response:
        try:
            require_token(request, settings)
            if not is_storable_text(order_id, MAX_ID_LENGTH):  # no such order can exist
                return error(self, 404, "not_found", f"no order {order_id!r}")
            order = await runtime.order_store.get_order(order_id)
        except HttpError as exc:
            return exc.response(self)
        except Unavailable:
            return DB_DOWN.response(self)
        if order is None:
            return error(self, 404, "not_found", f"no order {order_id!r}")
        return self.json(order)


@app.page("/customers/{customer_id}/stats")
class CustomerStatsView(JsonView):
    """``GET /customers/{customer_id}/stats``: answered by the worker owning the customer
    (it shows what the customer spent: it takes the token when one is set, and the routed
    request carries it to the owner)."""

    # Faust types view handlers without path parameters; aiohttp passes them as kwargs.
    @unavailable_while_rebalancing
    @app.table_route(table=customer_stats_table, match_info="customer_id")  # type: ignore[arg-type]
    async def get(self, request: Request, customer_id: str) -> Response:
        try:
            require_token(request, settings)
        except HttpError as exc:
            return exc.response(self)
        stats = customer_stats.get(customer_id)
        if stats is None:
            return error(self, 404, "not_found", f"no orders seen for customer {customer_id!r}")
        return self.json(stats.public())


@app.page("/inventory/{sku}")
class Inventory(JsonView):
    """``GET /inventory/{sku}`` (routed to the SKU's owner) and ``PUT /inventory/{sku}``."""

    @unavailable_while_rebalancing
    @app.table_route(table=stock_table, match_info="sku")  # type: ignore[arg-type]
    async def get(self, request: Request, sku: str) -> Response:
        value = stock.get(sku)
        if value is None:
            return error(self, 404, "not_found", f"no stock known for SKU {sku!r}")
        return self.json(value.public())

    async def put(self, request: Request, sku: str) -> Response:
        """Set the units available; applied by the SKU's owner in order with reservations."""
        try:
            require_token(request, settings)
            body = await read_json(request, settings)
        except HttpError as exc:
            return exc.response(self)
        available = body.get("available") if isinstance(body, dict) else None
        problems = []
        if not isinstance(body, dict):
            problems.append({"field": "body", "message": "must be a JSON object"})
        elif isinstance(available, bool) or not isinstance(available, int):
            problems.append({"field": "available", "message": "must be an integer"})
        elif not 0 <= available <= 1_000_000_000:
            problems.append({"field": "available", "message": "must be between 0 and 1e9"})
        elif set(body) - {"available"}:
            problems.extend({"field": k, "message": "unknown field"}
                            for k in sorted(set(body) - {"available"}))  # fmt: skip
        if not is_storable_text(sku, MAX_ID_LENGTH):  # as an order's SKUs
            message = f"must be 1 to {MAX_ID_LENGTH} printable characters"
            problems.append({"field": "sku", "message": message})
        if problems:
            return error(self, 422, "validation_failed", problems)
        assert isinstance(available, int)
        command = StockSet(str(uuid.uuid4()), sku, available, utc_now())
        try:
            await _within(SEND_WAIT_SECONDS, publish(inventory_commands_topic, sku, command))
        except KafkaError as exc:
            log.warning("PUT /inventory: the stock set of %r was not sent: %r", sku, exc)
            return not_sent(exc, "the stock set").response(self)
        except TimeoutError:
            log.warning("PUT /inventory: the stock set of %r is not acknowledged yet", sku)
            return HttpError(503, "kafka_unavailable", (
                f"Kafka did not acknowledge the stock set within {SEND_WAIT_SECONDS:g} s; it may "
                "still be applied, and a retry is safe: the newest stock set wins"
            ), {"Retry-After": "5"}).response(self)  # fmt: skip
        return self.json({"sku": sku, "available": available, "status": "accepted"}, status=202)


@app.page("/analytics/revenue")
class Revenue(JsonView):
    """``GET /analytics/revenue``: recent windows, newest first, from the windows' owner (the
    shop's revenue: it takes the token when one is set)."""

    @unavailable_while_rebalancing
    @app.table_route(table=revenue_table.table, exact_key=REVENUE_KEY)  # type: ignore[arg-type]
    async def get(self, request: Request) -> Response:
        try:
            require_token(request, settings)
        except HttpError as exc:
            return exc.response(self)
        return self.json({"windows": recent_windows()})


@app.page("/dead-letters")
class DeadLettersView(JsonView):
    """``GET /dead-letters``: dead letters, oldest first, filtered by ``agent``, ``error_type``,
    ``reason``, ``status``, ``event_id``, ``since``, ``until`` and ``limit`` (an admin read:
    it shows event payloads, so it takes the token when one is set)."""

    @answered
    async def get(self, request: Request) -> Response:
        require_token(request, settings)
        where = within_calendar(parse_filter(dict(request.query)))
        letters = await runtime.dead_letters.list(where)
        return self.json({"dead_letters": [d.to_json(full=True) for d in letters]})


@app.page("/dead-letters/replay")
class ReplayDeadLetters(JsonView):
    """``POST /dead-letters/replay``: send dead letters back through the agent that failed
    them — by ``ids``, by ``event_id``, by filter, or ``{"all": true}``."""

    async def post(self, request: Request) -> Response:
        try:
            require_token(request, settings)
            body = await read_json(request, settings)
            where = within_calendar(parse_replay_request(body))
            result = await runtime.dead_letters.replay(where, requested_by="http")
        except HttpError as exc:
            return exc.response(self)
        except BadFilter as exc:
            return error(self, 422, "validation_failed", exc.problems)
        except (Unavailable, OSError):
            return DB_DOWN.response(self)
        except KafkaError as exc:  # refused for good: a replay retries any other
            log.warning("POST /dead-letters/replay: a replay was not sent: %r", exc)
            return not_sent(exc, "a replay (those before it were sent)").response(self)
        return self.json(result.to_json())


@app.page("/admin/reconcile")
class Reconcile(JsonView):
    """``GET /admin/reconcile``: the database against the tables, the outbox and Kafka (see
    ``pipeline.services.reconcile``); ``?kafka=false`` skips scanning ``orders.events``
    (``true``, the default, scans it; anything else is a 422)."""

    async def get(self, request: Request) -> Response:
        try:
            require_token(request, settings)
        except HttpError as exc:
            return exc.response(self)
        problems = [{"field": name, "message": "unknown parameter; known: kafka"}
                    for name in sorted(set(request.query) - {"kafka"})]  # fmt: skip
        if request.query.get("kafka", "true") not in ("true", "false"):
            problems.append({"field": "kafka", "message": "must be true or false"})
        if problems:
            return error(self, 422, "validation_failed", problems)
        scan = request.query.get("kafka", "true") == "true"
        try:
            report = await runtime.reconcile(scan_kafka=scan)
        except (Unavailable, OSError):
            return DB_DOWN.response(self)
        return self.json(report.to_json())
