"""Reconcile's reads of the database: per customer and SKU what the orders say, and the
outbox rows and dead letters that explain the rest."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.adapters.db.errors import translated
from pipeline.adapters.db.schema import dead_letters, order_items, orders, outbox
from pipeline.domain.reconcile import CustomerTruth, Facts, dead_lettered_by_customer


@translated
class ReconcileStore:
    """The database side of reconcile."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def facts(self, young_since: datetime) -> Facts:
        facts = Facts()
        async with self.engine.connect() as conn:
            order_rows = (
                await conn.execute(
                    select(
                        orders.c.order_id,
                        orders.c.customer_id,
                        orders.c.status,
                        orders.c.total,
                        orders.c.created_at,
                    )
                )
            ).all()
            lines = (
                await conn.execute(
                    select(order_items.c.sku, func.sum(order_items.c.quantity))
                    .join(orders, orders.c.order_id == order_items.c.order_id)
                    .where(orders.c.status == "confirmed")
                    .group_by(order_items.c.sku)
                )
            ).all()
            all_skus = (await conn.execute(select(order_items.c.sku).distinct())).scalars().all()
            rows = (
                await conn.execute(
                    select(
                        outbox.c.aggregate_id,
                        outbox.c.event_type,
                        outbox.c.event_id,
                        outbox.c.status,
                    ).where(outbox.c.topic.is_(None))  # the order events' rows only
                )
            ).all()
            letters = (
                await conn.execute(
                    select(
                        dead_letters.c.record_key,
                        dead_letters.c.event_type,
                        dead_letters.c.record_value,
                    )
                    # Neither an open nor a discarded dead letter was applied.
                    .where(
                        dead_letters.c.agent == "analytics",
                        dead_letters.c.status.in_(("open", "discarded")),
                    )
                )
            ).all()
        per_customer: dict[str, list[Any]] = defaultdict(list)
        for r in order_rows:
            per_customer[r.customer_id].append(r)
            if r.status == "created":
                facts.undecided.append(r.order_id)
        for customer, mine in per_customer.items():
            live = [r for r in mine if r.status != "cancelled"]
            facts.customers[customer] = CustomerTruth(
                len(mine), len(mine) - len(live), sum((r.total for r in live), Decimal("0.00"))
            )
        facts.reserved = {sku: 0 for sku in all_skus} | {sku: int(n) for sku, n in lines}
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for row in rows:
            counts[row.aggregate_id][0 if row.event_type == "OrderCreated" else 1] += 1
            if row.status == "published":
                facts.published_event_ids.add(row.event_id)
            else:
                facts.outbox_not_published.append((row.event_id, row.status))
        for r in order_rows:
            if r.created_at >= young_since:
                created, cancels = counts.get(r.order_id, [0, 0])
                facts.outbox_rows[r.order_id] = (created, cancels, r.status == "cancelled")
        facts.dead_lettered = dead_lettered_by_customer(letters)
        return facts
