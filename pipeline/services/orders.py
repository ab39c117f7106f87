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
from typing import Any

from pipeline import logs
from pipeline.adapters.db.orders import (
    CancelOutcome,
    IdempotencyConflict,
    OrderRow,
    OrderStore,
    StoredResponse,
)
from pipeline.domain.events import OrderCancelled, OrderCreated, money, utc_now
from pipeline.domain.orders import (
    CONTROL_CHARS,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    FieldError,
    ValidationFailed,
    is_unicode,
    request_fingerprint,
    validate_order,
)

# The order's life starts here; agents log the rest on the same logger (PIPELINE_LOG_EVENTS).
trace = logging.getLogger("pipeline.trace")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]
    replayed: bool = False


class OrderService:
    """Validated writes of orders and their events; wakes the forwarder after each commit."""

    def __init__(
        self,
        store: OrderStore,
        *,
        max_items: int,
        on_committed: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.max_items = max_items
        self.on_committed = on_committed
        self.clock = clock

    async def place_order(self, body: Any, idempotency_key: str | None = None) -> Reply:
        if idempotency_key is not None:
            self._check_key(idempotency_key)
        order = validate_order(body, max_items=self.max_items)
        now = self.clock()
        event = OrderCreated(
            event_id=str(uuid.uuid4()),
            order_id=str(uuid.uuid4()),
            customer_id=order.customer_id,
            customer_email=order.customer_email,
            items=order.items,
            total=order.total,
            created_at=now,
        )
        reply = {"order_id": event.order_id, "status": "created", "total": money(event.total)}
        try:
            stored = await self.store.create_order(
                event,
                idempotency=(
                    None
                    if idempotency_key is None
                    else (idempotency_key, request_fingerprint(body), 201, reply)
                ),
            )
        except IdempotencyConflict:
            return Reply(
                409,
                {
                    "error": "idempotency_key_reused",
                    "detail": "this Idempotency-Key was used with a different request body",
                },
            )
        if isinstance(stored, StoredResponse):
            return Reply(stored.status_code, stored.body, replayed=True)
        self.on_committed()
        with logs.bound(order_id=event.order_id, event_id=event.event_id):
            trace.info("order created for %s: %d lines, total %s", event.customer_id,
                       len(event.items), money(event.total))  # fmt: skip
        return Reply(201, reply)

    async def cancel_order(self, order_id: str) -> Reply:
        made: list[OrderCancelled] = []

        def cancelled(order: OrderRow) -> OrderCancelled:
            made.append(self._cancelled_event(order))
            return made[-1]

        outcome, order = await self.store.cancel_order(order_id, cancelled)
        if outcome is CancelOutcome.NOT_FOUND:
            return Reply(404, {"error": "not_found", "detail": f"no order {order_id!r}"})
        if outcome is CancelOutcome.CONFLICT:
            assert order is not None
            return Reply(
                409,
                {"error": "conflict", "detail": f"order {order_id} is already {order.status}"},
            )
        self.on_committed()
        with logs.bound(order_id=order_id, event_id=made[-1].event_id if made else None):
            trace.info("order cancelled")
        return Reply(200, {"order_id": order_id, "status": "cancelled"})

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
