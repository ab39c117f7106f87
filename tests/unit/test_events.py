from __future__ import annotations

import json
from decimal import Decimal

import pytest

from pipeline.events import (
    InvalidEvent,
    OrderCancelled,
    OrderCreated,
    decode_order_event,
    derived_event_id,
    encode,
)
from tests.conftest import order_cancelled, order_created


def test_order_events_round_trip_exactly() -> None:
    created = order_created(total="19.99")
    cancelled = order_cancelled(created)
    assert decode_order_event(encode(created)) == created
    assert decode_order_event(encode(cancelled)) == cancelled


def test_money_travels_as_a_two_decimal_string() -> None:
    body = json.loads(encode(order_created(total="7.5")))
    assert body["total"] == "7.50"
    assert body["items"][0]["unit_price"] == "7.50"
    assert body["event_type"] == "OrderCreated" and body["schema_version"] == 1
    assert isinstance(decode_order_event(encode(order_created(total="7.5"))).total, Decimal)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"event_type": "OrderCreated", "schema_version": 9}', "schema_version 9"),
        (b'{"event_type": "OrderShipped", "schema_version": 1}', "unknown event_type"),
        (None, "empty record"),
    ],
)
def test_poison_records_are_rejected_with_the_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        decode_order_event(raw)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("total", "12,50", "total: '12,50' is not a decimal"),
        ("total", 12.5, "total: expected a decimal string"),
        ("customer_id", "", "customer_id: expected a non-empty string"),
        ("created_at", "2026-11-01T12:00:00", "created_at: .* has no UTC offset"),
        ("items", [], "items: expected a non-empty list"),
        ("items", [{"sku": "a", "quantity": "2", "unit_price": "1.00"}], r"items\[0\].quantity"),
    ],
)
def test_a_bad_field_is_named(field: str, value: object, reason: str) -> None:
    body = json.loads(encode(order_created()))
    body[field] = value
    with pytest.raises(InvalidEvent, match=reason):
        decode_order_event(json.dumps(body).encode())


def test_derived_ids_are_uuid5_of_cause_and_type() -> None:
    import uuid

    from pipeline.events import DERIVED_EVENT_NAMESPACE

    for cause in ("e1", "0b6f5c8e-1111-4a4a-9c9c-000000000000", "ünïcode"):
        assert derived_event_id(cause, "X") == str(
            uuid.uuid5(DERIVED_EVENT_NAMESPACE, f"{cause}:X")
        )


def test_derived_ids_are_deterministic_per_cause_and_type() -> None:
    assert derived_event_id("e1", "X") == derived_event_id("e1", "X")
    assert derived_event_id("e1", "X") != derived_event_id("e2", "X")
    assert derived_event_id("e1", "X") != derived_event_id("e1", "Y")


def test_event_types_are_past_tense_names() -> None:
    assert OrderCreated.event_type == "OrderCreated"
    assert OrderCancelled.event_type == "OrderCancelled"
