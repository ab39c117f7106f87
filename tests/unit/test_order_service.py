"""The order service's outcomes over the in-memory repositories, and the HTTP answer the web
gives each (pipeline.web.answers)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from pipeline.adapters.memory import MemoryDatabase, MemoryOrderStore, MemoryOutboxStore
from pipeline.domain.events import OrderCreated, decode_order_event
from pipeline.domain.orders import ValidationFailed
from pipeline.services.orders import (
    Cancelled,
    Created,
    KeyConflict,
    NotCancellable,
    NotFound,
    OrderService,
    Replayed,
)
from pipeline.web.answers import answer


def body(customer: str = "c-1", price: str = "2.50", quantity: int = 2) -> dict[str, Any]:
    return {"customer_id": customer, "customer_email": f"{customer}@example.com",
            "items": [{"sku": "sku-1", "quantity": quantity, "unit_price": price}]}  # fmt: skip


@pytest.fixture
def db() -> MemoryDatabase:
    return MemoryDatabase()


@pytest.fixture
def woken() -> list[int]:
    return []


@pytest.fixture
def service(db: MemoryDatabase, woken: list[int]) -> OrderService:
    return OrderService(MemoryOrderStore(db), max_items=5, on_committed=lambda: woken.append(1))


async def test_placing_an_order_commits_it_with_its_event_and_wakes_the_forwarder(
    service: OrderService, db: MemoryDatabase, woken: list[int]
) -> None:
    placed = await service.place_order(body())
    assert isinstance(placed, Created) and placed.total == Decimal("5.00")
    assert answer(placed) == (201, placed.body(), {})
    [row] = await MemoryOutboxStore(db).pending(10)
    assert row.event_type == "OrderCreated" and woken == [1]


async def test_orders_are_written_at_the_store_write_version(db: MemoryDatabase) -> None:
    default, raised = (
        OrderService(MemoryOrderStore(db), max_items=5),
        OrderService(MemoryOrderStore(db, write_version=2), max_items=5),
    )
    first, second = await default.place_order(body("c-1")), await raised.place_order(body("c-2"))
    rows = {r.partition_key: r for r in await MemoryOutboxStore(db).pending(10)}
    assert (rows["c-1"].schema_version, rows["c-2"].schema_version) == (1, 2)
    assert json.loads(rows["c-1"].payload)["customer_email"] == "c-1@example.com"
    assert json.loads(rows["c-2"].payload)["contact"] == {"email": "c-2@example.com"}
    for placed, row in ((first, rows["c-1"]), (second, rows["c-2"])):
        event = decode_order_event(row.payload)
        assert isinstance(placed, Created) and isinstance(event, OrderCreated)
        assert (
            event.order_id == placed.order_id
            and event.contact.email == row.partition_key + "@example.com"
        )


async def test_a_key_replays_its_answer_and_refuses_another_body(
    service: OrderService, woken: list[int]
) -> None:
    first = await service.place_order(body(), "k")
    again = await service.place_order(body(), "k")
    other = await service.place_order(body(price="9.99"), "k")
    assert isinstance(first, Created) and isinstance(again, Replayed)
    assert answer(again) == (201, first.body(), {"Idempotent-Replayed": "true"})
    assert other == KeyConflict("k") and answer(other)[0] == 409
    assert answer(other)[1]["error"] == "idempotency_key_reused"
    assert woken == [1]  # only the commit woke the forwarder


async def test_cancelling_answers_cancelled_not_found_or_why_not(service: OrderService) -> None:
    placed = await service.place_order(body())
    assert isinstance(placed, Created)
    assert await service.cancel_order(placed.order_id) == Cancelled(placed.order_id)
    again = await service.cancel_order(placed.order_id)
    assert again == NotCancellable(placed.order_id, "cancelled")
    detail = f"order {placed.order_id} is already cancelled"
    assert answer(again)[:2] == (409, {"error": "conflict", "detail": detail})
    assert await service.cancel_order("nope") == NotFound("nope")
    assert answer(NotFound("nope")) == (
        404, {"error": "not_found", "detail": "no order 'nope'"}, {})  # fmt: skip


async def test_bad_requests_and_keys_are_refused_before_anything_is_written(
    service: OrderService, db: MemoryDatabase
) -> None:
    with pytest.raises(ValidationFailed) as bad:
        await service.place_order({"customer_id": "", "items": []})
    assert {e.field for e in bad.value.errors} >= {"customer_id", "customer_email", "items"}
    with pytest.raises(ValidationFailed):
        await service.place_order(body(), "\x00")
    assert db.orders == {} and db.outbox == {}
