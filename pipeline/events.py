"""The events on the wire and their JSON codec.

Every event is a JSON object with ``event_type``, ``schema_version`` and ``event_id`` beside
its fields. Money travels as a string with two decimals (``"12.50"``) and is read back as an
exact :class:`~decimal.Decimal`; times are ISO 8601 in UTC with their offset.

Agents consume raw bytes and decode them here, so a record that does not decode is ours to
handle (:class:`InvalidEvent`) rather than something the framework drops silently.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, TypeVar

SCHEMA_VERSION = 1
CENTS = Decimal("0.01")

# Namespace for derived event ids: uuid5(namespace, "<cause id>:<derived type>").
DERIVED_EVENT_NAMESPACE = uuid.UUID("6f2b9c1e-2d4a-4c8e-9a57-0c3f1b7d8e42")


class InvalidEvent(ValueError):
    """Bytes that are not a valid event of a known type (a poison pill)."""


def money(value: Decimal) -> str:
    return str(value.quantize(CENTS))


def utc_now() -> datetime:
    return datetime.now(UTC)


def derived_event_id(cause_event_id: str, derived_type: str) -> str:
    """A deterministic id, so re-sending a derived event after a redelivery is a duplicate
    downstream consumers recognise, not a new event."""
    return str(uuid.uuid5(DERIVED_EVENT_NAMESPACE, f"{cause_event_id}:{derived_type}"))


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    quantity: int
    unit_price: Decimal

    def to_dict(self) -> dict[str, Any]:
        return {"sku": self.sku, "quantity": self.quantity, "unit_price": money(self.unit_price)}


@dataclass(frozen=True, slots=True)
class OrderCreated:
    event_type: ClassVar[str] = "OrderCreated"
    event_id: str
    order_id: str
    customer_id: str
    customer_email: str
    items: tuple[OrderLine, ...]
    total: Decimal
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "customer_email": self.customer_email,
            "items": [line.to_dict() for line in self.items],
            "total": money(self.total),
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    event_type: ClassVar[str] = "OrderCancelled"
    event_id: str
    order_id: str
    customer_id: str
    total: Decimal
    cancelled_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "total": money(self.total),
            "cancelled_at": self.cancelled_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class CustomerStatsUpdated:
    event_type: ClassVar[str] = "CustomerStatsUpdated"
    event_id: str
    caused_by: str
    customer_id: str
    order_count: int
    cancelled_count: int
    total_spent: Decimal
    average_order_value: Decimal
    first_order_at: datetime | None
    last_order_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "caused_by": self.caused_by,
            "customer_id": self.customer_id,
            "order_count": self.order_count,
            "cancelled_count": self.cancelled_count,
            "total_spent": money(self.total_spent),
            "average_order_value": money(self.average_order_value),
            "first_order_at": _iso(self.first_order_at),
            "last_order_at": _iso(self.last_order_at),
        }


OrderEvent = OrderCreated | OrderCancelled
Event = OrderCreated | OrderCancelled | CustomerStatsUpdated


def encode(event: Event) -> bytes:
    body = {"event_type": event.event_type, "schema_version": SCHEMA_VERSION, **event.to_dict()}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_order_event(data: bytes | None) -> OrderEvent:
    """Decode an ``orders.events`` record, or raise :class:`InvalidEvent` saying why."""
    body = _json_object(data)
    event_type = body.get("event_type")
    decoder = _ORDER_DECODERS.get(event_type) if isinstance(event_type, str) else None
    if decoder is None:
        raise InvalidEvent(f"unknown event_type {event_type!r}")
    return decoder(body)


def decode_stats_updated(data: bytes | None) -> CustomerStatsUpdated:
    body = _json_object(data)
    if body.get("event_type") != CustomerStatsUpdated.event_type:
        raise InvalidEvent(f"expected CustomerStatsUpdated, got {body.get('event_type')!r}")
    return CustomerStatsUpdated(
        event_id=_str(body, "event_id"),
        caused_by=_str(body, "caused_by"),
        customer_id=_str(body, "customer_id"),
        order_count=_int(body, "order_count"),
        cancelled_count=_int(body, "cancelled_count"),
        total_spent=_decimal(body, "total_spent"),
        average_order_value=_decimal(body, "average_order_value"),
        first_order_at=_opt_time(body, "first_order_at"),
        last_order_at=_opt_time(body, "last_order_at"),
    )


def _order_created(body: Mapping[str, Any]) -> OrderCreated:
    raw_items = body.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise InvalidEvent("items: expected a non-empty list")
    items = []
    for i, raw in enumerate(raw_items):
        if not isinstance(raw, dict):
            raise InvalidEvent(f"items[{i}]: expected an object")
        items.append(
            OrderLine(
                sku=_str(raw, "sku", f"items[{i}]."),
                quantity=_int(raw, "quantity", f"items[{i}]."),
                unit_price=_decimal(raw, "unit_price", f"items[{i}]."),
            )
        )
    return OrderCreated(
        event_id=_str(body, "event_id"),
        order_id=_str(body, "order_id"),
        customer_id=_str(body, "customer_id"),
        customer_email=_str(body, "customer_email"),
        items=tuple(items),
        total=_decimal(body, "total"),
        created_at=_time(body, "created_at"),
    )


def _order_cancelled(body: Mapping[str, Any]) -> OrderCancelled:
    return OrderCancelled(
        event_id=_str(body, "event_id"),
        order_id=_str(body, "order_id"),
        customer_id=_str(body, "customer_id"),
        total=_decimal(body, "total"),
        cancelled_at=_time(body, "cancelled_at"),
    )


_ORDER_DECODERS: dict[str, Callable[[Mapping[str, Any]], OrderEvent]] = {
    OrderCreated.event_type: _order_created,
    OrderCancelled.event_type: _order_cancelled,
}


# -- field readers: each names the field at fault ------------------------------------------------

T = TypeVar("T")


def _json_object(data: bytes | None) -> dict[str, Any]:
    if data is None:
        raise InvalidEvent("empty record value")
    try:
        body = json.loads(data, parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"value is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidEvent("value is not a JSON object")
    version = body.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InvalidEvent(f"unsupported schema_version {version!r}")
    return body


def _get(body: Mapping[str, Any], name: str, kind: type[T], prefix: str, what: str) -> T:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidEvent(f"{prefix}{name}: expected {what}, got {value!r:.80}")
    return value


def _str(body: Mapping[str, Any], name: str, prefix: str = "") -> str:
    value = _get(body, name, str, prefix, "a non-empty string")
    if not value:
        raise InvalidEvent(f"{prefix}{name}: expected a non-empty string")
    return value


def _int(body: Mapping[str, Any], name: str, prefix: str = "") -> int:
    return _get(body, name, int, prefix, "an integer")


def _decimal(body: Mapping[str, Any], name: str, prefix: str = "") -> Decimal:
    raw = _get(body, name, str, prefix, "a decimal string")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise InvalidEvent(f"{prefix}{name}: {raw!r:.40} is not a decimal") from None
    if not value.is_finite():
        raise InvalidEvent(f"{prefix}{name}: {raw!r:.40} is not a finite decimal")
    return value


def _time(body: Mapping[str, Any], name: str) -> datetime:
    raw = _get(body, name, str, "", "an ISO 8601 time")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidEvent(f"{name}: {raw!r:.40} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise InvalidEvent(f"{name}: {raw!r:.40} has no UTC offset")
    return value.astimezone(UTC)


def _opt_time(body: Mapping[str, Any], name: str) -> datetime | None:
    return None if body.get(name) is None else _time(body, name)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
