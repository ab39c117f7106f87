"""Every HTTP request counted and timed by its route's template, on a worker's web server and on
the standalone forwarder's (``pipeline.cli.forwarder``).

The label is the template aiohttp matched (``/customers/{customer_id}/stats``), never the path,
so a scraper sees one series per route and method whatever the keys asked for; a request that
matched no route is labelled ``unmatched``. A route added later (``app.page``) is labelled the
same way with nothing to change here. A request is timed from when its headers are in until
its answer is ready (not until the client has read it); a table read routed to its owner is
counted on both workers, each of which answered it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from aiohttp.typedefs import Middleware

from pipeline.metrics import UNMATCHED_ROUTE, Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_template(request: web.Request) -> str:
    """The template of the route ``request`` matched, or ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def middleware(metrics: Metrics) -> Middleware:
    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = route_template(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own answers: 404, 405, 413 ...
            metrics.observe_request(request.method, route, exc.status, _since(started))
            raise
        except Exception:  # aiohttp answers 500 (and logs the traceback)
            metrics.observe_request(request.method, route, 500, _since(started))
            raise
        metrics.observe_request(request.method, route, response.status, _since(started))
        return response

    return observe


def _since(started: float) -> float:
    return time.perf_counter() - started


def served_routes(application: web.Application) -> Iterator[tuple[str, str]]:
    """``(method, template)`` of every route ``application`` serves (HEAD and OPTIONS aside)."""
    for route in application.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*") or route.resource is None:
            continue
        yield route.method, route.resource.canonical


def instrument(application: web.Application, metrics: Metrics) -> None:
    """Count and time every request ``application`` answers; once it starts, show each of its
    routes at zero (before its first request, a dashboard has a line to draw).

    The middleware goes first, outside any other, whenever it is added: what it counts is the
    status the client got, after any other middleware has turned an exception into an answer."""
    application.middlewares.insert(0, middleware(metrics))

    async def declare(app: web.Application) -> None:
        metrics.declare_routes(served_routes(app))

    application.on_startup.append(declare)
