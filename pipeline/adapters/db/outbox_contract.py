"""The outbox table as a published contract: a JSON Schema (draft 2020-12) of one row, derived
from the table's declaration in :mod:`pipeline.adapters.db.schema`.

The outbox is where other services integrate (a change-data-capture connector, another
relay): they read its rows, so its columns are as much a contract as the HTTP API. Each column
becomes a property typed by its SQL type (``String(n)`` a string of at most n characters,
times RFC 3339 strings, nullable ones also ``null``) and described below; a column without a
description fails the schema's unit test, so a new column is documented when it is added.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, String, Text

from pipeline.adapters.db.schema import UTCDateTime, outbox
from pipeline.domain.event_schemas import DRAFT, TIME
from pipeline.domain.outbox import DISCARDED, PARKED, PENDING, PUBLISHED

MEANINGS: dict[str, str] = {
    "id": "the row's sequence number; rows are published in commit order, not in id order",
    "event_id": "the event's UUID, also the Kafka record's `event_id` header: consumers "
    "dedupe by it",
    "aggregate_type": "what the event is about (`order` for the order service's rows; another "
    "service's own word, `event` by default)",
    "aggregate_id": "that aggregate's id (the order id), or empty",
    "partition_key": "the Kafka record's key (the customer id for orders): a key's events keep "
    "their order",
    "event_type": "the event's type; an order event's `payload` follows "
    "docs/schemas/events/<event_type>.json",
    "schema_version": "the payload's schema version",
    "payload": "the exact record value to publish: UTF-8 JSON of the event",
    "created_at": "when the event happened (the order's creation or cancellation)",
    "published_at": "when Kafka acknowledged the record; null until then",
    "status": f"`{PENDING}` until published, then `{PUBLISHED}`; `{PARKED}` when it proved "
    f"unpublishable (see `last_error`); `{DISCARDED}` when an operator threw it away",
    "attempts": "how many times publishing it failed",
    "last_error": "why the last attempt failed; null when none did",
    "topic": "the topic to publish to, without `PIPELINE_TOPIC_PREFIX`; null: `orders.events` "
    "(the order service's rows). Another service's rows name one `PIPELINE_OUTBOX_TOPICS` "
    "allows (docs/outbox.md)",
    "headers": "another service's extra Kafka headers, as a JSON array of `[name, value]` "
    "pairs; null when none",
}
_ENUMS: dict[str, list[str]] = {"status": [PENDING, PUBLISHED, PARKED, DISCARDED]}


def _column_schema(column: Column[Any]) -> dict[str, Any]:
    kind = column.type
    schema: dict[str, Any]
    if isinstance(kind, UTCDateTime) or kind.python_type is datetime:
        schema = {key: value for key, value in TIME.items() if key != "description"}
    elif kind.python_type is int:
        schema = {"type": "integer", "minimum": 1 if column.primary_key else 0}
    elif isinstance(kind, String | Text):
        schema = {"type": "string"}
        if isinstance(kind, String) and not isinstance(kind, Text) and kind.length:
            schema["maxLength"] = kind.length
    else:  # pragma: no cover - a new column type needs a mapping here
        raise TypeError(f"outbox.{column.name}: no JSON Schema for {kind!r}")
    if column.name in _ENUMS:
        schema["enum"] = _ENUMS[column.name]
    if column.nullable and not column.primary_key:
        schema["type"] = [schema["type"], "null"]
    schema["description"] = MEANINGS[column.name]
    if column.server_default is not None:
        schema["$comment"] = f"database default: {column.server_default.arg}"  # type: ignore[attr-defined]
    return schema


def outbox_row_schema() -> dict[str, Any]:
    """One row of the ``outbox`` table, as a reader of the table sees it."""
    columns = list(outbox.columns)
    return {
        "$schema": DRAFT,
        "$id": "outbox-row.json",
        "title": "outbox row",
        "description": "One row of the `outbox` table (PostgreSQL or SQLite), written in the "
        "same transaction as the order it records. Timestamps are UTC. A reader should ignore "
        "columns it does not know.",
        "type": "object",
        "properties": {c.name: _column_schema(c) for c in columns},
        "required": [c.name for c in columns if not c.nullable],
        "additionalProperties": True,
    }
