from __future__ import annotations

import json
from decimal import Decimal

import pytest

from pipeline.domain import events
from pipeline.domain.events import (
    EARLIER_SHAPES,
    EVENT_TYPES,
    SCHEMA_VERSION,
    Contact,
    InvalidEvent,
    OrderCancelled,
    OrderCreated,
    OrderLine,
    decode_order_event,
    derived_event_id,
    encode,
    written_version,
)
from tests.conftest import T0, order_cancelled, order_created


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


# -- schema evolution (docs/schema-evolution.md) ------------------------------------------------

# An OrderCreated exactly as the release before schema version 2 wrote it (979b32b): this
# release must read it, and write it byte for byte at write version 1.
PREVIOUS_RELEASE_ORDER_CREATED = (
    b'{"event_type":"OrderCreated","schema_version":1,"event_id":"e-1","order_id":"o-1",'
    b'"customer_id":"alice","customer_email":"alice@example.com","items":[{"sku":"sku-1",'
    b'"quantity":2,"unit_price":"5.25"}],"total":"10.50","created_at":"2026-11-01T12:00:00+00:00"}'
)


def _previous_release_event() -> OrderCreated:
    return OrderCreated(
        event_id="e-1", order_id="o-1", customer_id="alice",
        contact=Contact(email="alice@example.com"),
        items=(OrderLine("sku-1", 2, Decimal("5.25")),), total=Decimal("10.50"), created_at=T0,
    )  # fmt: skip


def test_a_version_1_order_created_is_upcast_to_the_version_2_shape() -> None:
    assert decode_order_event(PREVIOUS_RELEASE_ORDER_CREATED) == _previous_release_event()


def test_write_version_1_writes_what_the_previous_release_wrote() -> None:
    assert encode(_previous_release_event(), 1) == PREVIOUS_RELEASE_ORDER_CREATED
    assert encode(_previous_release_event()) == PREVIOUS_RELEASE_ORDER_CREATED  # the default


def test_write_version_2_writes_the_contact_object_and_reads_back_the_same() -> None:
    event = order_created("bob")
    body = json.loads(encode(event, 2))
    assert body["schema_version"] == 2 and written_version(event, 2) == 2
    assert body["contact"] == {"email": "bob@example.com"} and "customer_email" not in body
    assert decode_order_event(encode(event, 2)) == event


def test_an_event_type_without_a_version_2_is_written_at_version_1_at_any_write_version() -> None:
    cancelled = order_cancelled(order_created())
    for write_version in range(1, SCHEMA_VERSION + 1):
        assert json.loads(encode(cancelled, write_version))["schema_version"] == 1
        assert written_version(cancelled, write_version) == 1
        assert decode_order_event(encode(cancelled, write_version)) == cancelled


@pytest.mark.parametrize("write_version", range(1, SCHEMA_VERSION + 1))
def test_every_write_version_round_trips_and_names_its_version(write_version: int) -> None:
    created = order_created("carol", "3.10")
    raw = encode(created, write_version)
    assert json.loads(raw)["schema_version"] == written_version(created, write_version)
    assert decode_order_event(raw) == created


def test_every_earlier_shape_upcasts_and_downcasts_without_loss() -> None:
    newest = order_created("dave")
    for (event_type, version), shape in EARLIER_SHAPES.items():
        current = EVENT_TYPES[event_type]
        assert shape.event_type == event_type and version < events.schema_version_of(current)
        assert events.schema_version_of(shape) == version
        older = events.as_written(newest, version)
        assert type(older) is shape
        upcast = older
        while type(upcast) is not current:
            upcast = upcast.upcast()
        assert upcast == newest


def test_fields_a_newer_producer_added_are_ignored() -> None:
    event = order_created("erin")
    body = json.loads(encode(event, 2))
    body["gift_wrap"] = {"paper": "red"}  # an optional field of a later release
    body["items"][0]["colour"] = "blue"
    body["contact"]["phone"] = "+44 20 7946 0000"
    assert decode_order_event(json.dumps(body).encode()) == event
    v1 = json.loads(PREVIOUS_RELEASE_ORDER_CREATED)
    v1["loyalty_tier"] = "gold"
    assert decode_order_event(json.dumps(v1).encode()) == _previous_release_event()


@pytest.mark.parametrize(
    ("version", "change", "reason"),
    [
        # Known fields are still checked while unknown ones are ignored.
        (2, {"unknown": 1, "total": 12.5}, "total: expected a decimal string"),
        (2, {"contact": "erin@example.com"}, "contact: expected an object"),
        (2, {"contact": {"mail": "erin@example.com"}}, "contact.email: expected a non-empty"),
        (2, {"contact": None}, "contact: expected an object"),
        # A version 2 record in the version 1 shape is not upcast: it is malformed.
        (2, {"contact": None, "customer_email": "erin@example.com"}, "contact: expected an object"),
        (1, {"customer_email": None}, "customer_email: expected a non-empty string"),
        (1, {"schema_version": "1"}, "schema_version: expected an integer"),
        (1, {"schema_version": 0}, "OrderCreated has no schema_version 0"),
        (1, {"schema_version": SCHEMA_VERSION + 1}, "newer than this worker reads .* upgrade"),
    ],
)
def test_a_malformed_record_of_either_version_is_still_poison(
    version: int, change: dict[str, object], reason: str
) -> None:
    body = {**json.loads(encode(order_created("erin"), version)), **change}
    with pytest.raises(InvalidEvent, match=reason):
        decode_order_event(json.dumps(body).encode())


def test_a_version_newer_than_this_release_says_what_to_do() -> None:
    body = {**json.loads(encode(order_cancelled(order_created()))), "schema_version": 7}
    with pytest.raises(InvalidEvent) as refused:
        decode_order_event(json.dumps(body).encode())
    assert str(refused.value) == (
        "OrderCancelled schema_version 7 is newer than this worker reads (1 to 1): "
        "upgrade the worker, then replay the dead letter"
    )


def test_a_huge_schema_version_is_refused_in_a_short_message() -> None:
    body = {**json.loads(encode(order_created())), "schema_version": 10**4000}
    with pytest.raises(InvalidEvent, match="newer than this worker reads") as refused:
        decode_order_event(json.dumps(body).encode())
    assert len(str(refused.value)) < 200
