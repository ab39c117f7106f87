"""The order service: validate a request, then commit the order and its event together.

``place_order`` writes the order, its items and an ``OrderCreated`` outbox row in one
transaction; ``cancel_order`` flips the status and writes ``OrderCancelled`` the same way. A
success means all of it is durable; any error means none of it was written. Publishing is the
forwarder's job (``pipeline.services.outbox``), woken as soon as the transaction commits.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline import logs
from pipeline.domain.events import Contact, OrderCancelled, OrderCreated, money, utc_now
from pipeline.domain.orders import (
    CONTROL_CHARS,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    CancelOutcome,
    FieldError,
    IdempotencyConflict,
    OrderRow,
    StoredResponse,
    ValidationFailed,
    is_unicode,
    request_fingerprint,
    validate_order,
)
from pipeline.services.ports import OrderRepository

# The order's life starts here; agents log the rest on the same logger (PIPELINE_LOG_EVENTS).
trace = logging.getLogger("pipeline.trace")


# -- what the service answers; the web maps each to its status code (pipeline.web.views) -----


@dataclass(frozen=True, slots=True)
class Created:
    order_id: str
    total: Decimal

    def body(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "status": "created", "total": money(self.total)}


@dataclass(frozen=True, slots=True)
class Replayed:
    """The Idempotency-Key was used for this same request: its first answer, again."""

    answer: StoredResponse


@dataclass(frozen=True, slots=True)
class KeyConflict:
    """The Idempotency-Key was used for a different request."""

    key: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    order_id: str


@dataclass(frozen=True, slots=True)
class NotFound:
    order_id: str


@dataclass(frozen=True, slots=True)
class NotCancellable:
    """The order is past cancelling: already cancelled, or rejected."""

    order_id: str
    status: str


Placed = Created | Replayed | KeyConflict
CancelResult = Cancelled | NotFound | NotCancellable

# The status remembered with an Idempotency-Key, so that a replay answers as the first did.
CREATED_STATUS = 201


class OrderService:
    """Validated writes of orders and their events; wakes the forwarder after each commit."""

    def __init__(
        self,
        store: OrderRepository,
        *,
        max_items: int,
        on_committed: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.max_items = max_items
        self.on_committed = on_committed
        self.clock = clock

    async def place_order(self, body: Any, idempotency_key: str | None = None) -> Placed:
        """Validate ``body`` (:class:`ValidationFailed` lists every fault) and commit the order
        with its ``OrderCreated`` outbox row."""
        if idempotency_key is not None:
            self._check_key(idempotency_key)
        order = validate_order(body, max_items=self.max_items)
        now = self.clock()
        event = OrderCreated(
            event_id=str(uuid.uuid4()),
            order_id=str(uuid.uuid4()),
            customer_id=order.customer_id,
            contact=Contact(email=order.customer_email),
            items=order.items,
            total=order.total,
            created_at=now,
        )
        created = Created(event.order_id, event.total)
        remembered = (
            None
            if idempotency_key is None
            else (idempotency_key, request_fingerprint(body), CREATED_STATUS, created.body())
        )
        try:
            stored = await self.store.create_order(event, idempotency=remembered)
        except IdempotencyConflict:
            assert idempotency_key is not None
            return KeyConflict(idempotency_key)
        if stored is not None:
            return Replayed(stored)
        self.on_committed()
        with logs.bound(order_id=event.order_id, event_id=event.event_id):
            trace.info("order created for %s: %d lines, total %s", event.customer_id,
                       len(event.items), money(event.total))  # fmt: skip
        return created

    async def cancel_order(self, order_id: str) -> CancelResult:
        made: list[OrderCancelled] = []

        def cancelled(order: OrderRow) -> OrderCancelled:
            made.append(self._cancelled_event(order))
            return made[-1]

        outcome, order = await self.store.cancel_order(order_id, cancelled)
        if outcome is CancelOutcome.NOT_FOUND:
            return NotFound(order_id)
        if outcome is CancelOutcome.CONFLICT:
            assert order is not None
            return NotCancellable(order_id, order.status)
        self.on_committed()
        with logs.bound(order_id=order_id, event_id=made[-1].event_id if made else None):
            trace.info("order cancelled")
        return Cancelled(order_id)

    def _cancelled_event(self, order: OrderRow) -> OrderCancelled:
        return OrderCancelled(
            event_id=str(uuid.uuid4()),
            order_id=order.order_id,
            customer_id=order.customer_id,
            total=order.total,
            cancelled_at=self.clock(),
            items=order.items,
            previous_status=order.status,
        )

    def _check_key(self, key: str) -> None:
        if (not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or CONTROL_CHARS.search(key)
                or not is_unicode(key)):  # fmt: skip
            raise ValidationFailed(
                [
                    FieldError(
                        "Idempotency-Key",
                        f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters",
                    )
                ]
            )
