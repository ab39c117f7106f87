from __future__ import annotations

import json
from decimal import Decimal

import pytest

from pipeline.domain import events
from pipeline.domain.events import (
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

    from pipeline.domain.events import DERIVED_EVENT_NAMESPACE

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


def _created_with(**fields: object) -> bytes:
    return json.dumps({**json.loads(encode(order_created())), **fields}).encode()


def _line(**fields: object) -> list[dict[str, object]]:
    return [{"sku": "sku-1", "quantity": 1, "unit_price": "1.00", **fields}]


HOSTILE = {
    # What json.loads raises besides JSONDecodeError.
    "5,000-digit integer": b'{"schema_version": 1, "n": ' + b"9" * 5000 + b"}",
    "100,000-deep nesting": b'{"schema_version": 1, "n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "float beyond Decimal's exponent": b'{"schema_version": 1, "n": 1e999999999999999999999}',
    "JSON NaN": b'{"schema_version": NaN}',
    # What datetime conversion raises.
    "year 1 at +14:00": _created_with(created_at="0001-01-01T00:00:00+14:00"),
    "year 9999 at -14:00": _created_with(created_at="9999-12-31T23:59:59-14:00"),
    "a time before the epoch": _created_with(created_at="1969-12-31T23:59:59+00:00"),
    # Money that Decimal parses but no amount of money is.
    "5,000-digit decimal": _created_with(total="9" * 5000),
    "decimal beyond cents' precision": _created_with(total="1e999999999"),
    "decimal with a huge negative exponent": _created_with(total="1e-999999999999999999"),
    "fraction of a cent": _created_with(total="10.005"),
    "Infinity": _created_with(total="Infinity"),
    "NaN": _created_with(total="NaN"),
    "underscored digits": _created_with(total="1_000.00"),
    "non-ASCII digits": _created_with(total="\u0661\u0662.\u0660\u0660"),
    "padded decimal": _created_with(total=" 10.50 "),
    # Wrong types and sizes.
    "integer beyond 64 bits": _created_with(items=_line(quantity=2**70)),
    "boolean schema_version": _created_with(schema_version=True),
    "float schema_version": _created_with(schema_version=1.0),
    "items not a list": _created_with(items={"sku": "a"}),
    # Bytes that are not UTF-8 JSON.
    "not UTF-8": b'{"schema_version": 1, "event_type": "\xff\xfe"}',
    "UTF-16": encode(order_created()).decode().encode("utf-16"),
    "lone surrogate": _created_with(customer_id="\ud800"),
}


@pytest.mark.parametrize("raw", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_record_is_an_invalid_event_whatever_the_decoder_raises(raw: bytes) -> None:
    with pytest.raises(InvalidEvent):
        decode_order_event(raw)


def test_the_reason_names_what_the_parser_raised() -> None:
    with pytest.raises(InvalidEvent, match="4300 digits"):
        decode_order_event(HOSTILE["5,000-digit integer"])
    with pytest.raises(InvalidEvent, match="nested too deeply"):
        decode_order_event(HOSTILE["100,000-deep nesting"])
    with pytest.raises(InvalidEvent, match=r"created_at: .* out of range"):
        decode_order_event(HOSTILE["year 1 at +14:00"])
    with pytest.raises(InvalidEvent, match=r"total: .* is not a decimal amount of money"):
        decode_order_event(HOSTILE["decimal beyond cents' precision"])


def test_decoding_goes_on_after_a_record_nested_too_deeply() -> None:
    for _ in range(3):
        with pytest.raises(InvalidEvent):
            decode_order_event(HOSTILE["100,000-deep nesting"])
    created = order_created()
    assert decode_order_event(encode(created)) == created


def test_an_unexpected_error_inside_the_decoder_is_an_invalid_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: object) -> object:
        raise KeyError("a bug, or an input nobody thought of")

    monkeypatch.setitem(events._READERS, str, broken)
    with pytest.raises(InvalidEvent, match="KeyError") as caught:
        decode_order_event(encode(order_created()))
    assert isinstance(caught.value.__cause__, KeyError)


def test_running_out_of_memory_is_not_taken_for_a_bad_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def exhausted(*_: object, **__: object) -> object:
        raise MemoryError

    monkeypatch.setattr(events.json, "loads", exhausted)
    with pytest.raises(MemoryError):
        decode_order_event(encode(order_created()))


def test_money_and_times_at_their_bounds_still_decode() -> None:
    largest = _line(quantity=2**63 - 1, unit_price="12345678901234.5")
    body = _created_with(total="-0.00", created_at="1970-01-01T00:00:00+00:00", items=largest)
    event = decode_order_event(body)
    assert isinstance(event, OrderCreated)
    assert event.total == Decimal("0.00") and event.items[0].quantity == 2**63 - 1
    assert event.items[0].unit_price == Decimal("12345678901234.50")
    assert decode_order_event(_created_with(created_at="9999-12-31T23:59:59+00:00"))
