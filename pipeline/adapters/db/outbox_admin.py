"""The operator's verbs on parked outbox rows: list, requeue, discard, each audited.

Give it the order engine (transactions), not the forwarder's autocommitting bookkeeping one:
a requeue checks the row's key and changes it in one transaction, under a lock that keeps new
outbox rows out until it commits (see :meth:`OutboxAdmin.requeue`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pipeline.adapters.db.errors import translated
from pipeline.adapters.db.outbox import NOTIFY_CHANNEL
from pipeline.adapters.db.schema import operator_actions, outbox
from pipeline.domain.audit import OUTBOX_DISCARD, OUTBOX_REQUEUE, Audit
from pipeline.domain.outbox import (
    DISCARDED,
    OLDER_THAN_RETENTION,
    PARKED,
    PENDING,
    PUBLISHED,
    ParkedRow,
    Settled,
    sent_after_later_events,
)

_PARKED_COLUMNS = (
    outbox.c.id,
    outbox.c.event_id,
    outbox.c.event_type,
    outbox.c.partition_key,
    outbox.c.created_at,
    outbox.c.attempts,
    outbox.c.last_error,
    outbox.c.topic,
)


@translated
class OutboxAdmin:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def parked_page(self, after: int | None, limit: int) -> list[ParkedRow]:
        """Parked rows by id, those after ``after`` (keyset on ``(status, id)``)."""
        query = select(*_PARKED_COLUMNS).where(outbox.c.status == PARKED)
        if after is not None:
            query = query.where(outbox.c.id > after)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(outbox.c.id).limit(limit))).all()
        return [ParkedRow(*r) for r in rows]

    async def requeue(
        self, ids: Sequence[int], audit: Audit, *, out_of_order: bool, verifiable_since: datetime
    ) -> Settled:
        """Put the parked rows ``ids`` back to ``pending``, in one transaction.

        A row goes back only if that cannot send its key's events out of order: no later row
        of its key (customer) on its topic may be published, or pending (the forwarder may be
        sending it now), and the row must be younger than ``verifiable_since`` (older published
        rows may have been purged, so what went out after it is no longer known).
        ``out_of_order`` puts such rows back all the same: they are sent after what already
        went out.

        On PostgreSQL the transaction first locks the outbox against new rows (SHARE ROW
        EXCLUSIVE conflicts with the inserts' ROW EXCLUSIVE, not with reads): a row committed
        after the check would otherwise carry a higher id, be published, and only then find
        the requeued row pending behind it. SQLite's writers take the database's one write
        lock (BEGIN IMMEDIATE), which does the same."""
        result = Settled()
        async with self.engine.begin() as conn:
            await _lock(conn)
            # By id: a key's earlier row goes back first, and is no later row to the next.
            for row in sorted(await _parked(conn, ids, result), key=lambda r: r.id):
                if not out_of_order:
                    why = await _out_of_order(conn, row, verifiable_since)
                    if why is not None:
                        result.refused.append({"id": row.id, "reason": why})
                        continue
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id == row.id, outbox.c.status == PARKED)
                    .values(status=PENDING)
                )
                await _record(conn, OUTBOX_REQUEUE, row, audit, out_of_order=out_of_order)
                result.done.append(row.id)
            if result.done and conn.dialect.name == "postgresql":
                await conn.execute(select(func.pg_notify(literal(NOTIFY_CHANNEL), literal(""))))
        return result

    async def discard(self, ids: Sequence[int], audit: Audit) -> Settled:
        """Mark the parked rows ``ids`` ``discarded`` (never published), each with its record."""
        result = Settled()
        async with self.engine.begin() as conn:
            await _lock(conn)  # as a requeue does, so the two never wait for each other
            for row in await _parked(conn, ids, result):
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id == row.id, outbox.c.status == PARKED)
                    .values(status=DISCARDED)
                )
                await _record(conn, OUTBOX_DISCARD, row, audit)
                result.done.append(row.id)
        return result

    async def actions(self, subject: str) -> list[dict[str, Any]]:
        """The operator actions recorded on ``subject`` (an outbox row's or dead letter's id)."""
        a = operator_actions.c
        query = select(a.at, a.actor, a.action, a.reason, a.detail).where(a.subject == subject)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(a.id))).all()
        return [{**r._mapping, "detail": json.loads(r.detail)} for r in rows]


async def _lock(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(text("LOCK TABLE outbox IN SHARE ROW EXCLUSIVE MODE"))


async def _parked(conn: AsyncConnection, ids: Sequence[int], result: Settled) -> list[ParkedRow]:
    query = select(*_PARKED_COLUMNS, outbox.c.status).where(outbox.c.id.in_(list(ids)))
    rows = {r.id: r for r in (await conn.execute(query.with_for_update())).all()}
    found = []
    for row_id in ids:
        row = rows.get(row_id)
        if row is None:
            result.refused.append({"id": row_id, "reason": "no such outbox row"})
        elif row.status != PARKED:
            result.refused.append({"id": row_id, "reason": f"not parked: it is {row.status}"})
        else:
            found.append(ParkedRow(*tuple(row)[:-1]))
    return found


async def _out_of_order(
    conn: AsyncConnection, row: ParkedRow, verifiable_since: datetime
) -> str | None:
    later = (
        await conn.execute(
            select(outbox.c.id, outbox.c.status)
            .where(
                outbox.c.partition_key == row.partition_key,
                # Order is kept per topic: a later event of the key on another topic does not
                # hold this one back (NULL, the order events' topic, matches NULL).
                outbox.c.topic.is_not_distinct_from(row.topic),
                outbox.c.id > row.id,
                outbox.c.status.in_((PUBLISHED, PENDING)),
            )
            .order_by(outbox.c.id)
            .limit(5)
        )
    ).all()
    if later:
        return sent_after_later_events(row.partition_key, [(r.id, r.status) for r in later])
    if row.created_at < verifiable_since:
        return OLDER_THAN_RETENTION
    return None


async def _record(
    conn: AsyncConnection, action: str, row: ParkedRow, audit: Audit, **extra: Any
) -> None:
    detail = {
        "event_id": row.event_id,
        "event_type": row.event_type,
        "key": row.partition_key,
        "created_at": row.created_at.isoformat(),
        "attempts": row.attempts,
        "parked_reason": row.last_error,
        **extra,
    }
    await conn.execute(
        insert(operator_actions).values(
            at=audit.at, actor=audit.by, action=action, subject=str(row.id),
            reason=audit.reason, detail=json.dumps(detail),
        )
    )  # fmt: skip
