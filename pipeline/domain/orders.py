"""What makes an order request valid: every field checked, every fault reported with its
field (a 422 lists them all), and the bounds the database and the pipeline can hold."""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pipeline.domain.events import CENTS, OrderLine, money

MAX_ID_LENGTH = 64


MAX_EMAIL_LENGTH = 254


MAX_QUANTITY = 10_000


MAX_UNIT_PRICE = Decimal("1000000.00")


# The money columns are NUMERIC(MONEY_PRECISION, MONEY_SCALE) (pipeline.adapters.db.schema):
# a total beyond what they hold (9999999999.99) is the client's error (422), not a database
# failure (PostgreSQL refuses it; SQLite would store it inexactly).
MONEY_PRECISION, MONEY_SCALE = 12, 2
MAX_TOTAL = Decimal(f"{'9' * (MONEY_PRECISION - MONEY_SCALE)}.{'9' * MONEY_SCALE}")


MAX_IDEMPOTENCY_KEY_LENGTH = 200


# A price as text: plain decimal notation ("12.50", "3", "-0"), as long as the largest price
# could need with leading zeros to spare; no exponent, sign "+", spaces, "NaN" or "1_000" (all
# of which Decimal() takes). Published in the OpenAPI document (pipeline.web.contract).
MAX_PRICE_TEXT_LENGTH = 20
PRICE_TEXT_PATTERN = r"-?[0-9]+(\.[0-9]+)?"
_DECIMAL_TEXT = re.compile(f"(?=.{{1,{MAX_PRICE_TEXT_LENGTH}}}$){PRICE_TEXT_PATTERN}", re.ASCII)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


ORDER_FIELDS = {"customer_id", "customer_email", "items"}


ITEM_FIELDS = {"sku", "quantity", "unit_price"}


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class ValidationFailed(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class NewOrder:
    customer_id: str
    customer_email: str
    items: tuple[OrderLine, ...]

    @property
    def total(self) -> Decimal:
        return sum((i.unit_price * i.quantity for i in self.items), Decimal("0")).quantize(CENTS)


def _text(value: Any, field: str, max_length: int, errors: list[FieldError]) -> str | None:
    if not isinstance(value, str):
        errors.append(FieldError(field, "must be a string"))
        return None
    if not value.strip():
        errors.append(FieldError(field, "must not be empty"))
        return None
    if len(value) > max_length:
        errors.append(FieldError(field, f"must be at most {max_length} characters"))
        return None
    if CONTROL_CHARS.search(value):
        errors.append(FieldError(field, "must not contain control characters"))
        return None
    if not is_unicode(value):
        errors.append(FieldError(field, "must be valid Unicode text (no lone surrogates)"))
        return None
    return value


def is_storable_text(value: str, max_length: int) -> bool:
    """1 to ``max_length`` characters that every database stores as given: no control
    characters (PostgreSQL refuses NUL in text) and no lone surrogates."""
    return 1 <= len(value) <= max_length and not CONTROL_CHARS.search(value) and is_unicode(value)


def is_unicode(value: str) -> bool:
    # A JSON escape such as "\ud800" decodes to a lone surrogate: no database can store it.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _price(value: Any, field: str, errors: list[FieldError]) -> Decimal | None:
    # Prices are decimal strings ("12.50"); JSON numbers are accepted too, parsed exactly.
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        errors.append(FieldError(field, 'must be a decimal string such as "12.50"'))
        return None
    if isinstance(value, str) and not _DECIMAL_TEXT.fullmatch(value):
        errors.append(FieldError(field, f'{value[:40]!r} is not a decimal number such as "12.50"'))
        return None
    try:
        price = Decimal(value)
    except InvalidOperation:
        errors.append(FieldError(field, f"{str(value)[:40]!r} is not a decimal number"))
        return None
    if not price.is_finite():
        errors.append(FieldError(field, "must be a finite number"))
    elif price < 0:
        errors.append(FieldError(field, "must not be negative"))
    elif price > MAX_UNIT_PRICE:
        errors.append(FieldError(field, f"must be at most {MAX_UNIT_PRICE}"))
    elif price != price.quantize(CENTS):
        errors.append(FieldError(field, "must have at most two decimal places"))
    else:
        return price.quantize(CENTS) + 0  # + 0 makes "-0" a plain 0.00
    return None


def _unknown(body: Mapping[str, Any], allowed: set[str], prefix: str) -> list[FieldError]:
    return [FieldError(f"{prefix}{k}", "unknown field") for k in sorted(set(body) - allowed)]


def validate_order(body: Any, *, max_items: int) -> NewOrder:
    """A :class:`NewOrder` from a decoded JSON body, or :class:`ValidationFailed` naming
    every field at fault."""
    if not isinstance(body, dict):
        raise ValidationFailed([FieldError("body", "must be a JSON object")])
    errors = _unknown(body, ORDER_FIELDS, "")
    for name in sorted(ORDER_FIELDS - set(body)):
        errors.append(FieldError(name, "is required"))
    customer_id = _text(body.get("customer_id"), "customer_id", MAX_ID_LENGTH, errors) if (
        "customer_id" in body) else None  # fmt: skip
    email = None
    if "customer_email" in body:
        email = _text(body["customer_email"], "customer_email", MAX_EMAIL_LENGTH, errors)
        if email is not None and not _EMAIL.match(email):
            errors.append(FieldError("customer_email", "is not a valid email address"))
            email = None
    lines: list[OrderLine] = []
    raw_items = body.get("items")
    if "items" in body:
        if not isinstance(raw_items, list):
            errors.append(FieldError("items", "must be a list"))
        elif not raw_items:
            errors.append(FieldError("items", "must contain at least one item"))
        elif len(raw_items) > max_items:
            errors.append(FieldError("items", f"must contain at most {max_items} items"))
        else:
            for i, raw in enumerate(raw_items):
                line = _item(raw, f"items[{i}]", errors)
                if line is not None:
                    lines.append(line)
    if errors:
        raise ValidationFailed(errors)
    assert customer_id is not None and email is not None
    order = NewOrder(customer_id=customer_id, customer_email=email, items=tuple(lines))
    if order.total > MAX_TOTAL:
        raise ValidationFailed([FieldError(
            "total", f"the sum of quantity x unit_price over the items, {order.total}, is over "
                     f"the largest total stored, {MAX_TOTAL}",
        )])  # fmt: skip
    return order


def _item(raw: Any, prefix: str, errors: list[FieldError]) -> OrderLine | None:
    if not isinstance(raw, dict):
        errors.append(FieldError(prefix, "must be an object"))
        return None
    before = len(errors)
    errors.extend(_unknown(raw, ITEM_FIELDS, f"{prefix}."))
    for name in sorted(ITEM_FIELDS - set(raw)):
        errors.append(FieldError(f"{prefix}.{name}", "is required"))
    sku = _text(raw["sku"], f"{prefix}.sku", MAX_ID_LENGTH, errors) if "sku" in raw else None
    quantity = raw.get("quantity")
    if "quantity" in raw:
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            errors.append(FieldError(f"{prefix}.quantity", "must be an integer"))
        elif not 1 <= quantity <= MAX_QUANTITY:
            errors.append(FieldError(f"{prefix}.quantity", f"must be between 1 and {MAX_QUANTITY}"))
    price = (
        _price(raw["unit_price"], f"{prefix}.unit_price", errors) if "unit_price" in raw else None
    )
    if len(errors) > before or sku is None or price is None or not isinstance(quantity, int):
        return None
    return OrderLine(sku=sku, quantity=quantity, unit_price=price)


def request_fingerprint(body: Any) -> str:
    """Same body, same fingerprint, whatever the whitespace or key order."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- what the order store answers (pipeline.services.ports.OrderRepository) --------------------

CANCELLABLE = ("created", "confirmed")


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request."""


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OrderRow:
    order_id: str
    customer_id: str
    status: str
    total: Decimal
    items: tuple[OrderLine, ...] = ()


# (key, request fingerprint, status code, response body) to remember with the order.
Idempotency = tuple[str, str, int, dict[str, Any]]


def order_summary(
    order_id: str, status: str, total: Decimal, created_at: datetime, updated_at: datetime
) -> dict[str, Any]:
    """An order in a customer's list of orders (``GET /orders/{id}`` has its items)."""
    return {
        "order_id": order_id,
        "status": status,
        "total": money(total),
        "created_at": created_at.isoformat(),
        "updated_at": updated_at.isoformat(),
    }
