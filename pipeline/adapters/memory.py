"""The stores in memory, for tests and tools that need no database: the same protocols as the
SQL stores (:mod:`pipeline.services.ports`), held to the same contract
(``tests/repository_contract.py``). One :class:`MemoryDatabase` is shared by the order,
outbox and dead-letter stores, as one database is: an order and its outbox row appear together
or not at all.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.domain.audit import DEAD_LETTER_DISCARD, OUTBOX_DISCARD, OUTBOX_REQUEUE, Audit
from pipeline.domain.dead_letters import DISCARDED as LETTER_DISCARDED
from pipeline.domain.dead_letters import REPLAYED, DeadLetter, Filter
from pipeline.domain.events import (
    DEFAULT_WRITE_VERSION,
    OrderCancelled,
    OrderCreated,
    encode,
    money,
    utc_now,
    written_version,
)
from pipeline.domain.orders import (
    CANCELLABLE,
    CancelOutcome,
    Idempotency,
    IdempotencyConflict,
    OrderRow,
    StoredResponse,
    order_summary,
)
from pipeline.domain.outbox import (
    DISCARDED,
    MAX_ERROR_LENGTH,
    OLDER_THAN_RETENTION,
    PARKED,
    PENDING,
    PUBLISHED,
    ParkedRow,
    PendingRow,
    Settled,
    sent_after_later_events,
)


@dataclass(slots=True)
class _Order:
    event: OrderCreated
    status: str
    updated_at: datetime


@dataclass(slots=True)
class _OutboxRow:
    row: PendingRow
    status: str = PENDING
    attempts: int = 0
    published_at: datetime | None = None
    last_error: str | None = None


@dataclass(slots=True)
class MemoryDatabase:
    orders: dict[str, _Order] = field(default_factory=dict)
    outbox: dict[int, _OutboxRow] = field(default_factory=dict)
    keys: dict[str, tuple[str, StoredResponse, datetime]] = field(default_factory=dict)
    dead_letters: dict[str, DeadLetter] = field(default_factory=dict)
    replays: list[tuple[str, str, str, datetime, str]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add_event(
        self, event: OrderCreated | OrderCancelled, write_version: int = DEFAULT_WRITE_VERSION
    ) -> None:
        at = event.created_at if isinstance(event, OrderCreated) else event.cancelled_at
        row_id = next(self.ids)
        self.outbox[row_id] = _OutboxRow(
            PendingRow(
                row_id,
                event.event_id,
                event.customer_id,
                event.event_type,
                written_version(event, write_version),
                encode(event, write_version),
                at,
            )
        )


class MemoryOrderStore:
    def __init__(self, db: MemoryDatabase, write_version: int = DEFAULT_WRITE_VERSION) -> None:
        self.db = db
        self.write_version = write_version

    async def create_order(
        self, event: OrderCreated, idempotency: Idempotency | None = None
    ) -> StoredResponse | None:
        if idempotency is not None:
            key, fingerprint, status_code, body = idempotency
            existing = self.db.keys.get(key)
            if existing is not None:
                if existing[0] != fingerprint:
                    raise IdempotencyConflict(key)
                return existing[1]
            # a copy, as the database's JSON column keeps the body as it was
            stored = StoredResponse(status_code, json.loads(json.dumps(body)))
            self.db.keys[key] = (fingerprint, stored, event.created_at)
        self.db.orders[event.order_id] = _Order(event, "created", event.created_at)
        self.db.add_event(event, self.write_version)
        return None

    async def cancel_order(
        self, order_id: str, make_event: Callable[[OrderRow], OrderCancelled]
    ) -> tuple[CancelOutcome, OrderRow | None]:
        order = self.db.orders.get(order_id)
        if order is None:
            return CancelOutcome.NOT_FOUND, None
        e = order.event
        row = OrderRow(e.order_id, e.customer_id, order.status, e.total)
        if order.status not in CANCELLABLE:
            return CancelOutcome.CONFLICT, row
        row = dataclasses.replace(row, items=tuple(e.items))
        event = make_event(row)
        order.status, order.updated_at = "cancelled", event.cancelled_at
        self.db.add_event(event, self.write_version)
        return CancelOutcome.CANCELLED, row

    async def decide_order(self, order_id: str, decision: str, at: datetime) -> str | None:
        order = self.db.orders.get(order_id)
        if order is None:
            return None
        if order.status == "created":
            order.status, order.updated_at = decision, at
        return order.status

    async def get_order(self, order_id: str) -> dict[str, Any] | None:
        order = self.db.orders.get(order_id)
        if order is None:
            return None
        e = order.event
        return {
            "order_id": e.order_id,
            "customer_id": e.customer_id,
            "customer_email": e.contact.email,
            "status": order.status,
            "total": money(e.total),
            "created_at": e.created_at.isoformat(),
            "updated_at": order.updated_at.isoformat(),
            "items": [
                {"sku": i.sku, "quantity": i.quantity, "unit_price": money(i.unit_price)}
                for i in e.items
            ],
        }

    async def customer_orders(
        self, customer_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[dict[str, Any]]:
        mine = sorted(
            ((o.event.created_at, o.event.order_id, o) for o in self.db.orders.values()
             if o.event.customer_id == customer_id),
            key=lambda t: (t[0], t[1]), reverse=True,
        )  # fmt: skip
        page = [o for at, oid, o in mine if before is None or (at, oid) < before][:limit]
        return [order_summary(o.event.order_id, o.status, o.event.total, o.event.created_at,
                              o.updated_at) for o in page]  # fmt: skip

    async def purge_idempotency_keys(self, older_than: datetime | None = None) -> int:
        cutoff = older_than or utc_now()
        old = [k for k, (_, _, at) in self.db.keys.items() if at < cutoff]
        for key in old:
            del self.db.keys[key]
        return len(old)


class MemoryOutboxStore:
    def __init__(self, db: MemoryDatabase) -> None:
        self.db = db

    async def pending(self, limit: int) -> list[PendingRow]:
        return [r.row for r in self._rows(PENDING)][:limit]

    async def record(
        self, published: list[int], parked: list[tuple[int, str]], at: datetime
    ) -> None:
        for row_id in published:
            if (row := self.db.outbox.get(row_id)) is not None:
                row.status, row.published_at, row.attempts = PUBLISHED, at, row.attempts + 1
        for row_id, error in parked:
            if (row := self.db.outbox.get(row_id)) is not None:
                row.status, row.attempts = PARKED, row.attempts + 1
                row.last_error = error[:MAX_ERROR_LENGTH]

    async def backlog(self) -> tuple[int, datetime | None]:
        rows = self._rows(PENDING)
        return len(rows), min((r.row.created_at for r in rows), default=None)

    async def parked_count(self) -> int:
        return len(self._rows(PARKED))

    async def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.db.outbox.values():
            out[row.status] = out.get(row.status, 0) + 1
        return out

    async def published_since(self, cutoff: datetime) -> int:
        return sum(1 for r in self._rows(PUBLISHED) if r.published_at and r.published_at >= cutoff)

    async def parked(self, limit: int = 100) -> list[dict[str, Any]]:
        return [
            {"id": r.row.id, "event_id": r.row.event_id, "event_type": r.row.event_type,
             "partition_key": r.row.partition_key, "last_error": r.last_error,
             "created_at": r.row.created_at}
            for r in self._rows(PARKED)[:limit]
        ]  # fmt: skip

    async def purge_published(self, older_than: datetime, chunk: int = 5000) -> int:
        old = [
            row_id
            for row_id, r in self.db.outbox.items()
            if r.status == PUBLISHED and r.published_at and r.published_at < older_than
        ]
        for row_id in old:
            del self.db.outbox[row_id]
        return len(old)

    def _rows(self, status: str) -> list[_OutboxRow]:
        return [r for _, r in sorted(self.db.outbox.items()) if r.status == status]


class MemoryOutboxAdmin:
    """:class:`pipeline.adapters.db.outbox_admin.OutboxAdmin` in memory."""

    def __init__(self, db: MemoryDatabase) -> None:
        self.db = db

    async def parked_page(self, after: int | None, limit: int) -> list[ParkedRow]:
        rows = [(i, r) for i, r in sorted(self.db.outbox.items())
                if r.status == PARKED and (after is None or i > after)]  # fmt: skip
        return [self._parked(r) for _, r in rows[:limit]]

    async def requeue(
        self, ids: list[int], audit: Audit, *, out_of_order: bool, verifiable_since: datetime
    ) -> Settled:
        result = Settled()
        for row in sorted(self._found(ids, result), key=lambda r: r.row.id):
            key = row.row.partition_key
            later = [(i, r.status) for i, r in sorted(self.db.outbox.items())
                     if r.row.partition_key == key and i > row.row.id
                     and r.status in (PUBLISHED, PENDING)][:5]  # fmt: skip
            if not out_of_order and later:
                reason = sent_after_later_events(key, later)
                result.refused.append({"id": row.row.id, "reason": reason})
            elif not out_of_order and row.row.created_at < verifiable_since:
                result.refused.append({"id": row.row.id, "reason": OLDER_THAN_RETENTION})
            else:
                row.status = PENDING
                self._record(OUTBOX_REQUEUE, row, audit, out_of_order=out_of_order)
                result.done.append(row.row.id)
        return result

    async def discard(self, ids: list[int], audit: Audit) -> Settled:
        result = Settled()
        for row in self._found(ids, result):
            row.status = DISCARDED
            self._record(OUTBOX_DISCARD, row, audit)
            result.done.append(row.row.id)
        return result

    async def actions(self, subject: str) -> list[dict[str, Any]]:
        return [dict(a) for a in self.db.actions if a["subject"] == subject]

    def _found(self, ids: list[int], result: Settled) -> list[_OutboxRow]:
        found = []
        for row_id in ids:
            row = self.db.outbox.get(row_id)
            if row is None:
                result.refused.append({"id": row_id, "reason": "no such outbox row"})
            elif row.status != PARKED:
                result.refused.append({"id": row_id, "reason": f"not parked: it is {row.status}"})
            else:
                found.append(row)
        return found

    def _parked(self, r: _OutboxRow) -> ParkedRow:
        p = r.row
        return ParkedRow(p.id, p.event_id, p.event_type, p.partition_key, p.created_at,
                         r.attempts, r.last_error)  # fmt: skip

    def _record(self, action: str, r: _OutboxRow, audit: Audit, **extra: Any) -> None:
        p = r.row
        detail = {
            "event_id": p.event_id,
            "event_type": p.event_type,
            "key": p.partition_key,
            "created_at": p.created_at.isoformat(),
            "attempts": r.attempts,
            "parked_reason": r.last_error,
            **extra,
        }
        self.db.actions.append(
            {
                "subject": str(p.id),
                "at": audit.at,
                "actor": audit.by,
                "action": action,
                "reason": audit.reason,
                "detail": detail,
            }
        )


class MemoryDeadLetterStore:
    def __init__(self, db: MemoryDatabase) -> None:
        self.db = db

    async def add(self, letter: DeadLetter) -> bool:
        if letter.id in self.db.dead_letters:
            return False
        self.db.dead_letters[letter.id] = letter
        return True

    async def find(self, where: Filter) -> list[DeadLetter]:
        def wanted(d: DeadLetter) -> bool:
            fields = [(where.agent, d.agent), (where.error_type, d.error_type),
                      (where.reason, d.reason), (where.status, d.status),
                      (where.event_id, d.event_id)]  # fmt: skip
            return (
                all(value is None or value == have for value, have in fields)
                and (where.since is None or d.dead_lettered_at >= where.since)
                and (where.until is None or d.dead_lettered_at < where.until)
                and (not where.ids or d.id in where.ids)
            )

        found = sorted(filter(wanted, self.db.dead_letters.values()),
                       key=lambda d: (d.dead_lettered_at, d.id))  # fmt: skip
        return found[: where.limit]

    async def counts(self) -> list[tuple[str, str, int]]:
        out: dict[tuple[str, str], int] = {}
        for d in self.db.dead_letters.values():
            out[(d.reason, d.status)] = out.get((d.reason, d.status), 0) + 1
        return [(reason, status, n) for (reason, status), n in out.items()]

    async def replay_count(self, agent: str, event_key: str) -> int:
        return sum(1 for _, a, k, _, _ in self.db.replays if (a, k) == (agent, event_key))

    async def claim_replay(self, letter: DeadLetter) -> bool:
        stored = self.db.dead_letters.get(letter.id)
        if stored is None or stored.status == LETTER_DISCARDED:
            return False
        self.db.dead_letters[letter.id] = dataclasses.replace(stored, status=REPLAYED)
        return True

    async def release_replay(self, letter: DeadLetter) -> None:
        stored = self.db.dead_letters.get(letter.id)
        if stored is not None and stored.status == REPLAYED:
            self.db.dead_letters[letter.id] = dataclasses.replace(stored, status=letter.status)

    async def record_replay(self, letter: DeadLetter, at: datetime, requested_by: str) -> None:
        self.db.replays.append((letter.id, letter.agent, letter.event_key, at, requested_by))

    async def discard(self, letters: list[DeadLetter], audit: Audit) -> list[str]:
        done = []
        for letter in letters:
            stored = self.db.dead_letters.get(letter.id)
            if stored is None or stored.status == LETTER_DISCARDED:
                continue
            self.db.dead_letters[letter.id] = dataclasses.replace(stored, status=LETTER_DISCARDED)
            detail = {
                "agent": letter.agent,
                "event_id": letter.event_id,
                "event_type": letter.event_type,
                "dead_letter_reason": letter.reason,
                "error_type": letter.error_type,
                "status_before": letter.status,
            }
            self.db.actions.append(
                {
                    "subject": letter.id,
                    "at": audit.at,
                    "actor": audit.by,
                    "action": DEAD_LETTER_DISCARD,
                    "reason": audit.reason,
                    "detail": detail,
                }
            )
            done.append(letter.id)
        return done

    async def replays(self, dead_letter_id: str) -> list[dict[str, Any]]:
        return [
            {"replayed_at": at, "requested_by": by}
            for letter_id, _, _, at, by in self.db.replays
            if letter_id == dead_letter_id
        ]
