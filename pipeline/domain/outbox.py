"""An outbox row as the forwarder sees it, and the states a row goes through.

A row is ``pending`` from the commit of its order's transaction until Kafka acknowledged it
(``published``), or until it proves unpublishable (``parked``, with the error that says why).
An operator may put a parked row back (``pending`` again: :func:`parse_requeue_request`) or
throw it away (``discarded``, never published: :func:`parse_discard_request`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.domain.audit import parse_audit
from pipeline.domain.paging import MAX_PAGE, BadRequest

PENDING, PUBLISHED, PARKED, DISCARDED = "pending", "published", "parked", "discarded"
MAX_ERROR_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class PendingRow:
    id: int
    event_id: str
    partition_key: str
    event_type: str
    schema_version: int
    payload: bytes
    created_at: datetime


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

    def to_json(self, topic: str, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "topic": topic,
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


def _object(body: Any, known: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest([{"field": "body", "message": "must be a JSON object"}])
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(
            [
                {"field": k, "message": f"unknown field; known: {', '.join(sorted(known))}"}
                for k in unknown
            ]
        )
    return body


def parse_requeue_request(body: Any, *, by: str) -> Requeue:
    """``{"ids": [...]}`` or ``{"all": true}``, with optional ``out_of_order``, ``why`` and
    ``by`` (default: ``by``); an empty request is refused so nothing moves by accident."""
    body = _object(body, {"ids", "all", "out_of_order", "why", "by"})
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
    body = _object(body, {"ids", "why", "by"})
    problems: list[dict[str, str]] = []
    ids = _ids(body.get("ids"), problems)
    who, reason = parse_audit(body.get("by", by), body.get("why"), problems,
                              reason_required=True)  # fmt: skip
    if problems:
        raise BadRequest(problems)
    assert reason is not None
    return Discard(ids, who, reason)
