"""Shared fixtures. Unit tests stay offline; integration fixtures live in tests/integration."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from pipeline.domain.events import Contact, OrderCancelled, OrderCreated, OrderLine

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def order_created(
    customer_id: str = "cust-1",
    total: str = "10.50",
    *,
    at: datetime | None = None,
    order_id: str | None = None,
    event_id: str | None = None,
) -> OrderCreated:
    return OrderCreated(
        event_id=event_id or str(uuid.uuid4()),
        order_id=order_id or str(uuid.uuid4()),
        customer_id=customer_id,
        contact=Contact(email=f"{customer_id}@example.com"),
        items=(OrderLine(sku="sku-1", quantity=1, unit_price=Decimal(total)),),
        total=Decimal(total),
        created_at=at or T0,
    )


def order_cancelled(created: OrderCreated, *, minutes: int = 5) -> OrderCancelled:
    return OrderCancelled(
        event_id=str(uuid.uuid4()),
        order_id=created.order_id,
        customer_id=created.customer_id,
        total=created.total,
        cancelled_at=created.created_at + timedelta(minutes=minutes),
        items=created.items,
    )


@pytest.fixture
def make_order():  # type: ignore[no-untyped-def]
    return order_created
