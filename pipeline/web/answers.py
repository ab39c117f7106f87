"""The HTTP answer to each outcome of the order service: status, JSON body, headers."""

from __future__ import annotations

from typing import Any

from pipeline.services.orders import (
    Cancelled,
    CancelResult,
    Created,
    KeyConflict,
    NotCancellable,
    NotFound,
    Placed,
    Replayed,
)

Answer = tuple[int, dict[str, Any], dict[str, str]]


def answer(outcome: Placed | CancelResult) -> Answer:
    match outcome:
        case Created():
            return 201, outcome.body(), {}
        case Replayed(stored):
            return stored.status_code, stored.body, {"Idempotent-Replayed": "true"}
        case KeyConflict():
            detail = "this Idempotency-Key was used with a different request body"
            return 409, _error("idempotency_key_reused", detail), {}
        case Cancelled(order_id):
            return 200, {"order_id": order_id, "status": "cancelled"}, {}
        case NotFound(order_id):
            return 404, _error("not_found", f"no order {order_id!r}"), {}
        case NotCancellable(order_id, status):
            return 409, _error("conflict", f"order {order_id} is already {status}"), {}


def _error(code: str, detail: str) -> dict[str, Any]:
    return {"error": code, "detail": detail}
