"""The live dashboard, served by every worker: the whole cluster's figures on one page.

- ``GET /dashboard``: one self-contained page (``dashboard.html``: inline CSS and JS, charts
  drawn as SVG; its Content-Security-Policy lets it load nothing and call only this worker)
  that polls ``/dashboard/data`` every two seconds.
- ``GET /dashboard/data``: the numbers the page shows. The worker asked gathers every worker's
  snapshot (its own directly, the others' over HTTP) and reads the outbox backlog and the dead
  letters from the database, which all workers share.
- ``GET /dashboard/worker``: this worker's snapshot: its counters and their rates, the lag of
  the partitions it consumes, the top customers of the ``customer_stats`` partitions it owns
  and, on the revenue table's owner, the revenue windows.

The other workers are the members named in the partition assignor's metadata, which every
member receives at each rebalance: the same map Faust's table router sends reads by. All
three are read-only and do bounded work: one request per worker, ``TOP_CUSTOMERS`` customers
from each, answers cached for a second so that several open pages cost what one does.

The figures name customers and their spend, so when ``PIPELINE_API_TOKEN`` is set both data
endpoints take ``Authorization: Bearer <token>`` like the write endpoints, and the worker
gathering the figures sends its own token to the others (every worker of a group shares it).
The page itself holds no figures and stays open: it asks the user for the token when
``/dashboard/data`` answers 401, keeps it for the browser tab (``sessionStorage``) and sends
it with each poll; ``/dashboard#token=<token>`` hands it over in a link that never reaches
the server (the fragment is not sent, and the page drops it from the address bar).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import aiohttp
from faust.web import Request, Response
from prometheus_client import Counter
from yarl import URL

from pipeline.app import app, settings
from pipeline.bootstrap import runtime
from pipeline.domain.dashboard import (
    CounterHistory,
    CustomerFigures,
    Lag,
    WorkerSnapshot,
    dead_letter_summary,
    merge,
    top_customers,
)
from pipeline.domain.events import utc_now
from pipeline.domain.failures import Unavailable
from pipeline.web.http import HttpError, JsonView, require_token
from tables.customer_stats import customer_stats_table, read_figures
from tables.revenue import recent_windows, revenue_table

TOP_CUSTOMERS = 10
REFRESH_SECONDS = 2.0
CACHE_SECONDS = 1.0
PEER_TIMEOUT_SECONDS = 3.0

events_history = CounterHistory()
orders_history = CounterHistory()
_cache: dict[str, tuple[float, dict[str, Any]]] = {}


def _page() -> tuple[str, str]:
    """The page, and a CSP that allows its own inline script and style and nothing else."""
    html = resources.files("pipeline.web").joinpath("dashboard.html").read_text(encoding="utf-8")

    def digest(tag: str) -> str:
        found = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        assert found is not None, f"dashboard.html has no <{tag}>"
        raw = hashlib.sha256(found.group(1).encode()).digest()
        return f"'sha256-{base64.b64encode(raw).decode()}'"

    policy = (
        f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return html, policy


PAGE, CONTENT_SECURITY_POLICY = _page()
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
DATA_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def counter_totals(counter: Counter, label: str | None = None) -> dict[str, float]:
    """A counter's values since the process started, by ``label`` (one ``""`` without)."""
    return {
        sample.labels.get(label, "") if label else "": sample.value
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


@app.timer(interval=1.0)
async def sample_counters() -> None:
    """Sample the counters every second, so rates are there when a page first asks."""
    now = time.monotonic()
    events_history.add(now, counter_totals(runtime.metrics.events_processed, "agent"))
    orders_history.add(now, counter_totals(runtime.metrics.orders_created))


def _own_url() -> str:
    return str(app.conf.canonical_url)


def _ident(url: str) -> tuple[str, int]:
    parsed = URL(url)
    return parsed.host or "", parsed.port or 80


def _active_partitions(topic: str) -> tuple[int, ...]:
    actives = app.assignor.assigned_actives()
    return tuple(sorted(tp.partition for tp in actives if tp.topic == topic))


def worker_snapshot() -> WorkerSnapshot:
    """This worker's part. The customer scan reads the figures only (``read_figures``)."""
    recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
    lag: dict[tuple[str, int], int] = {}
    with contextlib.suppress(Exception):  # no assignment yet (starting, rebalancing)
        lag = runtime.consumer_lag()
    customers = top_customers(
        (CustomerFigures.from_json(read_figures(raw)) for raw in customer_stats_table.values()),
        TOP_CUSTOMERS,
    )
    stats_topic = customer_stats_table.changelog_topic.get_topic_name()
    revenue_topic = revenue_table.table.changelog_topic.get_topic_name()
    return WorkerSnapshot(
        url=_own_url(),
        ready=recovered and not app.rebalancing,
        events_processed=counter_totals(runtime.metrics.events_processed, "agent"),
        events_per_second=events_history.rates(),
        orders_created=counter_totals(runtime.metrics.orders_created).get("", 0.0),
        orders_per_second=orders_history.rates().get("", 0.0),
        lag=tuple(Lag(t, p, n) for (t, p), n in sorted(lag.items())),
        customer_partitions=_active_partitions(stats_topic),
        top_customers=tuple(customers),
        revenue=recent_windows() if _active_partitions(revenue_topic) else None,
    )


def member_urls() -> set[str]:
    """Every worker of the group, as the last assignment named them (this one included)."""
    router = app.router
    with contextlib.suppress(Exception):  # before the first assignment: just this worker
        return {_own_url(), *router.tables_metadata(), *router.external_topics_metadata()}
    return {_own_url()}


def _auth_headers() -> dict[str, str]:
    token = settings.api_token.get()
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _peer_snapshot(session: aiohttp.ClientSession, url: str) -> WorkerSnapshot:
    async with session.get(str(URL(url) / "dashboard" / "worker"), headers=_auth_headers()) as resp:
        if resp.status != 200:
            raise OSError(f"answered {resp.status}")
        return WorkerSnapshot.from_json(await resp.json())


async def _peer_snapshots(urls: list[str]) -> list[WorkerSnapshot | BaseException]:
    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await asyncio.gather(
            *(_peer_snapshot(session, url) for url in urls), return_exceptions=True
        )


async def _database_figures() -> dict[str, Any]:
    try:
        backlog, oldest = await runtime.outbox_store.backlog()
        dead = await runtime.dead_letter_store.counts()
    except (Unavailable, OSError) as exc:
        return {"outbox": None, "dead_letters": None, "database_error": type(exc).__name__}
    age = 0.0 if oldest is None else max(0.0, (utc_now() - oldest).total_seconds())
    return {
        "outbox": {"backlog": backlog, "oldest_unpublished_age_seconds": round(age, 1)},
        "dead_letters": dead_letter_summary(dead),
        "database_error": None,
    }


async def cluster_figures() -> dict[str, Any]:
    """What ``GET /dashboard/data`` answers: every worker's snapshot merged, and the
    database's figures."""
    own = _own_url()
    peers = sorted(url for url in member_urls() if _ident(url) != _ident(own))
    answers, database = await asyncio.gather(_peer_snapshots(peers), _database_figures())
    snapshots, unreachable = [worker_snapshot()], {}
    for url, answer in zip(peers, answers, strict=True):
        if isinstance(answer, WorkerSnapshot):
            snapshots.append(answer)
        else:
            unreachable[url] = f"{type(answer).__name__}: {answer}"[:200]
    figures = merge(snapshots, unreachable, partitions=settings.partitions, top_n=TOP_CUSTOMERS)
    return {
        "generated_at": utc_now().isoformat(),
        "served_by": own,
        "refresh_seconds": REFRESH_SECONDS,
        **figures,
        **database,
    }


async def _cached(name: str, compute: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    now = time.monotonic()
    hit = _cache.get(name)
    if hit is not None and now - hit[0] < CACHE_SECONDS:
        return hit[1]
    value = await compute()
    _cache[name] = (time.monotonic(), value)
    return value


async def _own_snapshot() -> dict[str, Any]:
    return worker_snapshot().to_json()


@app.page("/dashboard")
class Dashboard(JsonView):
    """``GET /dashboard``: the page (it fetches nothing but ``/dashboard/data``). Open even
    with a token set: it holds no figures."""

    async def get(self, request: Request) -> Response:
        return self.html(PAGE, headers=dict(PAGE_HEADERS))


@app.page("/dashboard/data")
class DashboardData(JsonView):
    """``GET /dashboard/data``: the whole cluster's figures, exactly as the page shows them."""

    async def get(self, request: Request) -> Response:
        try:
            require_token(request, settings)
        except HttpError as exc:
            return exc.response(self)
        return self.json(await _cached("cluster", cluster_figures), headers=dict(DATA_HEADERS))


@app.page("/dashboard/worker")
class DashboardWorker(JsonView):
    """``GET /dashboard/worker``: this worker's part, for the worker that gathers them."""

    async def get(self, request: Request) -> Response:
        try:
            require_token(request, settings)
        except HttpError as exc:
            return exc.response(self)
        return self.json(await _cached("worker", _own_snapshot), headers=dict(DATA_HEADERS))
