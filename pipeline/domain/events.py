"""The events on the wire and their JSON codec.

Every event is a JSON object with ``event_type``, ``schema_version`` and ``event_id`` beside
its fields. Money travels as a string with two decimals (``"12.50"``) and is read back as an
exact :class:`~decimal.Decimal`; times are ISO 8601 in UTC with their offset.

Agents consume raw bytes and decode them here, so a record that does not decode is ours to
handle (:class:`InvalidEvent`) rather than something the framework drops silently.

How the shapes may change (docs/schema-evolution.md has the rules and the upgrade steps):

- The reader is tolerant: a field it does not know is ignored, so a newer release may add an
  optional field (with a default here) without a new ``schema_version``. Every field it knows
  is still checked strictly (type, range, presence).
- A change an older reader cannot take (a field renamed, moved, removed or retyped) is a new
  ``schema_version`` of that event type: the class here is the newest shape, each earlier
  shape stays as a class of its own with ``upcast()`` to the next shape and ``downcast()``
  from it (:data:`EARLIER_SHAPES`). Readers take every version from 1 to their newest; a
  newer one is an :class:`InvalidEvent` that says to upgrade the worker and replay it.
- Writers write each event in its newest shape at or below the write version they are given
  (``PIPELINE_EVENT_WRITE_VERSION``, :data:`DEFAULT_WRITE_VERSION` by default), so a release
  can read a new shape before any worker writes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

# The newest schema version this code reads (and may write); it reads every version down to 1.
SCHEMA_VERSION = 2
# What is written unless PIPELINE_EVENT_WRITE_VERSION says otherwise: what the previous release
# reads, so a rolling upgrade from it is safe by default (docs/schema-evolution.md).
DEFAULT_WRITE_VERSION = 1
CENTS = Decimal("0.01")

# Namespace for derived event ids: uuid5(namespace, "<cause id>:<derived type>").
DERIVED_EVENT_NAMESPACE = uuid.UUID("6f2b9c1e-2d4a-4c8e-9a57-0c3f1b7d8e42")


class InvalidEvent(ValueError):
    """Bytes that are not a valid event of a known type (a poison pill)."""


def money(value: Decimal) -> str:
    return str(value.quantize(CENTS))


def utc_now() -> datetime:
    return datetime.now(UTC)


_NAMESPACE_BYTES = DERIVED_EVENT_NAMESPACE.bytes


def derived_event_id(cause_event_id: str, derived_type: str) -> str:
    """A deterministic id, so re-sending a derived event after a redelivery is a duplicate
    downstream consumers recognise, not a new event.

    Exactly ``str(uuid.uuid5(DERIVED_EVENT_NAMESPACE, "<cause>:<type>"))``, without building
    ``UUID`` objects: agents compute a few per event.
    """
    digest = hashlib.sha1(  # noqa: S324 - UUIDv5 is defined on SHA-1; not a security use
        _NAMESPACE_BYTES + f"{cause_event_id}:{derived_type}".encode()
    ).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    quantity: int
    unit_price: Decimal


# -- orders.events (key: customer id) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contact:
    """How to reach the customer about an order: one object, so a channel can be added as an
    optional field, and a consumer that must not keep personal data drops one key."""

    email: str


@dataclass(frozen=True, slots=True)
class OrderCreated:
    """Schema version 2: the customer's email moved into ``contact`` (version 1 had it at the
    top level as ``customer_email``: :class:`OrderCreatedV1`)."""

    event_type: ClassVar[str] = "OrderCreated"
    schema_version: ClassVar[int] = 2
    event_id: str
    order_id: str
    customer_id: str
    contact: Contact
    items: tuple[OrderLine, ...]
    total: Decimal
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OrderCreatedV1:
    """``OrderCreated`` as schema version 1 has it. Read from records written before version 2
    (and upcast at once); written while the write version is 1, for workers of the previous
    release, which read version 1 only."""

    event_type: ClassVar[str] = "OrderCreated"
    schema_version: ClassVar[int] = 1
    event_id: str
    order_id: str
    customer_id: str
    customer_email: str
    items: tuple[OrderLine, ...]
    total: Decimal
    created_at: datetime

    def upcast(self) -> OrderCreated:
        return OrderCreated(
            event_id=self.event_id,
            order_id=self.order_id,
            customer_id=self.customer_id,
            contact=Contact(email=self.customer_email),
            items=self.items,
            total=self.total,
            created_at=self.created_at,
        )

    @classmethod
    def downcast(cls, event: OrderCreated) -> OrderCreatedV1:
        return cls(
            event_id=event.event_id,
            order_id=event.order_id,
            customer_id=event.customer_id,
            customer_email=event.contact.email,
            items=event.items,
            total=event.total,
            created_at=event.created_at,
        )


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    event_type: ClassVar[str] = "OrderCancelled"
    event_id: str
    order_id: str
    customer_id: str
    total: Decimal
    cancelled_at: datetime
    # The lines, so inventory can release what the order reserved without another lookup.
    items: tuple[OrderLine, ...]
    # The order's status when it was cancelled: "confirmed" means every line was reserved,
    # which lets inventory release a line whose ledger entry has expired. Events written
    # before this field existed read as "created" (release by the ledger, as they were).
    previous_status: str = "created"


# -- inventory.commands (key: SKU) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderLineRef:
    """The fields a reservation request and its answer share: which line of which order."""

    event_id: str
    caused_by: str
    order_id: str
    customer_id: str
    customer_email: str
    line_no: int
    line_count: int
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class LineReservationRequested(OrderLineRef):
    event_type: ClassVar[str] = "LineReservationRequested"
    # The orders.events partition its order's events come from ("" before it existed): the
    # stock keeper expires the line's entry on that partition's clock (tables.inventory).
    source: str = ""


@dataclass(frozen=True, slots=True)
class LineReleaseRequested:
    event_type: ClassVar[str] = "LineReleaseRequested"
    event_id: str
    caused_by: str
    order_id: str
    line_no: int
    sku: str
    quantity: int
    reason: str  # "cancelled" or "rejected"
    # The order was confirmed when cancelled: the line is reserved even if the stock keeper's
    # entry for it has expired (tables.inventory).
    confirmed: bool = False
    # The orders.events partition its order's events come from ("" before it existed): the
    # stock keeper expires the line's entry on that partition's clock (tables.inventory).
    source: str = ""


@dataclass(frozen=True, slots=True)
class LineSettled:
    """The line's order is confirmed (the database says so): the stock keeper may forget the
    line after the dedupe horizon, its units staying reserved."""

    event_type: ClassVar[str] = "LineSettled"
    event_id: str
    caused_by: str
    order_id: str
    line_no: int
    sku: str
    quantity: int
    # The orders.events partition its order's events come from ("" before it existed): the
    # stock keeper expires the line's entry on that partition's clock (tables.inventory).
    source: str = ""


@dataclass(frozen=True, slots=True)
class StockSet:
    event_type: ClassVar[str] = "StockSet"
    event_id: str
    sku: str
    available: int
    set_at: datetime


# -- inventory.events (key: order id) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InventoryReserved(OrderLineRef):
    event_type: ClassVar[str] = "InventoryReserved"
    source: str = ""  # the request's (LineReservationRequested.source)


@dataclass(frozen=True, slots=True)
class InventoryRejected(OrderLineRef):
    event_type: ClassVar[str] = "InventoryRejected"
    available: int
    source: str = ""  # the request's (LineReservationRequested.source)


@dataclass(frozen=True, slots=True)
class InventoryReleased:
    event_type: ClassVar[str] = "InventoryReleased"
    event_id: str
    caused_by: str
    order_id: str
    line_no: int
    sku: str
    quantity: int


# -- orders.status (key: order id) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderConfirmed:
    event_type: ClassVar[str] = "OrderConfirmed"
    event_id: str
    order_id: str
    customer_id: str
    customer_email: str


@dataclass(frozen=True, slots=True)
class OrderRejected:
    event_type: ClassVar[str] = "OrderRejected"
    event_id: str
    order_id: str
    customer_id: str
    customer_email: str
    reason: str


# -- analytics.events (key: customer id) and analytics.revenue (one partition) ----------------


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


@dataclass(frozen=True, slots=True)
class MilestoneReached:
    event_type: ClassVar[str] = "MilestoneReached"
    event_id: str
    caused_by: str
    customer_id: str
    milestone: str  # "first_order" or "lifetime_value"
    total_spent: Decimal


@dataclass(frozen=True, slots=True)
class RevenueRecorded:
    event_type: ClassVar[str] = "RevenueRecorded"
    event_id: str
    caused_by: str
    amount: Decimal  # negative for a cancellation
    orders: int  # +1 for an order, -1 for a cancellation
    occurred_at: datetime
    # Where the analytics agent first applied its cause ("s<partition>@<offset>" on the source
    # topic, "r..." on its redelivery topic): repeats carry the same, and the revenue windows
    # keep the highest offset per stream (tables.revenue). Empty in records written before it.
    position: str = ""


Event = (
    OrderCreated | OrderCancelled | LineReservationRequested | LineReleaseRequested | StockSet
    | LineSettled | InventoryReserved | InventoryRejected | InventoryReleased | OrderConfirmed
    | OrderRejected
    | CustomerStatsUpdated | MilestoneReached | RevenueRecorded
)  # fmt: skip
OrderEvent = OrderCreated | OrderCancelled
InventoryCommand = LineReservationRequested | LineReleaseRequested | LineSettled | StockSet
InventoryOutcome = InventoryReserved | InventoryRejected | InventoryReleased
OrderDecision = OrderConfirmed | OrderRejected

EVENT_TYPES: dict[str, type[Any]] = {cls.event_type: cls for cls in typing.get_args(Event)}

# Every earlier shape of an event type, by (event type, schema version): each has ``upcast()``
# to the type's next shape and ``downcast(next)`` from it. A type not named here has one shape,
# version 1. A shape is never deleted while a topic may still hold records of it.
EARLIER_SHAPES: dict[tuple[str, int], type[Any]] = {("OrderCreated", 1): OrderCreatedV1}


def schema_version_of(cls: type[Any]) -> int:
    """The schema version of an event class's shape (1 unless it says otherwise)."""
    version = _VERSIONS.get(cls)
    if version is None:
        version = _VERSIONS[cls] = int(getattr(cls, "schema_version", 1))
    return version


_VERSIONS: dict[type[Any], int] = {}


def _shapes(cls: type[Any]) -> dict[int, type[Any]]:
    shapes = {v: shape for (t, v), shape in EARLIER_SHAPES.items() if t == cls.event_type}
    shapes[schema_version_of(cls)] = cls
    return dict(sorted(shapes.items()))


# event type -> {schema version: the class of that shape}, oldest first
SHAPES: dict[str, dict[int, type[Any]]] = {t: _shapes(cls) for t, cls in EVENT_TYPES.items()}


# -- encoding ------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, OrderLine):
        return {"sku": value.sku, "quantity": value.quantity, "unit_price": money(value.unit_price)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Contact):
        return {"email": value.email}
    return value


def to_dict(event: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(event, f.name)) for f in dataclasses.fields(event)}


def as_written(event: Event, write_version: int = DEFAULT_WRITE_VERSION) -> Any:
    """``event`` in the shape a writer at ``write_version`` writes: its newest shape whose
    schema version is at most ``write_version`` (each event type has a version 1)."""
    shaped: Any = event
    while schema_version_of(type(shaped)) > write_version:
        older = [v for v in SHAPES[event.event_type] if v < schema_version_of(type(shaped))]
        shaped = SHAPES[event.event_type][older[-1]].downcast(shaped)
    return shaped


def written_version(event: Event, write_version: int = DEFAULT_WRITE_VERSION) -> int:
    """The ``schema_version`` :func:`encode` gives ``event`` at ``write_version``."""
    for version in reversed(SHAPES[event.event_type]):
        if version <= write_version:
            return version
    raise ValueError(f"write version {write_version} is below every version of {event!r:.60}")


def encode(event: Event, write_version: int = DEFAULT_WRITE_VERSION) -> bytes:
    """The record value of ``event``, in its newest shape at or below ``write_version``."""
    shaped = as_written(event, write_version)
    body = {
        "event_type": event.event_type,
        "schema_version": schema_version_of(type(shaped)),
        **to_dict(shaped),
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


# -- decoding ------------------------------------------------------------------------------------

E = TypeVar("E")


def decode(data: bytes | None, *allowed: type[E]) -> E:
    """Decode one event of the ``allowed`` types, or raise :class:`InvalidEvent` saying why.

    Whatever the bytes, nothing else comes out of here but :class:`MemoryError` (the worker's
    trouble, not the record's): a record that makes the parser or a conversion raise anything
    is a poison pill, and one that escaped as another error would crash the agent, which
    Faust restarts past the record, dropping it.
    """
    try:
        return _decode(data, allowed)
    except (InvalidEvent, MemoryError, RecursionError):
        raise  # a RecursionError from json.loads is an InvalidEvent already; any other is ours
    except Exception as exc:  # the last line of defence, see above
        raise InvalidEvent(f"undecodable value ({type(exc).__name__}: {exc})"[:300]) from exc


def _decode(data: bytes | None, allowed: tuple[type[E], ...]) -> E:
    body = _json_object(data)
    event_type = body.get("event_type")
    cls = EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
    if cls is None or (allowed and cls not in allowed):
        raise InvalidEvent(f"unknown event_type {event_type!r:.80}")
    version = body.get("schema_version")
    if version == schema_version_of(cls) and type(version) is int:  # the usual case
        return typing.cast(E, _build(cls, body, ""))
    shape = _shape(cls, version)
    event = _build(shape, body, "")
    while type(event) is not cls:
        event = event.upcast()
    return typing.cast(E, event)


def _shape(cls: type[Any], version: Any) -> type[Any]:
    """The class of ``cls``'s shape at schema ``version``, or why there is none."""
    if type(version) is not int:  # True and 1.0 equal 1
        raise InvalidEvent(f"schema_version: expected an integer, got {version!r:.40}")
    shapes = SHAPES[cls.event_type]
    if version in shapes:
        return shapes[version]
    newest = max(shapes)
    if version > newest:
        # Written by a newer release at a write version this worker cannot read: it is kept as
        # a dead letter, to be replayed once this worker is upgraded (docs/schema-evolution.md).
        raise InvalidEvent(
            f"{cls.event_type} schema_version {version!r:.20} is newer than this worker reads "
            f"(1 to {newest}): upgrade the worker, then replay the dead letter"
        )
    raise InvalidEvent(f"{cls.event_type} has no schema_version {version!r:.20} (1 to {newest})")


def decode_order_event(data: bytes | None) -> OrderEvent:
    """Decode an ``orders.events`` record."""
    return decode(data, OrderCreated, OrderCancelled)  # type: ignore[return-value]


def decode_stats_updated(data: bytes | None) -> CustomerStatsUpdated:
    return decode(data, CustomerStatsUpdated)


_READERS: dict[Any, Callable[[Mapping[str, Any], str, str], Any]] = {}
_HINTS: dict[type[Any], list[tuple[str, Any, bool]]] = {}


def _hints(cls: type[Any]) -> list[tuple[str, Any, bool]]:
    found = _HINTS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = [
            (f.name, hints[f.name], f.default is not dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        ]
        _HINTS[cls] = found
    return found


def _build(cls: type[Any], body: Mapping[str, Any], prefix: str) -> Any:
    values = {}
    for name, hint, has_default in _hints(cls):
        if has_default and name not in body:
            continue
        values[name] = _read(hint, body, name, prefix)
    return cls(**values)


def _read(hint: Any, body: Mapping[str, Any], name: str, prefix: str) -> Any:
    optional = type(None) in typing.get_args(hint)
    if optional:
        if body.get(name) is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return _lines(body, name, prefix)
    if hint is Contact:
        return _object(hint, body, name, prefix)
    return _READERS[hint](body, name, prefix)


def _object(cls: type[Any], body: Mapping[str, Any], name: str, prefix: str) -> Any:
    raw = body.get(name)
    if not isinstance(raw, dict):
        raise InvalidEvent(f"{prefix}{name}: expected an object, got {raw!r:.80}")
    return _build(cls, raw, f"{prefix}{name}.")


def _lines(body: Mapping[str, Any], name: str, prefix: str) -> tuple[OrderLine, ...]:
    raw_items = body.get(name)
    if not isinstance(raw_items, list) or not raw_items:
        raise InvalidEvent(f"{prefix}{name}: expected a non-empty list")
    lines = []
    for i, raw in enumerate(raw_items):
        if not isinstance(raw, dict):
            raise InvalidEvent(f"{prefix}{name}[{i}]: expected an object")
        lines.append(_build(OrderLine, raw, f"{prefix}{name}[{i}]."))
    return tuple(lines)


def _json_object(data: bytes | None) -> dict[str, Any]:
    if data is None:
        raise InvalidEvent("empty record value")
    try:
        # UTF-8 and nothing else: ``json.loads`` of bytes would also take UTF-16 and UTF-32,
        # and encoded lone surrogates (it decodes with "surrogatepass").
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"value is not JSON: {exc}") from None
    try:
        body = json.loads(text, parse_float=Decimal)
    except RecursionError:
        # Raised inside the C scanner as it goes one level too deep; the stack is whole again
        # once the exception is out, so decoding the next record is safe.
        raise InvalidEvent("value is nested too deeply to be an event") from None
    except (ValueError, ArithmeticError) as exc:
        # JSONDecodeError, ValueError for an integer of more than 4,300 digits,
        # decimal.InvalidOperation for a number beyond Decimal's exponent range.
        raise InvalidEvent(f"value is not JSON we can read: {exc}"[:300]) from None
    if not isinstance(body, dict):
        raise InvalidEvent("value is not a JSON object")
    return body


T = TypeVar("T")


def _get(body: Mapping[str, Any], name: str, kind: type[T], prefix: str, what: str) -> T:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidEvent(f"{prefix}{name}: expected {what}, got {value!r:.80}")
    return value


def _str(body: Mapping[str, Any], name: str, prefix: str = "") -> str:
    value = _get(body, name, str, prefix, "a non-empty string")
    if not value:
        raise InvalidEvent(f"{prefix}{name}: expected a non-empty string")
    if not value.isascii():
        try:  # a "\ud800" escape decodes to a lone surrogate, which nothing can encode again
            value.encode()
        except UnicodeEncodeError:
            raise InvalidEvent(f"{prefix}{name}: {value!r:.40} is not valid Unicode") from None
    return value


# Integers fit in 64 bits: every consumer of the topics, in any language, can hold them.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _int(body: Mapping[str, Any], name: str, prefix: str = "") -> int:
    value = _get(body, name, int, prefix, "an integer")
    if not _INT_MIN <= value <= _INT_MAX:
        raise InvalidEvent(f"{prefix}{name}: a {value.bit_length()}-bit integer is over 64 bits")
    return value


# Money as ``money`` writes it: ASCII digits, an optional sign and at most two decimals. Up
# to 24 integer digits, so sums stay exact in Decimal's default 28-digit context. Decimal()
# itself takes far more: "1e999999999", "NaN", "1_000", Arabic-Indic digits, padding.
_AMOUNT = re.compile(r"-?[0-9]{1,24}(?:\.[0-9]{1,2})?")


def _decimal(body: Mapping[str, Any], name: str, prefix: str = "") -> Decimal:
    raw = _get(body, name, str, prefix, "a decimal string")
    if _AMOUNT.fullmatch(raw) is None:
        raise InvalidEvent(
            f"{prefix}{name}: {raw!r:.40} is not a decimal amount of money "
            "(digits, at most two decimals)"
        )
    return Decimal(raw)


# Kafka timestamps start at the epoch: an earlier event time could not place its record.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _time(body: Mapping[str, Any], name: str, prefix: str = "") -> datetime:
    raw = _get(body, name, str, prefix, "an ISO 8601 time")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidEvent(f"{prefix}{name}: {raw!r:.40} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise InvalidEvent(f"{prefix}{name}: {raw!r:.40} has no UTC offset")
    try:
        value = value.astimezone(UTC)  # OverflowError before year 1 or after 9999 in UTC
    except OverflowError:
        raise InvalidEvent(_out_of_range(prefix, name, raw)) from None
    if value < _EPOCH:
        raise InvalidEvent(_out_of_range(prefix, name, raw))
    return value


def _out_of_range(prefix: str, name: str, raw: str) -> str:
    return f"{prefix}{name}: {raw!r:.40} is out of range (1970 to 9999 in UTC)"


def _bool(body: Mapping[str, Any], name: str, prefix: str = "") -> bool:
    value = body.get(name)
    if not isinstance(value, bool):
        raise InvalidEvent(f"{prefix}{name}: expected true or false, got {value!r:.80}")
    return value


_READERS.update({str: _str, int: _int, Decimal: _decimal, datetime: _time, bool: _bool})
