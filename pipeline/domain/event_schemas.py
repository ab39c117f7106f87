"""JSON Schemas (draft 2020-12) of the events on the topics, derived from their declarations in
:mod:`pipeline.domain.events`, so that a field added there is in the schema the next time it is
generated (``python -m pipeline contracts``; a unit test fails while docs/schemas/ is stale).

Each schema says what the encoder writes and the decoder reads: the required fields are the
ones without a default (a record written before a defaulted field existed still decodes), and
each value is constrained as the decoder checks it (non-empty text, 64-bit integers, money as a
string with at most two decimals, times as RFC 3339 with their offset). Objects allow
properties the schema does not name: readers ignore what they do not know (a tolerant reader),
so a producer may add a field without breaking them.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.domain.events import (
    EVENT_TYPES,
    SHAPES,
    CustomerStatsUpdated,
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    LineReleaseRequested,
    LineReservationRequested,
    LineSettled,
    MilestoneReached,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderLine,
    OrderRejected,
    RevenueRecorded,
    StockSet,
)

DRAFT = "https://json-schema.org/draft/2020-12/schema"

# Where each event travels, and what its record's key is.
TOPICS: dict[type[Any], tuple[str, str]] = {
    OrderCreated: ("orders.events", "the customer id"),
    OrderCancelled: ("orders.events", "the customer id"),
    LineReservationRequested: ("inventory.commands", "the SKU"),
    LineReleaseRequested: ("inventory.commands", "the SKU"),
    LineSettled: ("inventory.commands", "the SKU"),
    StockSet: ("inventory.commands", "the SKU"),
    InventoryReserved: ("inventory.events", "the order id"),
    InventoryRejected: ("inventory.events", "the order id"),
    InventoryReleased: ("inventory.events", "the order id"),
    OrderConfirmed: ("orders.status", "the order id"),
    OrderRejected: ("orders.status", "the order id"),
    CustomerStatsUpdated: ("analytics.events", "the customer id"),
    MilestoneReached: ("analytics.events", "the customer id"),
    RevenueRecorded: ("analytics.revenue", "the revenue key (one partition)"),
}

INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
TEXT = {"type": "string", "minLength": 1}
MONEY = {
    "type": "string",
    "pattern": r"^-?[0-9]{1,24}(\.[0-9]{1,2})?$",
    "description": "exact money: digits with at most two decimals (written with two)",
}
TIME = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$",
    "description": "ISO 8601 with its UTC offset, from 1970 to 9999 in UTC",
}
_SCALARS: dict[Any, dict[str, Any]] = {
    str: TEXT,
    int: INT64,
    Decimal: MONEY,
    datetime: TIME,
    bool: {"type": "boolean"},
}


def _value_schema(hint: Any) -> dict[str, Any]:
    args = typing.get_args(hint)
    if type(None) in args:
        (inner,) = (a for a in args if a is not type(None))
        schema = dict(_value_schema(inner))
        schema["type"] = [schema["type"], "null"]
        return schema
    if typing.get_origin(hint) is tuple and args[0] is OrderLine:
        return {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/OrderLine"}}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        properties, required = _fields(hint)
        return {"type": "object", "properties": properties, "required": required,
                "additionalProperties": True}  # fmt: skip
    if hint not in _SCALARS:
        raise TypeError(f"no JSON Schema for a field of type {hint!r}")
    return dict(_SCALARS[hint])


def _fields(cls: type[Any]) -> tuple[dict[str, Any], list[str]]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        schema = _value_schema(hints[f.name])
        if f.default is not dataclasses.MISSING:
            schema["default"] = f.default
        else:
            required.append(f.name)
        properties[f.name] = schema
    return properties, required


def _uses_lines(cls: type[Any]) -> bool:
    return any(typing.get_origin(h) is tuple for h in typing.get_type_hints(cls).values())


def _shape(shape: type[Any], version: int) -> dict[str, Any]:
    """One shape (schema version) of an event type's record value."""
    properties, required = _fields(shape)
    return {
        "type": "object",
        "properties": {
            "event_type": {"const": shape.event_type},
            "schema_version": {"const": version},
            **properties,
        },
        "required": ["event_type", "schema_version", *required],
        "additionalProperties": True,
    }


def event_schema(cls: type[Any]) -> dict[str, Any]:
    """The schema of one event type's record value: every shape a reader takes (an earlier
    version is upcast on reading: docs/schema-evolution.md), one of them per record."""
    topic, key = TOPICS[cls]
    shapes = SHAPES[cls.event_type]
    versions = ", ".join(str(v) for v in shapes)
    schema: dict[str, Any] = {
        "$schema": DRAFT,
        "$id": f"{cls.event_type}.json",
        "title": cls.event_type,
        "description": f"The value of a {cls.event_type} record on `{topic}` (key: {key}), "
        f"UTF-8 JSON, schema version {versions}. Readers ignore properties they do not know.",
    }
    if len(shapes) == 1:
        ((version, shape),) = shapes.items()
        schema.update(_shape(shape, version))
    else:
        schema["oneOf"] = [_shape(shape, version) for version, shape in shapes.items()]
    if _uses_lines(cls):
        line_properties, line_required = _fields(OrderLine)
        schema["$defs"] = {
            "OrderLine": {
                "type": "object",
                "properties": line_properties,
                "required": line_required,
                "additionalProperties": True,
            }
        }
    return schema


def event_schemas() -> dict[str, dict[str, Any]]:
    """Every event type's schema, by event type."""
    return {name: event_schema(cls) for name, cls in sorted(EVENT_TYPES.items())}
