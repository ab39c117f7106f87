"""The HTTP API's published contract: one declaration of every route a worker serves, with its
request and response JSON schemas, rendered as an OpenAPI 3.1 document.

Every worker serves it at ``GET /openapi.json`` and ``docs/openapi.json`` is the same document
(``python -m pipeline contracts`` writes it; a unit test fails when the two differ). A unit
test also checks that the routes declared here are exactly the routes the worker registers,
and the Schemathesis test (tests/integration/test_openapi_contract.py) that a live worker
answers as declared. So a route, a field or an error code changes here, or the tests fail.

Errors have one shape everywhere: ``{"error": "<code>", "detail": ...}`` (``ERROR_CODES``).
Nothing here imports Faust: the document is built from plain data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.domain.audit import MAX_BY, MAX_REASON
from pipeline.domain.dead_letters import FILTER_FIELDS, MAX_LIST, MAX_TEXT, REASONS, STATUSES
from pipeline.domain.orders import (
    MAX_EMAIL_LENGTH,
    MAX_ID_LENGTH,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_PRICE_TEXT_LENGTH,
    MAX_QUANTITY,
    MAX_UNIT_PRICE,
    PRICE_TEXT_PATTERN,
)
from pipeline.domain.paging import MAX_KEY_CHARS, MAX_PAGE

API_VERSION = "1.0.0"
OPENAPI_PATH = "/openapi.json"

# Every "error" an answer may carry, with what it means. The one shape for all of them is
# ERROR below; views, the middleware and the forwarder's server answer nothing else.
ERROR_CODES: dict[str, str] = {
    "malformed_json": "400: the body is not JSON this service reads (syntax, not UTF-8, "
    "nesting too deep, a number too large)",
    "malformed_body": "400: the body cannot be read (e.g. broken compression)",
    "bad_request": "400 (or another 4xx without a code of its own): the request cannot be "
    "taken as sent",
    "unauthorized": "401: the endpoint needs `Authorization: Bearer <token>`",
    "not_found": "404: no such route, or no such order, customer, SKU",
    "method_not_allowed": "405: the route does not take this method (see the `Allow` header)",
    "body_timeout": "408: the body did not all arrive in time",
    "conflict": "409: the order is already cancelled or rejected",
    "idempotency_key_reused": "409: the same `Idempotency-Key` with a different body",
    "body_too_large": "413: the body is over `PIPELINE_MAX_BODY_BYTES`",
    "validation_failed": "422: fields at fault; `detail` lists each `{field, message}`",
    "internal_error": "500: a bug; the detail says nothing of its internals",
    "kafka_refused": "500: Kafka refused the record for good; an operator must fix it",
    "database_unavailable": "503: the database is unavailable; retry after `Retry-After`",
    "kafka_unavailable": "503: Kafka did not take the record in time; retry after `Retry-After`",
    "rebalancing": "503: partitions are moving; retry after `Retry-After`",
    "owner_unavailable": "503: the worker owning the key did not answer; retry shortly",
}

_MONEY = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]{2}$", "examples": ["20.50"]}
_TIME = {"type": "string", "format": "date-time"}
_PRINTABLE = r"^[^\u0000-\u001f\u007f]+$"
_TEXT_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_LENGTH,
    "pattern": _PRINTABLE,
    "description": f"1 to {MAX_ID_LENGTH} printable characters, stored verbatim",
}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None, *,
         closed: bool = False, description: str | None = None) -> dict[str, Any]:  # fmt: skip
    schema: dict[str, Any] = {"type": "object"}
    if description:
        schema["description"] = description
    schema["properties"] = {**required, **(optional or {})}
    schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


FIELD_ERROR = _obj({"field": {"type": "string"}, "message": {"type": "string"}})
ERROR = _obj(
    {
        "error": {"type": "string", "enum": list(ERROR_CODES)},
        "detail": {"anyOf": [{"type": "string"}, {"type": "array", "items": _ref("FieldError")}]},
    },
    closed=True,
    description="Every error answer. `detail` is a sentence, or for `validation_failed` the "
    "list of fields at fault. Codes: "
    + "; ".join(f"`{code}` ({meaning})" for code, meaning in ERROR_CODES.items()),
)
ORDER_LINE_IN = _obj(
    {
        "sku": _TEXT_ID,
        "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY},
        "unit_price": {
            "anyOf": [
                {
                    "type": "string",
                    "pattern": f"^{PRICE_TEXT_PATTERN}$",
                    "maxLength": MAX_PRICE_TEXT_LENGTH,
                },
                {"type": "number", "minimum": 0, "maximum": float(MAX_UNIT_PRICE)},
            ],
            "description": f"a decimal string (or JSON number) from 0 to {MAX_UNIT_PRICE}, at "
            "most two decimals",
        },
    },
    closed=True,
)
ORDER_LINE = _obj({"sku": {"type": "string"}, "quantity": {"type": "integer"},
                   "unit_price": _MONEY})  # fmt: skip
NEW_ORDER = _obj(
    {
        "customer_id": _TEXT_ID,
        "customer_email": {
            "type": "string",
            "maxLength": MAX_EMAIL_LENGTH,
            "pattern": r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "items": _ref("OrderLineIn"),
            "description": "1 to `PIPELINE_MAX_ORDER_ITEMS` (100 by default) items",
        },
    },
    closed=True,
    description="The order's total may not exceed 9999999999.99.",
)
ORDER_STATUS = {"type": "string", "enum": ["created", "confirmed", "rejected", "cancelled"]}
ORDER = _obj(
    {
        "order_id": {"type": "string"},
        "customer_id": {"type": "string"},
        "customer_email": {"type": "string"},
        "status": ORDER_STATUS,
        "total": _MONEY,
        "created_at": _TIME,
        "updated_at": _TIME,
        "items": {"type": "array", "items": _ref("OrderLine")},
    }
)
ORDER_CREATED = _obj({"order_id": {"type": "string"}, "status": {"const": "created"},
                      "total": _MONEY})  # fmt: skip
ORDER_CANCELLED = _obj({"order_id": {"type": "string"}, "status": {"const": "cancelled"}})
CUSTOMER_STATS = _obj(
    {
        "customer_id": {"type": "string"},
        "order_count": {"type": "integer", "minimum": 0},
        "cancelled_count": {"type": "integer", "minimum": 0},
        "total_spent": _MONEY,
        "average_order_value": _MONEY,
        "first_order_at": {"type": ["string", "null"], "format": "date-time"},
        "last_order_at": {"type": ["string", "null"], "format": "date-time"},
    }
)
STOCK = _obj({"sku": {"type": "string"}, "available": {"type": "integer"},
              "reserved": {"type": "integer"}})  # fmt: skip
STOCK_SET = _obj({"available": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000}},
                 closed=True)  # fmt: skip
STOCK_SET_ACCEPTED = _obj({"sku": {"type": "string"}, "available": {"type": "integer"},
                           "status": {"const": "accepted"}})  # fmt: skip
REVENUE = _obj(
    {
        "windows": {
            "type": "array",
            "items": _obj(
                {
                    "window_start": _TIME,
                    "window_end": _TIME,
                    "revenue": _MONEY,
                    "orders": {"type": "integer"},
                }
            ),
        }
    }
)
_BYTES = {
    "anyOf": [{"type": "string"}, {"type": "null"}, _obj({"base64": {"type": "string"}})],
    "description": 'text when the bytes are UTF-8, else `{"base64": ...}`',
}
_NULLABLE_TEXT = {"type": ["string", "null"]}
DEAD_LETTER = _obj(
    {
        "id": {"type": "string"},
        "agent": {"type": "string"},
        "reason": {"type": "string", "enum": list(REASONS)},
        "error_type": _NULLABLE_TEXT,
        "error_message": _NULLABLE_TEXT,
        "event_id": _NULLABLE_TEXT,
        "event_type": _NULLABLE_TEXT,
        "original": _obj(
            {
                "topic": {"type": "string"},
                "partition": {"type": "integer"},
                "offset": {"type": "integer"},
                "timestamp": {"type": ["number", "null"]},
            }
        ),
        "attempts": {"type": "integer"},
        "replays": {"type": "integer"},
        "first_failure_at": _TIME,
        "dead_lettered_at": _TIME,
        "status": {"type": "string", "enum": list(STATUSES)},
        "key": _BYTES,
        "value": _BYTES,
        "stacktrace": _NULLABLE_TEXT,
        "headers": {"type": "object", "additionalProperties": _BYTES},
    }
)
_LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_LIST}
_FILTER_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": _PRINTABLE}
_FILTER_VALUES: dict[str, Any] = {
    "agent": _FILTER_TEXT,
    "error_type": _FILTER_TEXT,
    "reason": {"type": "string", "enum": list(REASONS)},
    "status": {"type": "string", "enum": list(STATUSES)},
    "event_id": _FILTER_TEXT,
    "since": {**_TIME, "description": "ISO 8601; within years 1 to 9999 in UTC"},
    "until": {**_TIME, "description": "ISO 8601; within years 1 to 9999 in UTC"},
    "limit": _LIMIT,
}
assert set(_FILTER_VALUES) == set(FILTER_FIELDS), "a dead-letter filter field is undeclared"
REPLAY_REQUEST = _obj(
    {},
    {
        "ids": {"type": "array", "items": _FILTER_TEXT, "minItems": 1, "maxItems": MAX_LIST},
        "all": {"type": "boolean"},
        **{k: v for k, v in _FILTER_VALUES.items() if k != "status"},
    },
    closed=True,
    description='One selection: `ids`, `event_id`, a filter, or `{"all": true}`; an empty '
    "selection is `422`.",
)
REPLAY_RESULT = _obj(
    {
        "replayed": {"type": "array", "items": {"type": "string"}},
        "refused": {"type": "array", "items": _obj({"id": {"type": "string"},
                                                    "reason": {"type": "string"}})},
    }
)  # fmt: skip
RECONCILE_REPORT = _obj(
    {
        "ok": {"type": "boolean"},
        "checked": {"type": "object", "additionalProperties": {"type": "integer"}},
        "differences": {
            "type": "array",
            "items": _obj(
                {
                    "kind": {"type": "string"},
                    "key": {"type": "string"},
                    "expected": {},
                    "actual": {},
                }
            ),
        },
    }
)
DASHBOARD_FIGURES = _obj(
    {"generated_at": _TIME, "served_by": {"type": "string"},
     "refresh_seconds": {"type": "number"}},
    description="The dashboard's figures for the whole cluster (see docs/operations.md).",
)  # fmt: skip
WORKER_SNAPSHOT = {"type": "object", "description": "This worker's share of the dashboard."}
PROBE = _obj({"status": {"type": "string"}})
READINESS = _obj(
    {"status": {"type": "string", "enum": ["ready", "unavailable"]}},
    {"failed": {"type": "array", "items": {"type": "string"}},
     "checks": {"type": "object", "additionalProperties": {"type": "string"}}},
    description="Each check (`database`, `kafka`, `services`): `ok`, or what failed",
)  # fmt: skip

# The operator's verbs and the paged lists (pipeline.web.admin).
_NEXT_TEXT = {"type": ["string", "null"], "description": "the next page's cursor; null: last"}
_ROW_IDS = {"type": "array", "minItems": 1, "maxItems": MAX_PAGE,
            "items": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}}  # fmt: skip
_WHY = {"type": "string", "minLength": 1, "maxLength": MAX_REASON, "pattern": r"\S",
        "description": "why (recorded in `operator_actions`)"}  # fmt: skip
_BY = {"type": "string", "minLength": 1, "maxLength": MAX_BY, "pattern": r"\S",
       "description": "who asks (default: `http:<client address>`)"}  # fmt: skip
PARKED_ROW = _obj(
    {"id": {"type": "integer"}, "event_id": {"type": "string"}, "event_type": {"type": "string"},
     "topic": {"type": "string"}, "key": {"type": "string"}, "created_at": _TIME,
     "age_seconds": {"type": "number"}, "attempts": {"type": "integer"},
     "parked_reason": _NULLABLE_TEXT}
)  # fmt: skip
PARKED_ROWS = _obj({"parked": {"type": "array", "items": _ref("ParkedRow")},
                    "next": {"type": ["integer", "null"]}})  # fmt: skip
REQUEUE_REQUEST = _obj(
    {},
    {"ids": _ROW_IDS, "all": {"type": "boolean"}, "out_of_order": {"type": "boolean"},
     "why": _WHY, "by": _BY},
    closed=True, description='`ids` or `"all": true`; an empty request is `422`.',
)  # fmt: skip
OUTBOX_DISCARD_REQUEST = _obj({"ids": _ROW_IDS, "why": _WHY}, {"by": _BY}, closed=True)


def _settled(verb: str, id_type: str) -> dict[str, Any]:
    refusal = _obj({"id": {"type": id_type}, "reason": {"type": "string"}})
    return _obj({verb: {"type": "array", "items": {"type": id_type}},
                 "refused": {"type": "array", "items": refusal}})  # fmt: skip


DEAD_LETTER_DISCARD_REQUEST = {
    **REPLAY_REQUEST,
    "properties": {**REPLAY_REQUEST["properties"], "why": _WHY, "by": _BY},
    "required": ["why"],
    "description": "The selection replay takes, and why.",
}
CUSTOMER_ORDERS = _obj(
    {"customer_id": {"type": "string"},
     "orders": {"type": "array", "items": _obj(
         {"order_id": {"type": "string"}, "status": ORDER_STATUS, "total": _MONEY,
          "created_at": _TIME, "updated_at": _TIME})},
     "next": _NEXT_TEXT}
)  # fmt: skip
INVENTORY_PAGE = _obj({"skus": {"type": "array", "items": _ref("Stock")}, "next": _NEXT_TEXT})
WORKER_INVENTORY = _obj({"partitions": {"type": "array", "items": {"type": "integer"}},
                         "skus": {"type": "array", "items": _ref("Stock")}})  # fmt: skip
_PAGE_LIMIT = {"name": "limit", "in": "query", "required": False,
               "description": "items per page (default 100)",
               "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}}  # fmt: skip
_SKU_AFTER = {"name": "after", "in": "query", "required": False,
              "description": "the previous page's `next`",
              "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS,
                         "pattern": _PRINTABLE}}  # fmt: skip

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": ERROR,
    "FieldError": FIELD_ERROR,
    "NewOrder": NEW_ORDER,
    "OrderLineIn": ORDER_LINE_IN,
    "OrderLine": ORDER_LINE,
    "OrderCreated": ORDER_CREATED,
    "OrderCancelled": ORDER_CANCELLED,
    "Order": ORDER,
    "CustomerStats": CUSTOMER_STATS,
    "Stock": STOCK,
    "StockSet": STOCK_SET,
    "StockSetAccepted": STOCK_SET_ACCEPTED,
    "Revenue": REVENUE,
    "DeadLetter": DEAD_LETTER,
    "DeadLetters": _obj({"dead_letters": {"type": "array", "items": _ref("DeadLetter")}}),
    "ReplayRequest": REPLAY_REQUEST,
    "ReplayResult": REPLAY_RESULT,
    "ReconcileReport": RECONCILE_REPORT,
    "DashboardFigures": DASHBOARD_FIGURES,
    "WorkerSnapshot": WORKER_SNAPSHOT,
    "Probe": PROBE,
    "Readiness": READINESS,
    "ParkedRow": PARKED_ROW,
    "ParkedRows": PARKED_ROWS,
    "RequeueRequest": REQUEUE_REQUEST,
    "RequeueResult": _settled("requeued", "integer"),
    "OutboxDiscardRequest": OUTBOX_DISCARD_REQUEST,
    "OutboxDiscardResult": _settled("discarded", "integer"),
    "DeadLetterDiscardRequest": DEAD_LETTER_DISCARD_REQUEST,
    "DeadLetterDiscardResult": _settled("discarded", "string"),
    "CustomerOrders": CUSTOMER_ORDERS,
    "InventoryPage": INVENTORY_PAGE,
    "WorkerInventory": WORKER_INVENTORY,
}

# The error answers, by status: which codes each may carry.
_ERRORS_BY_STATUS: dict[int, tuple[str, list[str]]] = {
    400: ("The body cannot be read as JSON", ["malformed_json", "malformed_body"]),
    401: ("The bearer token is missing or wrong", ["unauthorized"]),
    404: ("Not found", ["not_found"]),
    408: ("The body did not arrive in time", ["body_timeout"]),
    409: ("Conflict", ["conflict", "idempotency_key_reused"]),
    413: ("The body is over the limit", ["body_too_large"]),
    422: ("Invalid fields, each named", ["validation_failed"]),
    500: ("Kafka refused the record for good", ["kafka_refused"]),
    503: ("Unavailable for now; retry after `Retry-After`",
          ["database_unavailable", "kafka_unavailable", "rebalancing", "owner_unavailable"]),
}  # fmt: skip
# Reads of table state: partitions moving, or the key's owner not answering.
_ROUTED = ["rebalancing", "owner_unavailable"]


@dataclass(frozen=True)
class Route:
    """One operation: ``method`` on ``path`` and every answer it may give."""

    method: str
    path: str
    summary: str
    ok: dict[int, tuple[str, str, dict[str, Any] | None]]  # status: (description, type, schema)
    errors: tuple[int, ...] = ()
    codes: dict[int, list[str]] = field(default_factory=dict)  # the status' codes, narrowed
    token: bool = False
    body: str | None = None  # the request body's schema name
    parameters: list[dict[str, Any]] = field(default_factory=list)
    tag: str = "orders"

    @property
    def operation_id(self) -> str:
        words = [w.strip("{}") for w in self.path.strip("/").replace(".", "/").split("/")]
        return "_".join([self.method, *(w.replace("-", "_") for w in words if w)])


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}}  # fmt: skip


def _json(name: str) -> tuple[str, dict[str, Any]]:
    return "application/json", _ref(name)


ROUTES: tuple[Route, ...] = (
    Route("post", "/orders", "Place an order (order, items and outbox event in one transaction)",
          {201: ("Created; also the replay of a known `Idempotency-Key` "
                 "(with `Idempotent-Replayed: true`)", *_json("OrderCreated"))},
          errors=(400, 401, 408, 409, 413, 422, 503), token=True, body="NewOrder",
          codes={409: ["idempotency_key_reused"], 503: ["database_unavailable"]},
          parameters=[{"name": "Idempotency-Key", "in": "header", "required": False,
                       "description": "the same key and body answer the first response again",
                       "schema": {"type": "string", "minLength": 1,
                                  "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
                                  "pattern": _PRINTABLE}}]),
    Route("post", "/orders/{order_id}/cancel", "Cancel an order",
          {200: ("Cancelled", *_json("OrderCancelled"))}, errors=(401, 404, 409, 503), token=True,
          codes={409: ["conflict"], 503: ["database_unavailable"]},
          parameters=[_path_param("order_id", "the order's id")]),
    Route("get", "/orders/{order_id}", "An order, its items and its status",
          {200: ("The order", *_json("Order"))}, errors=(401, 404, 503), token=True,
          codes={503: ["database_unavailable"]},
          parameters=[_path_param("order_id", "the order's id")]),
    Route("get", "/customers/{customer_id}/stats", "A customer's figures (from its owner)",
          {200: ("The figures", *_json("CustomerStats"))}, errors=(401, 404, 503), token=True,
          codes={503: _ROUTED},
          parameters=[_path_param("customer_id", "the customer's id")], tag="tables"),
    Route("get", "/inventory/{sku}", "A SKU's stock (from its owner)",
          {200: ("The stock", *_json("Stock"))}, errors=(404, 503), codes={503: _ROUTED},
          parameters=[_path_param("sku", "the SKU")], tag="tables"),
    Route("put", "/inventory/{sku}", "Set the units available of a SKU",
          {202: ("Accepted: applied by the SKU's owner in order with reservations",
                 *_json("StockSetAccepted"))},
          errors=(400, 401, 408, 413, 422, 500, 503), token=True, body="StockSet",
          codes={503: ["kafka_unavailable"]},
          parameters=[{**_path_param("sku", "the SKU"), "schema": _TEXT_ID}],
          tag="tables"),
    Route("get", "/analytics/revenue", "Recent revenue windows, newest first",
          {200: ("The windows", *_json("Revenue"))}, errors=(401, 503), token=True, tag="tables",
          codes={503: _ROUTED}),
    Route("get", "/dead-letters", "Dead letters, oldest first",
          {200: ("The dead letters", *_json("DeadLetters"))}, errors=(401, 422, 503), token=True,
          codes={503: ["database_unavailable"]},
          parameters=[{"name": k, "in": "query", "required": False, "schema": v}
                      for k, v in _FILTER_VALUES.items()], tag="dead letters"),
    Route("post", "/dead-letters/replay", "Replay dead letters through the agent that failed them",
          {200: ("What was replayed and what was refused, with why", *_json("ReplayResult"))},
          errors=(400, 401, 408, 413, 422, 500, 503), token=True, body="ReplayRequest",
          codes={503: ["database_unavailable", "kafka_unavailable"]},
          tag="dead letters"),
    Route("get", "/admin/reconcile", "The database against the tables, the outbox and Kafka",
          {200: ("The differences found", *_json("ReconcileReport"))}, errors=(401, 422, 503),
          codes={503: ["database_unavailable"]},
          token=True, tag="admin",
          parameters=[{"name": "kafka", "in": "query", "required": False,
                       "description": "`false` skips scanning `orders.events` (default `true`)",
                       "schema": {"type": "string", "enum": ["true", "false"]}}]),
    Route("post", "/dead-letters/discard", "Discard dead letters: never replayed, not open",
          {200: ("What was discarded and what was refused, with why",
                 *_json("DeadLetterDiscardResult"))},
          errors=(400, 401, 408, 413, 422, 503), token=True, body="DeadLetterDiscardRequest",
          codes={503: ["database_unavailable"]}, tag="dead letters"),
    Route("get", "/admin/outbox/parked", "Parked outbox rows by id, with why each was parked",
          {200: ("A page of parked rows", *_json("ParkedRows"))}, errors=(401, 422, 503),
          codes={503: ["database_unavailable"]}, token=True, tag="admin",
          parameters=[{"name": "after", "in": "query", "required": False,
                       "description": "the previous page's `next`",
                       "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}},
                      _PAGE_LIMIT]),
    Route("post", "/admin/outbox/requeue", "Put parked outbox rows back, to be published once",
          {200: ("What was requeued and what was refused, with why", *_json("RequeueResult"))},
          errors=(400, 401, 408, 413, 422, 503), token=True, body="RequeueRequest",
          codes={503: ["database_unavailable"]}, tag="admin"),
    Route("post", "/admin/outbox/discard", "Discard parked outbox rows: never published",
          {200: ("What was discarded and what was refused, with why",
                 *_json("OutboxDiscardResult"))},
          errors=(400, 401, 408, 413, 422, 503), token=True, body="OutboxDiscardRequest",
          codes={503: ["database_unavailable"]}, tag="admin"),
    Route("get", "/customers/{customer_id}/orders", "A customer's orders, newest first",
          {200: ("A page of orders", *_json("CustomerOrders"))}, errors=(401, 422, 503),
          codes={503: ["database_unavailable"]}, token=True,
          parameters=[_path_param("customer_id", "the customer's id"),
                      {"name": "before", "in": "query", "required": False,
                       "description": "the previous page's `next`",
                       "schema": {"type": "string", "minLength": 1, "maxLength": 200}},
                      _PAGE_LIMIT]),
    Route("get", "/inventory", "Every SKU with its stock, in SKU order, from every worker",
          {200: ("A page of SKUs", *_json("InventoryPage"))}, errors=(401, 422, 503),
          codes={503: _ROUTED}, token=True, tag="tables", parameters=[_SKU_AFTER, _PAGE_LIMIT]),
    Route("get", "/worker/inventory", "This worker's share of `GET /inventory`",
          {200: ("The SKUs of the stock partitions this worker owns",
                 *_json("WorkerInventory"))}, errors=(401, 422, 503),
          codes={503: ["rebalancing"]}, token=True, tag="tables",
          parameters=[_SKU_AFTER, _PAGE_LIMIT]),
    Route("get", "/livez", "Liveness: the process and its event loop answer",
          {200: ("Alive", *_json("Probe"))}, tag="probes"),
    Route("get", "/healthz", "Liveness (`/livez` under its older name)",
          {200: ("Alive", *_json("Probe"))}, tag="probes"),
    Route("get", "/readyz", "Readiness for traffic: the database and Kafka answer, services "
          "started; not affected by rebalances",
          {200: ("Ready", *_json("Readiness")),
           503: ("Not ready (with `Retry-After`): `failed` names what", *_json("Readiness"))},
          tag="probes"),
    Route("get", "/readyz/tables", "Table readiness: partitions assigned, tables recovered",
          {200: ("Ready", *_json("Probe")),
           503: ("Not yet (with `Retry-After`)", *_json("Probe"))}, tag="probes"),
    Route("get", "/metrics", "Prometheus metrics",
          {200: ("Prometheus text format", "text/plain", {"type": "string"})}, tag="probes"),
    Route("get", "/dashboard", "The live dashboard page (holds no figures)",
          {200: ("The page", "text/html", {"type": "string"})}, tag="dashboard"),
    Route("get", "/dashboard/data", "The dashboard's figures for the whole cluster",
          {200: ("The figures", *_json("DashboardFigures"))}, errors=(401,), token=True,
          tag="dashboard"),
    Route("get", "/dashboard/worker", "This worker's share of the dashboard's figures",
          {200: ("This worker's snapshot", *_json("WorkerSnapshot"))}, errors=(401,), token=True,
          tag="dashboard"),
    Route("get", OPENAPI_PATH, "This document",
          {200: ("The OpenAPI document", "application/json", {"type": "object"})}, tag="probes"),
)  # fmt: skip


def _error_response(status: int, only: list[str] | None = None) -> dict[str, Any]:
    description, codes = _ERRORS_BY_STATUS[status]
    if only is not None:
        assert set(only) <= set(codes), f"{only} are not {status} codes"
        codes = only
    schema = {"allOf": [_ref("Error"),
                        {"properties": {"error": {"enum": codes}}}]}  # fmt: skip
    response: dict[str, Any] = {
        "description": f"{description}: " + ", ".join(f"`{c}`" for c in codes),
        "content": {"application/json": {"schema": schema}},
    }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    if status == 503:
        response["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
    return response


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary,
                          "tags": [route.tag]}  # fmt: skip
    if route.parameters:
        op["parameters"] = route.parameters
    if route.body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
    responses: dict[str, Any] = {}
    for status, (description, media, schema) in route.ok.items():
        content = {media: {"schema": schema}} if schema is not None else {}
        responses[str(status)] = {"description": description, "content": content}
    for status in route.errors:
        responses[str(status)] = _error_response(status, route.codes.get(status))
    op["responses"] = dict(sorted(responses.items()))
    op["security"] = [{"bearerToken": []}] if route.token else []
    return op


def openapi_document() -> dict[str, Any]:
    """The whole API as an OpenAPI 3.1 document (plain JSON values)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "orders-pipeline",
            "version": API_VERSION,
            "description": (
                "The order-event pipeline's HTTP API, served whole by every worker; reads of "
                "table state are routed to the worker owning the key. Bodies are JSON. Every "
                'error is `{"error": "<code>", "detail": ...}` (schema `Error`), including '
                "unknown routes (`404 not_found`), wrong methods (`405 method_not_allowed`) and "
                "bugs (`500 internal_error`). When `PIPELINE_API_TOKEN` is set, the operations "
                "with the `bearerToken` requirement need `Authorization: Bearer <token>`; "
                "without a token configured they are open. See docs/http-api.md."
            ),
        },
        "servers": [{"url": "http://127.0.0.1:6066", "description": "a local worker"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                "NotFound": _error_response(404),
                "MethodNotAllowed": {
                    "description": "The route does not take this method: `method_not_allowed`",
                    "headers": {"Allow": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": _ref("Error")}},
                },
                "InternalError": {
                    "description": "A bug: `internal_error`",
                    "content": {"application/json": {"schema": _ref("Error")}},
                },
            },
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`PIPELINE_API_TOKEN`, when one is set",
                }
            },
        },
    }


def render() -> str:
    """The document as ``docs/openapi.json`` holds it."""
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"
