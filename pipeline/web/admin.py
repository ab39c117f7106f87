"""The operator's verbs and lists over HTTP, beside their CLI equivalents.

- ``GET /admin/outbox/parked``, ``POST /admin/outbox/requeue``, ``POST /admin/outbox/discard``:
  parked outbox rows (:mod:`pipeline.services.outbox_admin`).
- ``POST /dead-letters/discard``: dead letters judged worthless, by the selection replay takes.
- ``GET /customers/{customer_id}/orders``: a customer's orders, newest first, from the database.
- ``GET /inventory``: every SKU with its stock. The stock lives only in the ``stock`` table,
  partitioned by SKU (a stock set never touches the database), so the worker asked gathers
  each worker's share (``GET /worker/inventory``: the partitions it owns) and merges them;
  it answers ``503`` rather than a page with partitions missing.

All take the token when one is set; lists are keyset-paged (``after``/``before`` and
``limit``, at most :data:`pipeline.domain.paging.MAX_PAGE`), and answer ``next``, the cursor of
the next page, or null on the last. Bad input is ``422`` with the fields at fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import aiohttp
from aiohttp import web
from faust.web import Request, Response
from yarl import URL

from pipeline.app import app, settings
from pipeline.bootstrap import runtime
from pipeline.domain.audit import Audit
from pipeline.domain.dead_letters import parse_discard_request
from pipeline.domain.events import utc_now
from pipeline.domain.outbox import parse_discard_request as parse_outbox_discard
from pipeline.domain.outbox import parse_requeue_request
from pipeline.domain.paging import (
    BadRequest,
    key,
    merge_pages,
    order_cursor,
    page_size,
    parse_order_cursor,
    row_id,
)
from pipeline.streaming.topics import ORDER_EVENTS
from pipeline.web.http import HttpError, JsonView, read_json, require_token
from pipeline.web.views import REBALANCING, answered, within_calendar
from tables.inventory import local_skus, stock_table

log = logging.getLogger(__name__)
PEER_TIMEOUT_SECONDS = 5.0


def _query(request: Request, known: set[str]) -> Mapping[str, str]:
    """The query parameters, none unknown or repeated."""
    query = cast(web.Request, request).query
    problems = [{"field": k, "message": f"unknown parameter; known: {', '.join(sorted(known))}"}
                for k in sorted(set(query) - known)]  # fmt: skip
    problems += [{"field": k, "message": "given more than once"}
                 for k in sorted(known) if len(query.getall(k, [])) > 1]  # fmt: skip
    if problems:
        raise BadRequest(problems)
    return query


def _requester(request: Request) -> str:
    """Who asks, when the body does not say (``by``): the HTTP API and the peer's address."""
    return f"http:{cast(web.Request, request).remote or 'unknown'}"


@app.page("/admin/outbox/parked")
class ParkedOutbox(JsonView):
    """``GET /admin/outbox/parked?after=&limit=``: parked rows by id, why each was parked."""

    @answered
    async def get(self, request: Request) -> Response:
        require_token(request, settings)
        query = _query(request, {"after", "limit"})
        problems: list[dict[str, str]] = []
        after = row_id(query.get("after"), problems)
        limit = page_size(query.get("limit"), problems)
        if problems:
            raise BadRequest(problems)
        rows, after_last = await runtime.outbox_operations.parked(after, limit)
        topic, now = settings.topic_name(ORDER_EVENTS), utc_now()
        return self.json({"parked": [r.to_json(topic, now) for r in rows], "next": after_last})


@app.page("/admin/outbox/requeue")
class RequeueOutbox(JsonView):
    """``POST /admin/outbox/requeue`` ``{"ids": [...]}`` or ``{"all": true}``, with
    ``out_of_order``, ``why`` and ``by``: parked rows back to the forwarder."""

    @answered
    async def post(self, request: Request) -> Response:
        require_token(request, settings)
        body = await read_json(request, settings)
        wanted = parse_requeue_request(body, by=_requester(request))
        result = await runtime.outbox_operations.requeue(wanted)
        # The forwarder finds the rows at its next poll, or at once on PostgreSQL's NOTIFY.
        return self.json(result.to_json("requeued"))


@app.page("/admin/outbox/discard")
class DiscardOutbox(JsonView):
    """``POST /admin/outbox/discard`` ``{"ids": [...], "why": "..."}``: parked rows never to
    be published, each recorded with who and why."""

    @answered
    async def post(self, request: Request) -> Response:
        require_token(request, settings)
        body = await read_json(request, settings)
        wanted = parse_outbox_discard(body, by=_requester(request))
        result = await runtime.outbox_operations.discard(wanted)
        return self.json(result.to_json("discarded"))


@app.page("/dead-letters/discard")
class DiscardDeadLetters(JsonView):
    """``POST /dead-letters/discard``: the selection replay takes (``ids``, ``event_id``, a
    filter, or ``"all": true``) and ``why``: no longer replayed nor counted open."""

    @answered
    async def post(self, request: Request) -> Response:
        require_token(request, settings)
        body = await read_json(request, settings)
        where, by, why = parse_discard_request(body, by=_requester(request))
        where = within_calendar(where)
        result = await runtime.dead_letters.discard(where, Audit(by, why, utc_now()))
        return self.json(result.to_json())


@app.page("/customers/{customer_id}/orders")
class CustomerOrders(JsonView):
    """``GET /customers/{customer_id}/orders?before=&limit=``: newest first, from the database
    (it shows what the customer bought: it takes the token when one is set)."""

    @answered
    async def get(self, request: Request, customer_id: str) -> Response:
        require_token(request, settings)
        query = _query(request, {"before", "limit"})
        problems: list[dict[str, str]] = []
        key(customer_id, problems, "customer_id")
        before = parse_order_cursor(query.get("before"), problems)
        limit = page_size(query.get("limit"), problems)
        if problems:
            raise BadRequest(problems)
        found = await runtime.order_store.customer_orders(customer_id, before, limit + 1)
        page, cursor = found[:limit], None
        if len(found) > limit:
            last = page[-1]
            cursor = order_cursor(datetime.fromisoformat(last["created_at"]), last["order_id"])
        return self.json({"customer_id": customer_id, "orders": page, "next": cursor})


def _sku_page(request: Request) -> tuple[str | None, int]:
    query = _query(request, {"after", "limit"})
    problems: list[dict[str, str]] = []
    after = key(query.get("after"), problems, "after")
    limit = page_size(query.get("limit"), problems)
    if problems:
        raise BadRequest(problems)
    return after, limit


def _own_stock_partitions() -> list[int]:
    topic = stock_table.changelog_topic.get_topic_name()
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)


@app.page("/worker/inventory")
class WorkerInventory(JsonView):
    """``GET /worker/inventory?after=&limit=``: this worker's share of ``GET /inventory``
    (the stock partitions it owns, and its first ``limit`` SKUs after ``after``)."""

    @answered
    async def get(self, request: Request) -> Response:
        require_token(request, settings)
        after, limit = _sku_page(request)
        if app.rebalancing:
            raise REBALANCING
        partitions = _own_stock_partitions()
        return self.json({"partitions": partitions, "skus": local_skus(after, limit)})


def _members() -> set[str]:
    own = str(app.conf.canonical_url)
    with contextlib.suppress(Exception):  # before the first assignment: just this worker
        router = app.router
        return {own, *router.tables_metadata(), *router.external_topics_metadata()}
    return {own}


def _ident(url: str) -> tuple[str, int]:
    parsed = URL(url)
    return parsed.host or "", parsed.port or 80


async def _peer_share(
    session: aiohttp.ClientSession, url: str, after: str | None, limit: int
) -> dict[str, Any]:
    query = {"limit": str(limit), **({"after": after} if after is not None else {})}
    token = settings.api_token.get()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(URL(url) / "worker" / "inventory", params=query,
                           headers=headers) as resp:  # fmt: skip
        if resp.status != 200:
            raise OSError(f"answered {resp.status}")
        share: dict[str, Any] = await resp.json()
        return share


@app.page("/inventory")
class InventoryList(JsonView):
    """``GET /inventory?after=&limit=``: every SKU with its stock, in SKU order, gathered from
    every worker's share; ``503`` while a worker does not answer or partitions move."""

    @answered
    async def get(self, request: Request) -> Response:
        require_token(request, settings)
        after, limit = _sku_page(request)
        if app.rebalancing:
            raise REBALANCING
        own = str(app.conf.canonical_url)
        peers = sorted(u for u in _members() if _ident(u) != _ident(own))
        timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            answers = await asyncio.gather(
                *(_peer_share(session, u, after, limit + 1) for u in peers),
                return_exceptions=True,
            )
        shares: list[dict[str, Any]] = [
            {"partitions": _own_stock_partitions(), "skus": local_skus(after, limit + 1)}
        ]
        missing = []
        for url, answer in zip(peers, answers, strict=True):
            if isinstance(answer, BaseException):
                missing.append(f"{url}: {type(answer).__name__}: {answer}"[:200])
            else:
                shares.append(answer)
        covered = {p for s in shares for p in s["partitions"]}
        if missing or covered != set(range(settings.partitions)):
            detail = ("not every stock partition answered (a worker is down or partitions "
                      f"move): {'; '.join(missing) or 'partitions ' + str(sorted(covered))}; "
                      "retry shortly")  # fmt: skip
            return HttpError(503, "owner_unavailable", detail, {"Retry-After": "2"}).response(self)
        skus, after_last = merge_pages([s["skus"] for s in shares], "sku", limit)
        return self.json({"skus": skus, "next": after_last})
