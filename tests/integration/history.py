"""An independent judge for the fault scenarios, in the manner of Jepsen's checkers.

The load records every request it makes and what came back (:class:`History`). Once the system
has drained, :func:`judge` decides from three sources that owe nothing to the code under test:

- the database, read with plain SQL (orders, their lines, idempotency keys, dead letters);
- the topics, read from the beginning to their end offsets with a plain consumer;
- the public HTTP API (stats, stock, revenue windows) and the mail the workers wrote.

It never asks a worker to judge itself (``/admin/reconcile``), never uses the pipeline's
decoders or derived-id function, and parses the JSON on the wire itself. A verdict lists every
violation, and the evidence that the fault bit: forwarder re-sends, records an agent sent again
after a redelivery, changelog records that arrived after a newer version of their key.

:func:`judge` is a pure function of what was read, so the unit tests can show it failing on a
history with an effect doubled or an event dropped.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from sqlalchemy import select

from pipeline.adapters.db.schema import (
    dead_letters,
    idempotency_keys,
    make_engine,
    order_items,
    orders,
    outbox,
)
from tests.integration.workers import Worker

CENT = Decimal("0.01")
PIPELINE_TOPICS = ("orders.events", "inventory.commands", "inventory.events", "orders.status",
                   "analytics.events", "analytics.revenue", "dead-letters")  # fmt: skip
DERIVED_TOPICS = ("inventory.commands", "inventory.events", "analytics.events", "analytics.revenue")
CHANGELOG_TABLES = ("stock", "customer_stats", "order_progress", "notifications_sent", "revenue")


# -- the history ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One request and its outcome. ``status`` 0: no complete answer (the connection was
    refused or cut, the body was truncated): the request may or may not have taken effect."""

    kind: str  # "order", "cancel", "stock"
    key: str  # the order's idempotency key; the order id of a cancel; the SKU of a stock set
    body: Any
    started: float
    ended: float
    status: int
    reply: Any
    error: str = ""


class History:
    """Every request made and its outcome, in the order they completed (thread-safe)."""

    def __init__(self) -> None:
        self._ops: list[Op] = []
        self._lock = threading.Lock()
        # (the mailbox of a worker SIGKILLed or SIGSTOPped, when): stopped between a mail and
        # its mark reaching the changelog, it leaves the next owner nothing to see
        self.kills: list[tuple[str, float]] = []

    def killed(self, mailbox: Path) -> None:
        """Note a worker SIGKILLed or frozen now (the checker explains a mail repeated in the
        documented window by it)."""
        self.kills.append((str(mailbox), time.time()))

    def add(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def acked_orders(self) -> list[str]:
        return [op.reply["order_id"] for op in self.ops if op.kind == "order" and op.status == 201]

    def refused(self) -> Counter[int]:
        return Counter(op.status for op in self.ops if op.status == 0 or op.status >= 300)


def call(worker: Worker, method: str, path: str, body: Any,
         headers: dict[str, str] | None = None) -> tuple[int, Any, str]:  # fmt: skip
    """One request; any failure to get a whole answer is status 0 with what cut it."""
    try:
        if method == "post":
            status, reply = worker.post(path, body, headers)
        elif method == "put":
            status, reply = worker.put(path, body)
        else:
            status, reply = worker.get(path)
    except Exception as exc:  # noqa: BLE001 -- refused, reset, truncated, timed out: ambiguous
        return 0, None, f"{type(exc).__name__}: {exc}"
    return status, reply, ""


class LoadDied(AssertionError):
    pass


@dataclass
class Load:
    """An open-loop load: orders (with an idempotency key each) and cancellations at ``rate``
    per second, each sent on schedule from a small pool whatever the previous one is doing,
    through whichever of ``targets()`` is alive. Everything is recorded in ``history``.

    If the scheduler itself fails, :meth:`stop` raises :class:`LoadDied`: a scenario never
    passes on the orders sent before its load quietly stopped."""

    targets: Callable[[], Sequence[Worker]]
    history: History = field(default_factory=History)
    rate: float = 15.0
    customers: int = 12
    skus: Sequence[str] = tuple(f"sku-{n}" for n in range(8))
    cancel_every: int = 7
    seed: int = 5
    skipped: int = 0  # no worker alive to send to
    failure: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _pool: ThreadPoolExecutor | None = None

    def start(self) -> Load:
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="load")
        self._thread = threading.Thread(target=self._guarded, name="load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> History:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.check()
        return self.history

    def check(self) -> None:
        if self.failure is not None:
            raise LoadDied(f"the load died: {self.failure!r}") from self.failure
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            raise LoadDied("the load thread ended on its own")

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 -- kept and raised by stop()
            self.failure = exc

    def _run(self) -> None:
        assert self._pool is not None
        rng = random.Random(self.seed)
        run = uuid.uuid4().hex[:4]
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += 1 / self.rate
            self._stop.wait(max(0.0, next_at - time.monotonic()))
            n += 1
            live = [w for w in self.targets() if w.proc.poll() is None]
            if not live:
                self.skipped += 1
                continue
            worker = rng.choice(live)
            acked = self.history.acked_orders()
            if n % self.cancel_every == 0 and acked:
                self._pool.submit(self._cancel, worker, rng.choice(acked))
                continue
            customer = f"cust-{run}-{rng.randrange(self.customers)}"
            items = [
                {"sku": s, "quantity": rng.randint(1, 3), "unit_price": f"{rng.randint(1, 90)}.50"}
                for s in rng.sample(list(self.skus), rng.randint(1, min(3, len(self.skus))))
            ]
            body = {"customer_id": customer, "customer_email": f"{customer}@example.com",
                    "items": items}  # fmt: skip
            self._pool.submit(self._order, worker, f"load-{run}-{n}", body)

    def _order(self, worker: Worker, key: str, body: dict[str, Any]) -> None:
        started = time.monotonic()
        status, reply, error = call(worker, "post", "/orders", body, {"Idempotency-Key": key})
        self.history.add(Op("order", key, body, started, time.monotonic(), status, reply, error))

    def _cancel(self, worker: Worker, order_id: str) -> None:
        started = time.monotonic()
        status, reply, error = call(worker, "post", f"/orders/{order_id}/cancel", {})
        self.history.add(
            Op("cancel", order_id, {}, started, time.monotonic(), status, reply, error)
        )


def set_stock(worker: Worker, history: History, stock: dict[str, int]) -> None:
    """Set each SKU's stock through the API, recorded; every one must be accepted."""
    for sku, available in stock.items():
        started = time.monotonic()
        status, reply, error = call(worker, "put", f"/inventory/{sku}", {"available": available})
        history.add(Op("stock", sku, {"available": available}, started, time.monotonic(), status,
                       reply, error))  # fmt: skip
        assert status == 202, (status, reply, error)


# -- what the judge reads --------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderRow:
    customer_id: str
    status: str
    total: Decimal
    created_at: datetime
    updated_at: datetime


@dataclass
class DbSnapshot:
    orders: dict[str, OrderRow]
    lines: dict[str, list[tuple[str, int]]]
    keys: dict[str, str | None]  # idempotency key -> the order id its stored answer names
    pending_outbox: int
    dead_letters: int


def read_db(url: str) -> DbSnapshot:
    async def read() -> DbSnapshot:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(select(orders))).all()
                items = (await conn.execute(select(order_items))).all()
                keys = (await conn.execute(select(idempotency_keys))).all()
                pending = (await conn.execute(
                    select(outbox.c.id).where(outbox.c.status == "pending"))).all()  # fmt: skip
                letters = (await conn.execute(select(dead_letters.c.id))).all()
        finally:
            await engine.dispose()
        lines: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for item in sorted(items, key=lambda i: (i.order_id, i.line_no)):
            lines[item.order_id].append((item.sku, item.quantity))
        return DbSnapshot(
            orders={
                r.order_id: OrderRow(
                    r.customer_id,
                    r.status,
                    Decimal(r.total),
                    _aware(r.created_at),
                    _aware(r.updated_at),
                )
                for r in rows
            },
            lines=dict(lines),
            keys={k.key: _order_id_in(k.response_body) for k in keys},
            pending_outbox=len(pending),
            dead_letters=len(letters),
        )

    return asyncio.run(read())


def outbox_backlog(url: str) -> int:
    """Rows committed and not yet published, read straight from the database."""
    return read_db(url).pending_outbox


def _order_id_in(body: str) -> str | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed.get("order_id") if isinstance(parsed, dict) else None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Rec:
    """One record as a plain consumer sees it: ``value`` parsed as JSON when it is."""

    partition: int
    offset: int
    key: bytes | None
    raw: bytes | None
    value: dict[str, Any] | None


def read_topics(bootstrap: str, names: dict[str, str], timeout: float = 60) -> dict[str, list[Rec]]:
    """Every record of each topic (``{label: topic name}``), from the beginning to the end
    offsets taken at the start, per partition in offset order. A missing topic reads as empty."""

    async def read_one(topic: str, versions_only: bool) -> list[Rec]:
        if topic not in existing:  # never subscribe to a missing topic: the broker may create it
            return []
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    group_id=None, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=8 * 1024 * 1024,
                                    fetch_max_bytes=64 * 1024 * 1024)  # fmt: skip
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout
            while not consumer.assignment():
                if time.monotonic() > deadline:
                    raise AssertionError(f"no partition of {topic} was assigned in {timeout}s")
                await asyncio.sleep(0.1)
            tps = sorted(consumer.assignment(), key=lambda tp: tp.partition)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            out: list[Rec] = []
            todo = {tp for tp in tps if ends[tp] > 0}
            while todo:
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not read {topic} to its end in {timeout}s")
                batch = await consumer.getmany(*todo, timeout_ms=1000)
                for tp, records in batch.items():
                    for r in records:
                        if r.offset < ends[tp]:
                            value = _version(r.value) if versions_only else _json(r.value)
                            out.append(Rec(r.partition, r.offset, r.key, r.value, value))
                    if records and records[-1].offset >= ends[tp] - 1:
                        todo.discard(tp)
                for tp in list(todo):
                    if await consumer.position(tp) >= ends[tp]:
                        todo.discard(tp)
            out.sort(key=lambda r: (r.partition, r.offset))
            return out
        finally:
            await consumer.stop()

    existing: set[str] = set()

    async def read_all() -> dict[str, list[Rec]]:
        probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await probe.start()
        try:
            existing.update(await probe.topics())
        finally:
            await probe.stop()
        return {
            label: await read_one(topic, label.startswith("changelog:"))
            for label, topic in names.items()
        }

    return asyncio.run(read_all())


def _version(raw: bytes | None) -> dict[str, Any] | None:
    """A changelog value's version alone (``{"v": N, ...}``): values can be large, and only
    their versions are evidence."""
    if not raw or not raw.startswith(b'{"v":'):
        return None
    end = raw.find(b",", 5)
    try:
        return {"v": int(raw[5 : end if end > 0 else len(raw) - 1])}
    except ValueError:
        return None


def _json(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Mail:
    name: str  # the file's name: the message's idempotency key (the decision's event id)
    folder: str  # the worker's mailbox
    written: float  # wall-clock time the file was written


# The window of the documented duplicate (agents/notifications.py): a worker killed (or frozen
# past its session) after the mail left and before its mark reached the changelog — the mail
# file's fsync alone takes tens of milliseconds under load. A second copy is explained by a
# kill or freeze of the first copy's worker within this long after it wrote it.
KILL_WINDOW_SECONDS = 2.0
REVENUE_WINDOWS_SHOWN = 60  # GET /analytics/revenue answers the newest 60 windows


@dataclass
class ApiSnapshot:
    stats: dict[str, tuple[int, Any]]  # customer -> (status, body)
    stock: dict[str, tuple[int, Any]]  # sku -> (status, body)
    revenue: tuple[int, Any]
    mails: list[Mail]  # every mail file, over every worker's mailbox


def read_api(worker: Worker, customers: Iterable[str], skus: Iterable[str],
             mail_dirs: Iterable[Path]) -> ApiSnapshot:  # fmt: skip
    def get(path: str) -> tuple[int, Any]:
        status, reply, _ = call(worker, "get", path, None)
        return status, reply

    return ApiSnapshot(
        stats={c: get(f"/customers/{c}/stats") for c in sorted(set(customers))},
        stock={s: get(f"/inventory/{s}") for s in sorted(set(skus))},
        revenue=get("/analytics/revenue"),
        mails=[
            Mail(p.stem, str(d), p.stat().st_mtime)
            for d in sorted(set(mail_dirs))
            for p in sorted(d.glob("*.eml"))
        ],
    )


# -- the judge -------------------------------------------------------------------------------------


@dataclass
class Verdict:
    violations: list[str]
    evidence: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.violations

    def __str__(self) -> str:
        shown = "\n  ".join(self.violations[:25])
        more = f"\n  ... and {len(self.violations) - 25} more" if len(self.violations) > 25 else ""
        return f"{len(self.violations)} violations:\n  {shown}{more}\nevidence: {self.evidence}"


def judge(
    history: Sequence[Op],
    db: DbSnapshot,
    topics: dict[str, list[Rec]],
    api: ApiSnapshot,
    *,
    window_seconds: int,
    lifetime_value: Decimal,
    expected_dead_letters: int = 0,
    kills: Sequence[tuple[str, float]] = (),
) -> Verdict:
    """Every violation of the contract that the history, the database, the topics and the API
    show together, and the evidence of what the faults did."""
    v: list[str] = []
    _judge_requests(history, db, v)
    created, cancelled = _judge_order_events(db, topics.get("orders.events", []), v)
    decisions = _judge_decisions(db, topics.get("orders.status", []), v)
    _judge_stock(history, db, api, v)
    _judge_stats(db, api, v)
    _judge_milestones(db, created, cancelled, topics, lifetime_value, v)
    _judge_revenue(db, api, window_seconds, v)
    explained = _judge_mail(db, decisions, api, kills, v)
    letters = len(topics.get("dead-letters", []))
    if letters != expected_dead_letters or db.dead_letters != expected_dead_letters:
        v.append(f"dead letters: {letters} on the topic and {db.dead_letters} in the database, "
                 f"expected {expected_dead_letters}")  # fmt: skip
    return Verdict(v, {**evidence(topics), "mail_repeats_after_a_kill": explained})


def _judge_requests(history: Sequence[Op], db: DbSnapshot, v: list[str]) -> None:
    by_key = {op.key: op for op in history if op.kind == "order"}
    for op in by_key.values():
        if op.status == 201:
            order_id = op.reply["order_id"]
            if order_id not in db.orders:
                v.append(f"order {order_id} was acknowledged and is not in the database")
            if db.keys.get(op.key) != order_id:
                v.append(f"order {order_id}: its idempotency key names {db.keys.get(op.key)}")
        elif op.status != 0 and op.key in db.keys:
            v.append(f"request {op.key} was refused ({op.status}) and its order was written")
    made = {order_id for key, order_id in db.keys.items() if key in by_key}
    for order_id in set(db.orders) - made:
        v.append(f"order {order_id} is in the database and no request made it")
    cancels: dict[str, list[int]] = defaultdict(list)
    for op in history:
        if op.kind == "cancel":
            cancels[op.key].append(op.status)
    for order_id, statuses in cancels.items():
        row = db.orders.get(order_id)
        if 200 in statuses and (row is None or row.status != "cancelled"):
            v.append(f"order {order_id}: cancellation acknowledged, status "
                     f"{row.status if row else 'missing'}")  # fmt: skip
    for order_id, row in db.orders.items():
        if row.status == "cancelled" and not {200, 0} & set(cancels.get(order_id, [])):
            v.append(f"order {order_id} is cancelled and no cancellation may have done it")
        if row.status == "created":
            v.append(f"order {order_id} is still created: inventory never decided it")
    if db.pending_outbox:
        v.append(f"{db.pending_outbox} outbox rows are still unpublished")


def _judge_order_events(
    db: DbSnapshot, records: list[Rec], v: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Each order in ``orders.events`` exactly once per event id; the created and cancelled
    events (first copies) by order id."""
    created: dict[str, dict[str, Any]] = {}
    cancelled: dict[str, dict[str, Any]] = {}
    ids: dict[str, set[str]] = defaultdict(set)
    for r in records:
        e = r.value
        if e is None:
            v.append(f"orders.events[{r.partition}]@{r.offset} is not JSON")
            continue
        kind, order_id = e.get("event_type"), str(e.get("order_id"))
        ids[f"{kind}:{order_id}"].add(str(e.get("event_id")))
        target = {"OrderCreated": created, "OrderCancelled": cancelled}.get(str(kind))
        if target is None:
            v.append(f"orders.events[{r.partition}]@{r.offset}: unexpected {kind}")
        elif order_id not in target:
            target[order_id] = {**e, "_at": (r.partition, r.offset)}
    for order_id, row in db.orders.items():
        n_created = len(ids.get(f"OrderCreated:{order_id}", ()))
        n_cancelled = len(ids.get(f"OrderCancelled:{order_id}", ()))
        if n_created != 1:
            v.append(f"order {order_id}: {n_created} distinct OrderCreated events")
        elif Decimal(created[order_id]["total"]) != row.total:
            v.append(f"order {order_id}: OrderCreated total {created[order_id]['total']}, "
                     f"database {row.total}")  # fmt: skip
        want = 1 if row.status == "cancelled" else 0
        if n_cancelled != want:
            v.append(f"order {order_id} ({row.status}): {n_cancelled} distinct OrderCancelled")
        if n_cancelled and n_created and created[order_id]["_at"] > cancelled[order_id]["_at"]:
            v.append(f"order {order_id}: cancelled before it was created in orders.events")
    for order_id in (set(created) | set(cancelled)) - set(db.orders):
        v.append(f"orders.events names order {order_id}, which the database does not have")
    return created, cancelled


def _judge_decisions(db: DbSnapshot, records: list[Rec], v: list[str]) -> dict[str, dict[str, str]]:
    """Each decided order's decision in ``orders.status``; decision event ids by order."""
    decisions: dict[str, dict[str, str]] = defaultdict(dict)  # order -> kind -> event id
    for r in records:
        e = r.value or {}
        kind, order_id = e.get("event_type"), str(e.get("order_id"))
        if kind not in ("OrderConfirmed", "OrderRejected"):
            v.append(f"orders.status[{r.partition}]@{r.offset}: unexpected {kind}")
            continue
        seen = decisions[order_id].setdefault(kind, str(e.get("event_id")))
        if seen != e.get("event_id"):
            v.append(f"order {order_id}: two {kind} events with different ids")
    for order_id, row in db.orders.items():
        kinds = set(decisions.get(order_id, {}))
        if len(kinds) > 1:
            v.append(f"order {order_id}: both confirmed and rejected in orders.status")
        want = {"confirmed": "OrderConfirmed", "rejected": "OrderRejected"}.get(row.status)
        if want is not None and kinds != {want}:
            v.append(f"order {order_id} is {row.status}; orders.status has {sorted(kinds)}")
    for order_id in set(decisions) - set(db.orders):
        v.append(f"orders.status decides order {order_id}, which the database does not have")
    return decisions


def _judge_stock(history: Sequence[Op], db: DbSnapshot, api: ApiSnapshot, v: list[str]) -> None:
    stock = {op.key: int(op.body["available"]) for op in history
             if op.kind == "stock" and op.status == 202}  # fmt: skip
    reserved: dict[str, int] = defaultdict(int)
    for order_id, row in db.orders.items():
        if row.status == "confirmed":
            for sku, quantity in db.lines.get(order_id, []):
                reserved[sku] += quantity
    for sku in set(stock) | set(reserved):
        status, body = api.stock.get(sku, (0, None))
        if status != 200 or not isinstance(body, dict):
            v.append(f"GET /inventory/{sku}: {status} {body}")
            continue
        if body["reserved"] != reserved.get(sku, 0):
            v.append(f"{sku}: reserved {body['reserved']}, confirmed lines hold "
                     f"{reserved.get(sku, 0)}")  # fmt: skip
        if sku in stock and body["available"] + body["reserved"] != stock[sku]:
            v.append(f"{sku}: available {body['available']} + reserved {body['reserved']} "
                     f"!= the stock set, {stock[sku]}")  # fmt: skip
        if sku in stock and reserved.get(sku, 0) > stock[sku]:
            v.append(f"{sku}: confirmed orders hold {reserved[sku]} of {stock[sku]} (oversold)")


def _judge_stats(db: DbSnapshot, api: ApiSnapshot, v: list[str]) -> None:
    mine: dict[str, list[OrderRow]] = defaultdict(list)
    for row in db.orders.values():
        mine[row.customer_id].append(row)
    for customer in set(mine) | set(api.stats):
        rows = mine.get(customer, [])
        status, body = api.stats.get(customer, (0, None))
        if not rows:
            if status != 404:
                v.append(f"customer {customer} has no order and its stats answer {status}")
            continue
        if status != 200 or not isinstance(body, dict):
            v.append(f"GET /customers/{customer}/stats: {status} {body}")
            continue
        live = [r for r in rows if r.status != "cancelled"]
        total = sum((r.total for r in live), Decimal("0"))
        want = {
            "order_count": len(rows),
            "cancelled_count": len(rows) - len(live),
            "total_spent": total.quantize(CENT),
            "average_order_value": (total / len(live)).quantize(CENT) if live else CENT * 0,
            "first_order_at": min(r.created_at for r in rows),
            "last_order_at": max(r.created_at for r in rows),
        }
        got = {
            "order_count": body.get("order_count"),
            "cancelled_count": body.get("cancelled_count"),
            "total_spent": Decimal(str(body.get("total_spent"))),
            "average_order_value": Decimal(str(body.get("average_order_value"))),
            "first_order_at": _time(body.get("first_order_at")),
            "last_order_at": _time(body.get("last_order_at")),
        }
        wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        if wrong:
            v.append(f"customer {customer} stats (answered, database): {wrong}")


def _time(text: Any) -> datetime | None:
    return _aware(datetime.fromisoformat(text)) if isinstance(text, str) else None


def _judge_milestones(
    db: DbSnapshot, created: dict[str, dict[str, Any]], cancelled: dict[str, dict[str, Any]],
    topics: dict[str, list[Rec]], lifetime_value: Decimal, v: list[str],
) -> None:  # fmt: skip
    """Replays each customer's order events (first copies, in partition order) to find which
    milestones they reach and with which event; ``analytics.events`` must say exactly that."""
    sequence = sorted([*created.values(), *cancelled.values()], key=lambda e: e["_at"])
    running: dict[str, Decimal] = defaultdict(Decimal)
    want: dict[tuple[str, str], str] = {}
    for e in sequence:
        customer = str(e["customer_id"])
        if e["event_type"] == "OrderCreated":
            running[customer] += Decimal(e["total"])
            want.setdefault((customer, "first_order"), str(e["event_id"]))
        else:
            running[customer] -= Decimal(e["total"])
        if running[customer] >= lifetime_value:
            want.setdefault((customer, "lifetime_value"), str(e["event_id"]))
    got: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in topics.get("analytics.events", []):
        e = r.value or {}
        if e.get("event_type") == "MilestoneReached":
            got[(str(e["customer_id"]), str(e["milestone"]))].add(str(e["caused_by"]))
    for slot in set(want) | set(got):
        causes = got.get(slot, set())
        if causes != ({want[slot]} if slot in want else set()):
            v.append(f"milestone {slot}: reached by {sorted(causes)}, expected {want.get(slot)}")


def _judge_revenue(db: DbSnapshot, api: ApiSnapshot, window_seconds: int, v: list[str]) -> None:
    """Net revenue per window: an order counts in its creation's window, a cancellation
    subtracts in its own (the database's updated_at of a cancelled order)."""
    want: dict[int, list[Any]] = defaultdict(lambda: [Decimal("0"), 0])
    for row in db.orders.values():
        start = int(row.created_at.timestamp()) // window_seconds * window_seconds
        want[start][0] += row.total
        want[start][1] += 1
        if row.status == "cancelled":
            start = int(row.updated_at.timestamp()) // window_seconds * window_seconds
            want[start][0] -= row.total
            want[start][1] -= 1
    status, body = api.revenue
    if status != 200 or not isinstance(body, dict):
        v.append(f"GET /analytics/revenue: {status} {body}")
        return
    got = {int(_time(w["window_start"]).timestamp()): (Decimal(w["revenue"]), w["orders"])  # type: ignore[union-attr]
           for w in body["windows"]}  # fmt: skip
    if len(body["windows"]) >= REVENUE_WINDOWS_SHOWN and got:  # older ones are not shown
        want = {start: w for start, w in want.items() if start >= min(got)}
    for start in set(want) | set(got):
        expected = tuple(want.get(start, [Decimal("0"), 0]))
        answered = got.get(start, (Decimal("0"), 0))
        if answered != expected:
            at = datetime.fromtimestamp(start, UTC).isoformat()
            v.append(f"revenue window {at}: answered {answered}, database {expected}")


def _judge_mail(db: DbSnapshot, decisions: dict[str, dict[str, str]], api: ApiSnapshot,
                kills: Sequence[tuple[str, float]], v: list[str]) -> int:  # fmt: skip
    """One mail per decided order, for its decision, across every worker's mailbox; a second
    copy only where the documented crash window explains it (``kills``: each killed worker's
    mailbox and when). Returns how many copies that explained."""
    copies: dict[str, list[Mail]] = defaultdict(list)
    for mail in api.mails:
        copies[mail.name].append(mail)
    explained = 0
    for name, found in copies.items():
        if len(found) == 1:
            continue
        first, second, *more = sorted(found, key=lambda m: m.written)
        if (
            not more
            and first.folder != second.folder
            and any(
                folder == first.folder and 0 <= at - first.written <= KILL_WINDOW_SECONDS
                for folder, at in kills
            )
        ):
            explained += 1
            continue
        where = ", ".join(f"{Path(m.folder).parent.name} at {m.written:.3f}" for m in found)
        v.append(f"mail {name} was sent {len(found)} times ({where})")
    sent = set(copies)
    by_id = {event_id: (order_id, kind) for order_id, kinds in decisions.items()
             for kind, event_id in kinds.items()}  # fmt: skip
    for name in sent:
        if name not in by_id:
            v.append(f"mail {name} answers no decision in orders.status")
    mailed: dict[str, list[str]] = defaultdict(list)
    for name in sent:
        if name in by_id:
            mailed[by_id[name][0]].append(by_id[name][1])
    for order_id, row in db.orders.items():
        kinds = mailed.get(order_id, [])
        want = {"confirmed": ["OrderConfirmed"], "rejected": ["OrderRejected"]}.get(row.status)
        if want is not None and kinds != want:
            v.append(f"order {order_id} is {row.status}; mail sent for {kinds}")
        if want is None and len(kinds) > 1:
            v.append(f"order {order_id} ({row.status}): {len(kinds)} mails")
    return explained


# -- evidence that a fault bit --------------------------------------------------------------------


def evidence(topics: dict[str, list[Rec]]) -> dict[str, Any]:
    """What the topics show the faults did:

    - ``forwarder_resends``: copies of an order event beyond its first in ``orders.events``;
    - ``redelivered``: per derived topic, copies of a derived event beyond the first whose cause
      was delivered to Kafka only once: the agent handled that one record again (a redelivery
      after a crash, a rebalance or a stuck partition) and sent its derived event again;
    - ``stale_changelog``: per table, changelog records carrying a version older than one
      already in the changelog for that key, or the same version with other contents: the late
      writes of a worker that lost its partitions (a zombie), which recovery must skip.
    """
    copies: Counter[str] = Counter()
    for records in topics.values():
        for r in records:
            if r.value is not None and "event_id" in r.value:
                copies[str(r.value["event_id"])] += 1
    order_ids = [str(r.value.get("event_id")) for r in topics.get("orders.events", []) if r.value]
    redelivered: dict[str, int] = {}
    for label in DERIVED_TOPICS:
        seen: set[str] = set()
        n = 0
        for r in topics.get(label, []):
            e = r.value or {}
            event_id = str(e.get("event_id"))
            if event_id in seen and copies.get(str(e.get("caused_by")), 0) <= 1:
                n += 1
            seen.add(event_id)
        redelivered[label] = n
    stale: dict[str, int] = {}
    for label, records in topics.items():
        if not label.startswith("changelog:"):
            continue
        newest: dict[tuple[int, bytes | None], tuple[int, bytes | None]] = {}
        n = 0
        for r in records:
            version = (r.value or {}).get("v")
            if not isinstance(version, int):
                continue
            slot = (r.partition, r.key)
            if slot in newest:
                top, raw = newest[slot]
                # The same bytes again is a re-send of a value already there (after a
                # redelivery), not a late write: only an older or different one is.
                if version < top or (version == top and r.raw != raw):
                    n += 1
                    continue
            newest[slot] = (version, r.raw)
        stale[label.removeprefix("changelog:")] = n
    return {
        "forwarder_resends": len(order_ids) - len(set(order_ids)),
        "redelivered": redelivered,
        "stale_changelog": stale,
    }


# -- the whole judgement --------------------------------------------------------------------------


@dataclass
class System:
    """Where to look: the broker, the database, the topics' names, and the workers' folders."""

    bootstrap: str
    database_url: str
    topic_prefix: str
    app_id: str
    window_seconds: int = 60
    lifetime_value: Decimal = Decimal("1000.00")

    def topic_names(self, changelogs: bool = False) -> dict[str, str]:
        names = {label: f"{self.topic_prefix}{label}" for label in PIPELINE_TOPICS}
        if changelogs:
            names.update({f"changelog:{t}": f"{self.app_id}-{t}-changelog"
                          for t in CHANGELOG_TABLES})  # fmt: skip
        return names


def check(system: System, history: History, worker: Worker, mail_dirs: Iterable[Path], *,
          changelogs: bool = False, expected_dead_letters: int = 0) -> Verdict:  # fmt: skip
    db = read_db(system.database_url)
    topics = read_topics(system.bootstrap, system.topic_names(changelogs))
    ops = history.ops
    customers = {op.body["customer_id"] for op in ops if op.kind == "order"}
    skus = {op.key for op in ops if op.kind == "stock"}
    api = read_api(worker, customers, skus, mail_dirs)
    return judge(ops, db, topics, api, window_seconds=system.window_seconds,
                 lifetime_value=system.lifetime_value,
                 expected_dead_letters=expected_dead_letters, kills=history.kills)  # fmt: skip


def settle(
    system: System,
    history: History,
    worker: Worker,
    mail_dirs: Callable[[], Iterable[Path]],
    *,
    timeout: float = 180,
    changelogs: bool = False,
) -> tuple[Verdict, float]:
    """Judge until the verdict is clean (the system has drained) or ``timeout`` passes; the
    last verdict and the seconds it took to drain. Each look reads everything afresh; the
    changelogs (only evidence, and large) are read once, at the end, when ``changelogs``."""
    started = time.monotonic()
    while True:
        verdict = check(system, history, worker, mail_dirs())
        if verdict.ok or time.monotonic() - started > timeout:
            break
        time.sleep(2.0)
    seconds = time.monotonic() - started
    if verdict.ok and changelogs:  # once more, with the changelogs read for the evidence
        verdict = check(system, history, worker, mail_dirs(), changelogs=True)
    return verdict, seconds
