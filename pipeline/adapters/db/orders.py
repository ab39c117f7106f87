"""The orders' SQL: an order, its items, its outbox row and its idempotency key, together."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.adapters.db.errors import translated
from pipeline.adapters.db.outbox import add_event
from pipeline.adapters.db.schema import idempotency_keys, order_items, orders
from pipeline.domain.events import (
    DEFAULT_WRITE_VERSION,
    OrderCancelled,
    OrderCreated,
    OrderLine,
    money,
    utc_now,
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

# Built once (see ``pipeline.adapters.db.outbox``): the hot statements' construction and cache
# key were a third of their client CPU.
_INSERT_ORDER = insert(orders)
_INSERT_ITEMS = insert(order_items)
_DECIDE = (
    update(orders)
    .where(orders.c.order_id == bindparam("the_order"), orders.c.status == "created")
    .values(status=bindparam("decision"), updated_at=bindparam("at"))
    .returning(orders.c.status)
)
_STATUS = select(orders.c.status).where(orders.c.order_id == bindparam("the_order"))


@translated
class OrderStore:
    """Orders with their outbox rows. ``write_version`` is the schema version the rows' events
    are written at (``PIPELINE_EVENT_WRITE_VERSION``)."""

    def __init__(self, engine: AsyncEngine, write_version: int = DEFAULT_WRITE_VERSION) -> None:
        self.engine = engine
        self.write_version = write_version

    async def create_order(
        self, event: OrderCreated, idempotency: Idempotency | None = None
    ) -> StoredResponse | None:
        """Commit the order, its items, its outbox row (and its idempotency key) at once.

        Returns the stored response instead when the key was already used for the same
        request; raises :class:`IdempotencyConflict` when it was used for another one.
        """
        for _attempt in range(2):
            try:
                return await self._create_once(event, idempotency)
            except IntegrityError:
                # Only the idempotency key can collide (ids are fresh UUIDs): a concurrent
                # request with the same key committed first. Its answer is now readable.
                if idempotency is None:
                    raise
        raise RuntimeError("idempotency key collided twice")  # pragma: no cover

    async def _create_once(
        self, event: OrderCreated, idempotency: Idempotency | None
    ) -> StoredResponse | None:
        async with self.engine.begin() as conn:
            if idempotency is not None:
                key, fingerprint, _, _ = idempotency
                existing = (
                    await conn.execute(
                        select(idempotency_keys).where(idempotency_keys.c.key == key)
                    )
                ).first()
                if existing is not None:
                    if existing.request_hash != fingerprint:
                        raise IdempotencyConflict(key)
                    return StoredResponse(existing.status_code, json.loads(existing.response_body))
            await conn.execute(
                _INSERT_ORDER,
                {
                    "order_id": event.order_id,
                    "customer_id": event.customer_id,
                    "customer_email": event.contact.email,
                    "status": "created",
                    "total": event.total,
                    "created_at": event.created_at,
                    "updated_at": event.created_at,
                },
            )
            await conn.execute(
                _INSERT_ITEMS,
                [
                    {
                        "order_id": event.order_id,
                        "line_no": n,
                        "sku": line.sku,
                        "quantity": line.quantity,
                        "unit_price": line.unit_price,
                    }
                    for n, line in enumerate(event.items, start=1)
                ],
            )
            await add_event(conn, event, self.write_version)
            if idempotency is not None:
                key, fingerprint, status_code, body = idempotency
                await conn.execute(
                    insert(idempotency_keys).values(
                        key=key,
                        request_hash=fingerprint,
                        status_code=status_code,
                        response_body=json.dumps(body),
                        created_at=event.created_at,
                    )
                )
        return None

    async def cancel_order(
        self, order_id: str, make_event: Callable[[OrderRow], OrderCancelled]
    ) -> tuple[CancelOutcome, OrderRow | None]:
        async with self.engine.begin() as conn:
            found = (
                await conn.execute(
                    select(orders.c.order_id, orders.c.customer_id, orders.c.status, orders.c.total)
                    .where(orders.c.order_id == order_id)
                    .with_for_update()
                )
            ).first()
            if found is None:
                return CancelOutcome.NOT_FOUND, None
            row = OrderRow(found.order_id, found.customer_id, found.status, found.total)
            if row.status not in CANCELLABLE:
                return CancelOutcome.CONFLICT, row
            lines = await conn.execute(
                select(order_items.c.sku, order_items.c.quantity, order_items.c.unit_price)
                .where(order_items.c.order_id == order_id)
                .order_by(order_items.c.line_no)
            )
            row = dataclasses.replace(
                row, items=tuple(OrderLine(ln.sku, ln.quantity, ln.unit_price) for ln in lines)
            )
            event = make_event(row)
            await conn.execute(
                update(orders)
                .where(orders.c.order_id == order_id, orders.c.status == row.status)
                .values(status="cancelled", updated_at=event.cancelled_at)
            )
            await add_event(conn, event, self.write_version)
        return CancelOutcome.CANCELLED, row

    async def decide_order(self, order_id: str, decision: str, at: datetime) -> str | None:
        """Move a ``created`` order to ``decision``; returns the status the order now has
        (unchanged if it was already decided or cancelled; None if there is no such order)."""
        async with self.engine.begin() as conn:
            params = {"the_order": order_id, "decision": decision, "at": at}
            status = (await conn.execute(_DECIDE, params)).scalar_one_or_none()
            if status is None:  # already decided or cancelled (or no such order): as it is
                found = await conn.execute(_STATUS, {"the_order": order_id})
                status = found.scalar_one_or_none()
        return None if status is None else str(status)

    async def get_order(self, order_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            order = (
                await conn.execute(select(orders).where(orders.c.order_id == order_id))
            ).first()
            if order is None:
                return None
            items = (
                await conn.execute(
                    select(order_items)
                    .where(order_items.c.order_id == order_id)
                    .order_by(order_items.c.line_no)
                )
            ).all()
        return {
            "order_id": order.order_id,
            "customer_id": order.customer_id,
            "customer_email": order.customer_email,
            "status": order.status,
            "total": money(order.total),
            "created_at": order.created_at.isoformat(),
            "updated_at": order.updated_at.isoformat(),
            "items": [
                {"sku": i.sku, "quantity": i.quantity, "unit_price": money(i.unit_price)}
                for i in items
            ],
        }

    async def customer_orders(
        self, customer_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[dict[str, Any]]:
        """A customer's orders, newest first (time, then id), those after the cursor
        ``before``: one seek on ``ix_orders_customer_id_created_at`` per page."""
        c = orders.c
        query = select(c.order_id, c.status, c.total, c.created_at, c.updated_at).where(
            c.customer_id == customer_id
        )
        if before is not None:
            at, order_id = before
            query = query.where(
                or_(c.created_at < at, and_(c.created_at == at, c.order_id < order_id))
            )
        query = query.order_by(c.created_at.desc(), c.order_id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [order_summary(r.order_id, r.status, r.total, r.created_at, r.updated_at)
                for r in rows]  # fmt: skip

    async def purge_idempotency_keys(self, older_than: datetime | None = None) -> int:
        cutoff = older_than or utc_now()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(idempotency_keys).where(idempotency_keys.c.created_at < cutoff)
            )
        return result.rowcount or 0
