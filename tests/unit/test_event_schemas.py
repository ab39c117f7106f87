"""docs/schemas/events/: every event the encoder writes — typical, at its size limits, with its
optional fields absent — validates against its type's published schema, and the records the
decoder refuses are the ones the schema refuses."""

from __future__ import annotations

import dataclasses
import json
import typing
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.domain.event_schemas import TOPICS
from pipeline.domain.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    Contact,
    InvalidEvent,
    OrderCreated,
    OrderLine,
    decode,
    encode,
)
from pipeline.domain.orders import MAX_ID_LENGTH
from pipeline.settings import PROJECT_ROOT

SCHEMAS_DIR = PROJECT_ROOT / "docs" / "schemas" / "events"
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
LARGEST_MONEY = Decimal("9" * 24 + ".99")
MAX_ORDER_ITEMS = 10_000  # the most PIPELINE_MAX_ORDER_ITEMS allows


def validator(event_type: str) -> jsonschema.Draft202012Validator:
    """The published file (not the generator's output: that they are equal is tested apart)."""
    schema = json.loads((SCHEMAS_DIR / f"{event_type}.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


VALIDATORS = {name: validator(name) for name in EVENT_TYPES}

# Values as the services make them: text is valid Unicode (the decoder refuses lone surrogates),
# integers fit 64 bits, money has cents, times are aware UTC from the epoch on.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=80)
INTS = st.integers(INT64_MIN, INT64_MAX)
MONEY = st.decimals(-LARGEST_MONEY, LARGEST_MONEY, places=2, allow_nan=False)
# Hypothesis takes naive bounds and attaches the zone.
FIRST, LAST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)
TIMES = st.datetimes(FIRST.replace(tzinfo=None), LAST.replace(tzinfo=None), timezones=st.just(UTC))
SCALARS: dict[Any, st.SearchStrategy[Any]] = {
    str: TEXT, int: INTS, Decimal: MONEY, datetime: TIMES, bool: st.booleans(),
}  # fmt: skip
LINES = st.lists(
    st.builds(OrderLine, sku=TEXT, quantity=INTS, unit_price=MONEY), min_size=1, max_size=5
).map(tuple)


def strategy(hint: Any) -> st.SearchStrategy[Any]:
    args = typing.get_args(hint)
    if type(None) in args:
        return st.none() | strategy(next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is tuple:
        return LINES
    if dataclasses.is_dataclass(hint):  # a nested value, such as OrderCreated's contact
        return events(hint)  # type: ignore[arg-type]
    return SCALARS[hint]


def events(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: strategy(hints[f.name]) for f in dataclasses.fields(cls)})


# Every version a writer may write (PIPELINE_EVENT_WRITE_VERSION): each must validate.
WRITE_VERSIONS = range(1, SCHEMA_VERSION + 1)


ANY_EVENT = st.one_of(*(events(cls) for cls in EVENT_TYPES.values()))


def test_every_event_type_has_a_published_schema_and_a_topic() -> None:
    published = {path.stem for path in SCHEMAS_DIR.glob("*.json")}
    assert published == set(EVENT_TYPES)
    assert {cls.event_type for cls in TOPICS} == set(EVENT_TYPES)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_EVENT)
def test_every_encoded_event_validates_and_decodes_back(event: Any) -> None:
    for version in WRITE_VERSIONS:
        raw = encode(event, version)
        VALIDATORS[event.event_type].validate(json.loads(raw))
        assert decode(raw) == event


def edge_cases() -> list[Any]:
    """Each event type at its limits: the largest integers and sums, long text, the most lines
    an order may have (``PIPELINE_MAX_ORDER_ITEMS`` at its maximum) with the longest SKUs, the
    last microsecond of year 9999, and the first of the epoch."""
    line = OrderLine("s" * MAX_ID_LENGTH, INT64_MAX, LARGEST_MONEY)
    values: dict[Any, Any] = {
        str: "\U0001f9fe" + "x" * 10_000, int: INT64_MAX, Decimal: -LARGEST_MONEY,
        datetime: datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), bool: True,
    }  # fmt: skip
    smallest: dict[Any, Any] = {
        str: "x", int: INT64_MIN, Decimal: Decimal("0.00"), datetime: FIRST, bool: False,
    }  # fmt: skip
    found = []
    for cls in EVENT_TYPES.values():
        hints = typing.get_type_hints(cls)
        for chosen in (values, smallest):
            kwargs = {}
            for f in dataclasses.fields(cls):
                hint = hints[f.name]
                if typing.get_origin(hint) is tuple:
                    kwargs[f.name] = (line,) * (MAX_ORDER_ITEMS if chosen is values else 1)
                elif type(None) in typing.get_args(hint):
                    kwargs[f.name] = None
                elif hint is Contact:
                    kwargs[f.name] = Contact(chosen[str])
                else:
                    kwargs[f.name] = chosen[hint]
            found.append(cls(**kwargs))
    return found


EDGE_CASES = edge_cases()


@pytest.mark.parametrize("event", EDGE_CASES, ids=lambda e: e.event_type)
def test_events_at_their_limits_validate_and_decode_back(event: Any) -> None:
    for version in WRITE_VERSIONS:
        raw = encode(event, version)
        VALIDATORS[event.event_type].validate(json.loads(raw))
        assert decode(raw) == event


def created() -> dict[str, Any]:
    event = OrderCreated("e-1", "o-1", "c-1", Contact("c1@example.com"),
                         (OrderLine("sku-1", 2, Decimal("10.25")),), Decimal("20.50"),
                         datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))  # fmt: skip
    body: dict[str, Any] = json.loads(encode(event))
    return body


@pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=lambda c: c.event_type)
def test_a_record_written_before_a_defaulted_field_existed_still_validates(cls: Any) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}  # fmt: skip
    event = next(e for e in EDGE_CASES if type(e) is cls)
    body = json.loads(encode(event))
    for name in defaults:
        del body[name]
    VALIDATORS[cls.event_type].validate(body)
    assert decode(json.dumps(body).encode()) == dataclasses.replace(event, **defaults)


def test_a_property_the_schema_does_not_name_is_allowed_as_readers_ignore_it() -> None:
    body = {**created(), "coupon": {"code": "X"}}
    VALIDATORS["OrderCreated"].validate(body)
    decode(json.dumps(body).encode())


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    target: Any = body
    for step in parents:
        target = target[int(step)] if step.isdigit() else target[step]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return body


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("event_id", ...),
        ("event_id", ""),
        ("schema_version", SCHEMA_VERSION + 1),
        ("schema_version", True),
        ("event_type", "OrderCancelled"),  # then the fields an OrderCancelled needs are missing
        ("total", "20.505"),
        ("total", 20.5),
        ("total", "1e3"),
        ("total", "1" * 25),
        ("created_at", "2026-01-02T03:04:05"),  # no offset
        ("created_at", "yesterday"),
        ("items", []),
        ("items.0.quantity", 2**63),
        ("items.0.quantity", "2"),
        ("items.0.sku", ...),
    ],
)
def test_what_the_decoder_refuses_the_schema_refuses(path: str, value: Any) -> None:
    body = _set(created(), path, value)
    errors = list(VALIDATORS[body["event_type"]].iter_errors(body))
    assert errors, f"the schema takes {path}={value!r}"
    with pytest.raises(InvalidEvent):
        decode(json.dumps(body).encode())
