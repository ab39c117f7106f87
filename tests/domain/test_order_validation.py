from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from pipeline.domain.orders import (
    MAX_QUANTITY,
    MAX_TOTAL,
    MAX_UNIT_PRICE,
    ValidationFailed,
    request_fingerprint,
    validate_order,
)


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "customer_id": "cust-1",
        "customer_email": "cust-1@example.com",
        "items": [{"sku": "sku-1", "quantity": 2, "unit_price": "10.25"}],
    }
    base.update(overrides)
    return base


def fields(raw: Any, max_items: int = 100) -> list[str]:
    with pytest.raises(ValidationFailed) as info:
        validate_order(raw, max_items=max_items)
    return [e.field for e in info.value.errors]


def test_a_valid_order_has_an_exact_total() -> None:
    order = validate_order(
        body(items=[{"sku": "a", "quantity": 3, "unit_price": "0.10"},
                    {"sku": "b", "quantity": 1, "unit_price": Decimal("19.99")}]),
        max_items=10,
    )  # fmt: skip
    assert order.total == Decimal("20.29")
    assert order.items[0].unit_price == Decimal("0.10")


def test_injection_strings_are_accepted_verbatim() -> None:
    nasty = "Robert'); DROP TABLE orders;--"
    order = validate_order(body(customer_id=nasty), max_items=10)
    assert order.customer_id == nasty


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], ["body"]),
        ({}, ["customer_email", "customer_id", "items"]),
        (body(items=[]), ["items"]),
        (body(items="sku-1"), ["items"]),
        (body(customer_email="not-an-email"), ["customer_email"]),
        (body(customer_id=""), ["customer_id"]),
        (body(customer_id=42), ["customer_id"]),
        (body(customer_id="x" * 65), ["customer_id"]),
        (body(customer_id="tab\there"), ["customer_id"]),
        (body(customer_email="a@" + "b" * 260 + ".com"), ["customer_email"]),
        (body(unexpected=1), ["unexpected"]),
        (body(items=[{"sku": "a", "quantity": 0, "unit_price": "1.00"}]), ["items[0].quantity"]),
        (body(items=[{"sku": "a", "quantity": -1, "unit_price": "1.00"}]), ["items[0].quantity"]),
        (body(items=[{"sku": "a", "quantity": 1.5, "unit_price": "1.00"}]), ["items[0].quantity"]),
        (body(items=[{"sku": "a", "quantity": True, "unit_price": "1"}]), ["items[0].quantity"]),
        (body(items=[{"sku": "a", "quantity": 1, "unit_price": "-1.00"}]), ["items[0].unit_price"]),
        (body(items=[{"sku": "a", "quantity": 1, "unit_price": "1.005"}]), ["items[0].unit_price"]),
        (body(items=[{"sku": "a", "quantity": 1, "unit_price": "ten"}]), ["items[0].unit_price"]),
        (body(items=[{"sku": "a", "quantity": 1, "unit_price": "NaN"}]), ["items[0].unit_price"]),
        # Text that Decimal() reads but is not a plain decimal (the OpenAPI document's pattern).
        *[
            (body(items=[{"sku": "a", "quantity": 1, "unit_price": text}]), ["items[0].unit_price"])
            for text in ("1e2", " 12.50", "12.50 ", "+1", "1_000", "\u0661", ".5", "1.", "0" * 21)
        ],
        (body(items=[{"sku": "a", "quantity": 1, "unit_price": None}]), ["items[0].unit_price"]),
        (body(items=[{"sku": "a", "quantity": 1}]), ["items[0].unit_price"]),
        (body(items=["sku-1"]), ["items[0]"]),
        (body(items=[{"sku": "", "quantity": 1, "unit_price": "1"}]), ["items[0].sku"]),
    ],
)
def test_each_invalid_field_is_named(raw: Any, expected: list[str]) -> None:
    assert fields(raw) == expected


def test_too_many_items() -> None:
    items = [{"sku": f"s{i}", "quantity": 1, "unit_price": "1.00"} for i in range(4)]
    assert fields(body(items=items), max_items=3) == ["items"]


def test_every_fault_is_reported_at_once() -> None:
    raw = body(customer_email="nope", items=[{"sku": "a", "quantity": 0, "unit_price": "-1"}])
    assert fields(raw) == ["customer_email", "items[0].quantity", "items[0].unit_price"]


def test_fingerprint_ignores_key_order_but_not_values() -> None:
    a = {"x": 1, "y": [1, 2]}
    assert request_fingerprint(a) == request_fingerprint({"y": [1, 2], "x": 1})
    assert request_fingerprint(a) != request_fingerprint({"x": 2, "y": [1, 2]})


def test_the_largest_total_the_money_column_holds_is_accepted() -> None:
    items = [{"sku": "gold", "quantity": 10_000, "unit_price": "999999.99"}]
    assert validate_order(body(items=items), max_items=10).total == Decimal("9999999900.00")
    assert Decimal("9999999999.99") == MAX_TOTAL  # NUMERIC(12, 2)


@pytest.mark.parametrize(
    "items",
    [
        [{"sku": "gold", "quantity": 10_000, "unit_price": "1000000.00"}],
        [{"sku": f"g{n}", "quantity": 5_000, "unit_price": "999999.99"} for n in range(3)],
    ],
)
def test_a_total_beyond_the_money_column_names_the_total(items: list[dict[str, Any]]) -> None:
    assert fields(body(items=items)) == ["total"]


def test_every_limit_fits_its_column() -> None:
    assert MAX_UNIT_PRICE <= MAX_TOTAL
    assert MAX_QUANTITY <= 2**31 - 1  # INTEGER


@pytest.mark.parametrize("field", ["customer_id", "customer_email"])
def test_text_that_is_not_unicode_is_named(field: str) -> None:
    # A JSON escape may decode to a lone surrogate, which no database column can store.
    value = "a\ud800@example.com"
    assert fields(body(**{field: value})) == [field]


def test_a_lone_surrogate_in_a_sku_is_named() -> None:
    raw = body(items=[{"sku": "\udcff", "quantity": 1, "unit_price": "1"}])
    assert fields(raw) == ["items[0].sku"]


def test_negative_zero_is_a_plain_zero() -> None:
    order = validate_order(body(items=[{"sku": "a", "quantity": 1, "unit_price": "-0"}]),
                           max_items=10)  # fmt: skip
    assert str(order.items[0].unit_price) == "0.00"
    assert str(order.total) == "0.00"


def test_a_price_in_plain_notation_up_to_its_length_is_read_exactly() -> None:
    items = [{"sku": "a", "quantity": 1, "unit_price": "0" * 16 + "7.5"}]
    assert validate_order(body(items=items), max_items=10).items[0].unit_price == Decimal("7.50")
