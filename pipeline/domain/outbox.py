"""An outbox row as the forwarder sees it, the states a row goes through, and the rules an
event from another service must meet to become a row.

A row is ``pending`` from the commit of its writer's transaction until Kafka acknowledged it
(``published``), or until it proves unpublishable (``parked``, with the error that says why).

The order service's rows go to ``orders.events`` (their ``topic`` is NULL). Any other service
sharing the database writes rows with a topic of its own through
``pipeline.adapters.db.outbox.OutboxWriter``, which builds them with :func:`outbox_event`: the
topic must be one the forwarder is allowed to publish to (:class:`OutboxTopics`, from
``PIPELINE_OUTBOX_TOPICS``), and every field fits its column, so a bad event fails in the
writer's own transaction, never later in the forwarder.

An operator may put a parked row back (``pending`` again: :func:`parse_requeue_request`) or
throw it away (``discarded``, never published: :func:`parse_discard_request`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.domain.audit import parse_audit
from pipeline.domain.paging import MAX_PAGE, BadRequest, json_object

PENDING, PUBLISHED, PARKED, DISCARDED = "pending", "published", "parked", "discarded"
MAX_ERROR_LENGTH = 2000

# The columns' sizes (pipeline.adapters.db.schema.outbox) and Kafka's topic name rule.
MAX_TOPIC_LENGTH = 249
MAX_KEY_LENGTH = 64
MAX_EVENT_TYPE_LENGTH = 64
MAX_AGGREGATE_TYPE_LENGTH = 32
MAX_AGGREGATE_ID_LENGTH = 36
MAX_HEADERS = 16
MAX_HEADER_NAME_LENGTH = 64
MAX_HEADERS_BYTES = 4096
# The forwarder sets these from the row's own columns; a caller's would be ambiguous.
RESERVED_HEADERS = frozenset({"event_id", "event_type", "schema_version"})
_TOPIC = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class PendingRow:
    id: int
    event_id: str
    partition_key: str
    event_type: str
    schema_version: int
    payload: bytes
    created_at: datetime
    topic: str | None = None  # None: the order events' topic
    headers: tuple[tuple[str, bytes], ...] = ()


class InvalidOutboxEvent(ValueError):
    """An event that cannot become an outbox row; ``field`` names the argument at fault."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def check_topic_name(field: str, name: str) -> str:
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise InvalidOutboxEvent(field, "must be a non-empty topic name")
    if len(name) > MAX_TOPIC_LENGTH or not _TOPIC.fullmatch(name):
        raise InvalidOutboxEvent(
            field, f"{name!r} is not a Kafka topic name (letters, digits, '.', '_', '-'; at "
            f"most {MAX_TOPIC_LENGTH})",
        )  # fmt: skip
    return name


@dataclass(frozen=True, slots=True)
class OutboxTopics:
    """The topics the forwarder may publish other services' rows to: exact names, and
    prefixes (a pattern ending in ``*``). Full names, the deployment's topic prefix included."""

    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def from_patterns(cls, patterns: Iterable[str], topic_prefix: str = "") -> OutboxTopics:
        """``patterns`` as ``PIPELINE_OUTBOX_TOPICS`` spells them (``payments.events``,
        ``payments.*``), each under ``topic_prefix``."""
        names, prefixes = set(), []
        for pattern in patterns:
            if pattern.endswith("*"):
                prefixes.append(topic_prefix + pattern[:-1])
            else:
                names.add(topic_prefix + pattern)
        return cls(frozenset(names), tuple(prefixes))

    def allows(self, topic: str) -> bool:
        return topic in self.names or any(
            topic.startswith(prefix) and len(topic) > len(prefix) for prefix in self.prefixes
        )

    def described(self) -> str:
        shown = sorted(self.names) + [f"{p}*" for p in self.prefixes]
        return ", ".join(shown) if shown else "none (PIPELINE_OUTBOX_TOPICS is empty)"


def check_topic_pattern(pattern: str) -> str:
    """A ``PIPELINE_OUTBOX_TOPICS`` entry: a topic name, or a prefix followed by ``*``."""
    check_topic_name("pattern", pattern.removesuffix("*"))
    return pattern


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event of another service, ready to be an outbox row: use :func:`outbox_event`."""

    topic: str  # the full topic name
    key: str
    value: str  # UTF-8 text, published as its bytes
    event_type: str
    event_id: str
    schema_version: int
    headers: tuple[tuple[str, str], ...]
    aggregate_type: str
    aggregate_id: str
    created_at: datetime

    def headers_json(self) -> str | None:
        return json.dumps([list(h) for h in self.headers]) if self.headers else None


def _text(field: str, value: Any, *, longest: int, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidOutboxEvent(field, f"must be a string, not {type(value).__name__}")
    if not value and not empty:
        raise InvalidOutboxEvent(field, "must not be empty")
    if len(value) > longest:
        raise InvalidOutboxEvent(field, f"is {len(value)} characters; at most {longest}")
    return value


def _utf8(field: str, value: str | bytes | bytearray) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidOutboxEvent(field, f"must be UTF-8 (the outbox stores text): {exc}") from None


def _value(value: Any, max_bytes: int) -> str:
    if isinstance(value, Mapping):
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidOutboxEvent("value", f"is not JSON-serialisable: {exc}") from None
    elif isinstance(value, str | bytes | bytearray):
        text = _utf8("value", value)
    else:
        raise InvalidOutboxEvent("value", "must be bytes, str or a JSON object (a mapping)")
    size = len(text.encode())
    if size > max_bytes:
        raise InvalidOutboxEvent("value", f"is {size} bytes; at most {max_bytes}")
    return text


def _headers(headers: Mapping[str, str | bytes] | None) -> tuple[tuple[str, str], ...]:
    if not headers:
        return ()
    if len(headers) > MAX_HEADERS:
        raise InvalidOutboxEvent("headers", f"{len(headers)} headers; at most {MAX_HEADERS}")
    checked = []
    for name, value in headers.items():
        _text("headers", name, longest=MAX_HEADER_NAME_LENGTH)
        if name in RESERVED_HEADERS:
            raise InvalidOutboxEvent(
                "headers", f"{name!r} is set by the forwarder from the row; pass it as an argument"
            )
        if not isinstance(value, str | bytes):
            raise InvalidOutboxEvent("headers", f"{name!r} must be str or bytes")
        checked.append((name, _utf8("headers", value)))
    size = sum(len(n.encode()) + len(v.encode()) for n, v in checked)
    if size > MAX_HEADERS_BYTES:
        raise InvalidOutboxEvent("headers", f"are {size} bytes; at most {MAX_HEADERS_BYTES}")
    return tuple(checked)


def outbox_event(
    topic: str, key: str, value: Any, *, event_type: str, created_at: datetime,
    topics: OutboxTopics, max_value_bytes: int, event_id: str | None = None,
    schema_version: int = 1, headers: Mapping[str, str | bytes] | None = None,
    aggregate_type: str = "", aggregate_id: str = "",
) -> OutboxEvent:  # fmt: skip
    """Validate another service's event; raises :class:`InvalidOutboxEvent` naming the field.

    ``topic`` is a full name that ``topics`` allows; ``key`` (the Kafka key, 1-64 characters)
    orders the events: the forwarder publishes one key's rows in the order they commit;
    ``value`` is bytes or str holding UTF-8, or a mapping sent as compact JSON, at most
    ``max_value_bytes``; ``event_id`` a UUID (a new one when not given), which consumers
    dedupe on."""
    check_topic_name("topic", topic)
    if not topics.allows(topic):
        raise InvalidOutboxEvent(
            "topic", f"{topic!r} is not a topic the forwarder may publish to "
            f"(PIPELINE_OUTBOX_TOPICS allows: {topics.described()})",
        )  # fmt: skip
    if event_id is None:
        event_id = str(uuid.uuid4())
    else:
        _text("event_id", event_id, longest=36)
        try:
            event_id = str(uuid.UUID(event_id))
        except ValueError:
            raise InvalidOutboxEvent("event_id", f"{event_id!r} is not a UUID") from None
    if (
        isinstance(schema_version, bool)
        or not isinstance(schema_version, int)
        or not (1 <= schema_version <= 32767)
    ):
        raise InvalidOutboxEvent("schema_version", "must be an integer from 1 to 32767")
    if created_at.tzinfo is None:
        raise InvalidOutboxEvent("created_at", "must be an aware (UTC) datetime")
    return OutboxEvent(
        topic=topic,
        key=_text("key", key, longest=MAX_KEY_LENGTH),
        value=_value(value, max_value_bytes),
        event_type=_text("event_type", event_type, longest=MAX_EVENT_TYPE_LENGTH),
        event_id=event_id,
        schema_version=schema_version,
        headers=_headers(headers),
        aggregate_type=_text("aggregate_type", aggregate_type or "event",
                             longest=MAX_AGGREGATE_TYPE_LENGTH),
        aggregate_id=_text("aggregate_id", aggregate_id, longest=MAX_AGGREGATE_ID_LENGTH,
                           empty=True),
        created_at=created_at,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ParkedRow:
    """A parked row as an operator sees it: what it is, whose, since when, and why parked."""

    id: int
    event_id: str
    event_type: str
    partition_key: str
    created_at: datetime
    attempts: int
    last_error: str | None
    topic: str | None = None  # None: the order events' topic

    def to_json(self, orders_topic: str, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "topic": self.topic or orders_topic,
            "key": self.partition_key,
            "created_at": self.created_at.isoformat(),
            "age_seconds": round(max(0.0, (now - self.created_at).total_seconds()), 3),
            "attempts": self.attempts,
            "parked_reason": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class Requeue:
    """Which parked rows to put back (``ids``, or every one), and whether a row may be sent
    after a later event of its key that already went out (``out_of_order``)."""

    ids: tuple[int, ...]
    everything: bool
    out_of_order: bool
    by: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class Discard:
    ids: tuple[int, ...]
    by: str
    reason: str


@dataclass(slots=True)
class Settled:
    """What an operator's request did: the rows it changed and, per row it left, why."""

    done: list[Any] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, verb: str) -> dict[str, Any]:
        return {verb: self.done, "refused": self.refused}


def sent_after_later_events(key: str, later: list[tuple[int, str]]) -> str:
    """Why a requeue leaves a row: ``later`` rows of its key (id, status) went or are going out."""
    shown = ", ".join(f"{row_id} ({status})" for row_id, status in later)
    return (
        f"later events of its key {key!r} went out or are going out first (rows {shown}); "
        "requeue with out_of_order to send it after them, or discard it"
    )


OLDER_THAN_RETENTION = (
    "older than the outbox retention (PIPELINE_OUTBOX_RETENTION_SECONDS): later events of its "
    "key may have been published and purged; requeue with out_of_order to send it after them, "
    "or discard it"
)


def _ids(raw: Any, problems: list[dict[str, str]]) -> tuple[int, ...]:
    valid = isinstance(raw, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v < 2**63 for v in raw
    )
    if not valid:
        problems.append({"field": "ids", "message": "must be a list of outbox row ids"})
        return ()
    if not 1 <= len(raw) <= MAX_PAGE:
        problems.append({"field": "ids", "message": f"must name 1 to {MAX_PAGE} rows"})
        return ()
    return tuple(dict.fromkeys(raw))


def parse_requeue_request(body: Any, *, by: str) -> Requeue:
    """``{"ids": [...]}`` or ``{"all": true}``, with optional ``out_of_order``, ``why`` and
    ``by`` (default: ``by``); an empty request is refused so nothing moves by accident."""
    body = json_object(body, {"ids", "all", "out_of_order", "why", "by"})
    problems: list[dict[str, str]] = []
    everything = body.get("all", False)
    if not isinstance(everything, bool):  # not `in (True, False)`: 1 == True
        problems.append({"field": "all", "message": "must be true or false"})
    out_of_order = body.get("out_of_order", False)
    if not isinstance(out_of_order, bool):
        problems.append({"field": "out_of_order", "message": "must be true or false"})
    ids: tuple[int, ...] = ()
    if "ids" in body:
        ids = _ids(body["ids"], problems)
        if everything is True:
            problems.append({"field": "all", "message": 'give "ids" or "all": true, not both'})
    elif everything is not True:
        problems.append({"field": "ids", "message": 'name the rows ("ids") or send "all": true'})
    who, reason = parse_audit(body.get("by", by), body.get("why"), problems,
                              reason_required=False)  # fmt: skip
    if problems:
        raise BadRequest(problems)
    return Requeue(ids, everything is True, out_of_order is True, who, reason)


def parse_discard_request(body: Any, *, by: str) -> Discard:
    """``{"ids": [...], "why": "..."}`` with optional ``by``: a discard names its rows one
    by one and says why."""
    body = json_object(body, {"ids", "why", "by"})
    problems: list[dict[str, str]] = []
    ids = _ids(body.get("ids"), problems)
    who, reason = parse_audit(body.get("by", by), body.get("why"), problems,
                              reason_required=True)  # fmt: skip
    if problems:
        raise BadRequest(problems)
    assert reason is not None
    return Discard(ids, who, reason)
