"""A dead letter and how operators ask for them: the failed record with its failure context,
the filters of listing and replay (checked field by field), and the headers a replay carries.

The index and replay themselves are :mod:`pipeline.services.dead_letters`."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pipeline.domain import failures
from pipeline.domain.audit import parse_audit
from pipeline.domain.orders import is_storable_text
from pipeline.domain.paging import BadRequest, digits, json_object

OPEN, REPLAYED, DISCARDED = "open", "replayed", "discarded"
STATUSES = (OPEN, REPLAYED, DISCARDED)
MAX_TEXT = 255  # a text filter's length
REASONS = (failures.POISON, failures.PERMANENT_ERROR, failures.RETRIES_EXHAUSTED)


MAX_LIST = 1000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    agent: str
    reason: str
    error_type: str | None
    error_message: str | None
    stacktrace: str | None
    event_id: str | None
    event_type: str | None
    original_topic: str
    original_partition: int
    original_offset: int
    original_timestamp: float | None
    attempts: int
    replays: int
    first_failure_at: datetime
    dead_lettered_at: datetime
    record_key: bytes | None
    record_value: bytes | None
    headers: list[tuple[str, bytes]]
    status: str = OPEN

    @property
    def event_key(self) -> str:
        """What the loop guard counts replays by: the event id, else the record's origin."""
        if self.event_id:
            return self.event_id
        return f"{self.original_topic}:{self.original_partition}:{self.original_offset}"

    @classmethod
    def from_record(
        cls, partition: int, offset: int, key: bytes | None, value: bytes | None,
        raw_headers: Any, timestamp: float | None,
    ) -> DeadLetter:  # fmt: skip
        """Build the index row of the dead-letter record at ``partition``/``offset``.

        Never raises, whatever the record holds: the headers of a dead letter are partly the
        failed record's own, which anybody may have written, and a row that could not be
        built (or stored: no NUL in text, lengths and integer widths of the columns, aware
        times) would stop the index. What is garbled is stored as unknown."""
        h = failures.header_map(raw_headers)

        def text(name: str, limit: int | None = None) -> str | None:
            raw = h.get(name)
            return None if raw is None else _clean(raw.decode("utf-8", "replace"))[:limit]

        def short(name: str) -> str | None:  # an id, or None if it cannot be one
            found = text(name)
            return found if found and len(found) <= ID_CHARS else None

        record_time = failures.timestamp_ms(timestamp)
        when = failures.header_time(h, failures.FAILED_AT) or (
            datetime.fromtimestamp(record_time / 1000, UTC) if record_time is not None
            else datetime.now(UTC)
        )  # fmt: skip
        event_id, event_type = short("event_id"), short("event_type")
        if event_id is None:
            event_id, event_type = _ids_from_value(value)
        # The dead-letter record is sent with the original timestamp: the fallback.
        original_ts = failures.header_seconds(h, failures.ORIGINAL_TIMESTAMP)
        if original_ts is None and record_time is not None:
            original_ts = record_time / 1000
        offset_at_origin = failures.header_int(h, failures.ORIGINAL_OFFSET, failures.MAX_INT64)
        return cls(
            id=f"{partition}-{offset}",
            agent=text(failures.AGENT, 64) or "unknown",
            reason=text(failures.REASON, 32) or "unknown",
            error_type=text(failures.EXCEPTION_TYPE, 255),
            error_message=text(failures.EXCEPTION_MESSAGE),
            stacktrace=text(failures.STACKTRACE),
            event_id=event_id,
            event_type=event_type,
            original_topic=text(failures.ORIGINAL_TOPIC, 255) or "unknown",
            original_partition=failures.header_int(h, failures.ORIGINAL_PARTITION) or 0,
            original_offset=-1 if offset_at_origin is None else offset_at_origin,
            original_timestamp=original_ts,
            attempts=failures.header_int(h, failures.ATTEMPTS) or 0,
            replays=failures.header_int(h, failures.REPLAYS) or 0,
            first_failure_at=failures.header_time(h, failures.FIRST_FAILURE_AT) or when,
            dead_lettered_at=when,
            record_key=key,
            record_value=value,
            headers=list(h.items()),
        )

    def to_json(self, *, full: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "agent": self.agent,
            "reason": self.reason,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "original": {
                "topic": self.original_topic,
                "partition": self.original_partition,
                "offset": self.original_offset,
                "timestamp": self.original_timestamp,
            },
            "attempts": self.attempts,
            "replays": self.replays,
            "first_failure_at": self.first_failure_at.isoformat(),
            "dead_lettered_at": self.dead_lettered_at.isoformat(),
            "status": self.status,
            "key": _readable(self.record_key),
            "value": _readable(self.record_value),
        }
        if full:
            body["stacktrace"] = self.stacktrace
            body["headers"] = {k: _readable(v) for k, v in self.headers}
        return body


ID_CHARS = 64  # the index's event_id and event_type columns


def _ids_from_value(value: bytes | None) -> tuple[str | None, str | None]:
    """A record published without id headers (not by this pipeline's producers) may still
    carry its ids in the JSON body; a poison pill may carry none."""
    try:
        body = json.loads(value or b"")
    except RecursionError:  # nested too deeply; the stack is whole again once it is out
        return None, None
    except (ValueError, ArithmeticError):  # not JSON, or digits json or Decimal refuse
        return None, None
    if not isinstance(body, dict):
        return None, None
    found = [body.get("event_id"), body.get("event_type")]
    event_id, event_type = (
        _clean(v) if isinstance(v, str) and 0 < len(v) <= ID_CHARS else None for v in found
    )
    return event_id, event_type


def _clean(text: str) -> str:
    """Text every database stores: no lone surrogates (a JSON escape makes them), no NUL
    (PostgreSQL refuses it in text)."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode()
    return text.replace("\x00", "\ufffd")


def _readable(raw: bytes | None) -> Any:
    """Text when the bytes are UTF-8, else ``{"base64": ...}``: the exact bytes either way."""
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}


@dataclass(frozen=True, slots=True)
class Filter:
    agent: str | None = None
    error_type: str | None = None
    reason: str | None = None
    status: str | None = None
    event_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: tuple[str, ...] = ()
    limit: int = 100


FILTER_FIELDS = ("agent", "error_type", "reason", "status", "event_id", "since", "until", "limit")


class BadFilter(BadRequest):
    """A filter, a replay or a discard request with fields at fault."""


def parse_filter(raw: dict[str, Any], *, allow: Sequence[str] = FILTER_FIELDS) -> Filter:
    """A :class:`Filter` from query parameters, a JSON body or CLI options (all strings or
    JSON values); :class:`BadFilter` names every field at fault."""
    problems: list[dict[str, str]] = []
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in allow:
            problems.append({"field": name, "message": f"unknown field; known: {', '.join(allow)}"})
        elif value is None:
            continue
        elif name in ("since", "until"):
            try:
                when = datetime.fromisoformat(str(value))
            except ValueError:
                problems.append({"field": name, "message": "must be an ISO 8601 time"})
                continue
            values[name] = when if when.tzinfo else when.replace(tzinfo=UTC)
        elif name == "limit":
            if isinstance(value, bool) or not digits(value):
                problems.append({"field": name, "message": "must be a positive integer"})
            elif not 1 <= int(value) <= MAX_LIST:
                problems.append({"field": name, "message": f"must be between 1 and {MAX_LIST}"})
            else:
                values[name] = int(value)
        elif name == "ids":
            if not isinstance(value, list) or not all(
                isinstance(v, str) and is_storable_text(v, MAX_TEXT) for v in value
            ):
                problems.append({"field": name, "message": "must be a list of dead-letter ids"})
            elif not value or len(value) > MAX_LIST:
                problems.append({"field": name, "message": f"must name 1 to {MAX_LIST} ids"})
            else:
                values[name] = tuple(value)
        elif name in ("reason", "status"):
            known = REASONS if name == "reason" else STATUSES
            if value not in known:
                problems.append({"field": name, "message": f"must be one of: {', '.join(known)}"})
            else:
                values[name] = value
        elif not isinstance(value, str) or not is_storable_text(value, MAX_TEXT):
            message = f"must be 1 to {MAX_TEXT} printable characters"
            problems.append({"field": name, "message": message})
        else:
            values[name] = value
    if problems:
        raise BadFilter(problems)
    return Filter(**values)


def parse_replay_request(body: Any, verb: str = "replay") -> Filter:
    """``{"ids": [...]}``, ``{"event_id": ...}``, a filter (``agent``, ``error_type``,
    ``reason``, ``since``, ``until``), or ``{"all": true}``; an empty request is refused so
    that nothing is replayed (or discarded) by accident."""
    body = json_object(body, error=BadFilter)
    # JSON has types, where a query string has only text: a limit is a number, a time a string.
    limit = body.get("limit")
    if "limit" in body and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise BadFilter([{"field": "limit", "message": "must be an integer"}])
    for name in ("since", "until"):
        if name in body and not isinstance(body[name], str):
            raise BadFilter([{"field": name, "message": "must be an ISO 8601 time (a string)"}])
    body = dict(body)
    everything = body.pop("all", None)
    if everything is not None and type(everything) is not bool:  # 0 and 1.0 equal False, True
        raise BadFilter([{"field": "all", "message": "must be true or false"}])
    allowed = ("ids", "agent", "error_type", "reason", "event_id", "since", "until", "limit")
    where = parse_filter(body, allow=allowed)
    if not body and everything is not True:
        raise BadFilter([{
            "field": "body",
            "message": f'say what to {verb}: "ids", "event_id", a filter '
                       '("agent", "error_type", "reason", "since", "until") or "all": true',
        }])  # fmt: skip
    return where if "limit" in body else replace(where, limit=MAX_LIST)


def parse_discard_request(body: Any, *, by: str) -> tuple[Filter, str, str]:
    """The selection of :func:`parse_replay_request`, ``why`` (required) and ``by``
    (default: ``by``): the filter, who, and why."""
    if not isinstance(body, dict):
        raise BadFilter([{"field": "body", "message": "must be a JSON object"}])
    body = dict(body)
    problems: list[dict[str, str]] = []
    who, reason = parse_audit(body.pop("by", by), body.pop("why", None), problems,
                              reason_required=True)  # fmt: skip
    try:
        where = parse_replay_request(body, "discard")
    except BadFilter as exc:
        raise BadFilter([*exc.problems, *problems]) from None
    if problems:
        raise BadFilter(problems)
    assert reason is not None
    return where, who, reason


def replay_headers(letter: DeadLetter, replays: int) -> failures.Headers:
    """The original headers, where the record came from and how often it was replayed: the
    replay starts a fresh round of retries, and the loop guard counts across rounds."""
    state = failures.Failure(
        agent=letter.agent,
        origin=failures.Origin(
            letter.original_topic,
            letter.original_partition,
            letter.original_offset,
            letter.original_timestamp,
        ),
        attempts=0,
        retry_tier=0,
        replays=replays,
        first_failure_at=letter.first_failure_at,
    )
    original = failures.original_headers(dict(letter.headers))
    return [*original, *state.headers()]
