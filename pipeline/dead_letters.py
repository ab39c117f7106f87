"""Dead letters: the index of the dead-letter topic, listing with filters, and replay.

A dead-letter record (see :mod:`pipeline.errors`) keeps the failed record's key, value and
headers and adds its failure context in ``x-`` headers. The dead-letter agent indexes each one
here (a row per record, so indexing twice changes nothing); ``GET /dead-letters`` and
``python -m pipeline dlt list`` read the index, on any worker.

Replay sends the original record back to the agent that failed it, alone (its redelivery
topic, the partition it first came from), so the replay has exactly the effect a first
delivery would have had: one, because every agent is idempotent. The send takes the original
Kafka timestamp from the replay's ``x-original-timestamp`` header
(:func:`pipeline.errors.original_timestamp_ms`), so every replay lands in the window by
record time of the first delivery. Each replay is recorded; the loop guard refuses an event
that has been replayed ``PIPELINE_REPLAY_LIMIT`` times already.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import errors
from pipeline.db import dead_letter_replays, dead_letters

OPEN, REPLAYED = "open", "replayed"
MAX_LIST = 1000

Send = Callable[[str, bytes | None, bytes | None, errors.Headers, int], Awaitable[None]]


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
        h = errors.header_map(raw_headers)

        def text(name: str, limit: int | None = None) -> str | None:
            raw = h.get(name)
            return None if raw is None else _clean(raw.decode("utf-8", "replace"))[:limit]

        def short(name: str) -> str | None:  # an id, or None if it cannot be one
            found = text(name)
            return found if found and len(found) <= ID_CHARS else None

        record_time = errors.timestamp_ms(timestamp)
        when = errors.header_time(h, errors.FAILED_AT) or (
            datetime.fromtimestamp(record_time / 1000, UTC) if record_time is not None
            else datetime.now(UTC)
        )  # fmt: skip
        event_id, event_type = short("event_id"), short("event_type")
        if event_id is None:
            event_id, event_type = _ids_from_value(value)
        # The dead-letter record is sent with the original timestamp: the fallback.
        original_ts = errors.header_seconds(h, errors.ORIGINAL_TIMESTAMP)
        if original_ts is None and record_time is not None:
            original_ts = record_time / 1000
        offset_at_origin = errors.header_int(h, errors.ORIGINAL_OFFSET, errors.MAX_INT64)
        return cls(
            id=f"{partition}-{offset}",
            agent=text(errors.AGENT, 64) or "unknown",
            reason=text(errors.REASON, 32) or "unknown",
            error_type=text(errors.EXCEPTION_TYPE, 255),
            error_message=text(errors.EXCEPTION_MESSAGE),
            stacktrace=text(errors.STACKTRACE),
            event_id=event_id,
            event_type=event_type,
            original_topic=text(errors.ORIGINAL_TOPIC, 255) or "unknown",
            original_partition=errors.header_int(h, errors.ORIGINAL_PARTITION) or 0,
            original_offset=-1 if offset_at_origin is None else offset_at_origin,
            original_timestamp=original_ts,
            attempts=errors.header_int(h, errors.ATTEMPTS) or 0,
            replays=errors.header_int(h, errors.REPLAYS) or 0,
            first_failure_at=errors.header_time(h, errors.FIRST_FAILURE_AT) or when,
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


class BadFilter(ValueError):
    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['message']}" for p in problems))
        self.problems = problems


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
            if isinstance(value, bool) or not str(value).isdigit():
                problems.append({"field": name, "message": "must be a positive integer"})
            elif not 1 <= int(value) <= MAX_LIST:
                problems.append({"field": name, "message": f"must be between 1 and {MAX_LIST}"})
            else:
                values[name] = int(value)
        elif name == "ids":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append({"field": name, "message": "must be a list of dead-letter ids"})
            elif not value or len(value) > MAX_LIST:
                problems.append({"field": name, "message": f"must name 1 to {MAX_LIST} ids"})
            else:
                values[name] = tuple(value)
        elif not isinstance(value, str) or not 1 <= len(value) <= 255:
            problems.append({"field": name, "message": "must be a string of 1 to 255 characters"})
        else:
            values[name] = value
    if problems:
        raise BadFilter(problems)
    return Filter(**values)


def parse_replay_request(body: Any) -> Filter:
    """``{"ids": [...]}``, ``{"event_id": ...}``, a filter (``agent``, ``error_type``,
    ``reason``, ``since``, ``until``), or ``{"all": true}``; an empty request is refused so
    that nothing is replayed by accident."""
    if not isinstance(body, dict):
        raise BadFilter([{"field": "body", "message": "must be a JSON object"}])
    body = dict(body)
    everything = body.pop("all", None)
    if everything not in (None, True, False):
        raise BadFilter([{"field": "all", "message": "must be true or false"}])
    allowed = ("ids", "agent", "error_type", "reason", "event_id", "since", "until", "limit")
    where = parse_filter(body, allow=allowed)
    if not body and everything is not True:
        raise BadFilter([{
            "field": "body",
            "message": 'say what to replay: "ids", "event_id", a filter '
                       '("agent", "error_type", "reason", "since", "until") or "all": true',
        }])  # fmt: skip
    return where if "limit" in body else replace(where, limit=MAX_LIST)


class DeadLetterStore:
    """The index's SQL (SQLite and PostgreSQL alike)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(self, letter: DeadLetter) -> bool:
        """Index ``letter``; False when it was indexed already."""
        values = {name: getattr(letter, name) for name in dead_letters.c.keys()}  # noqa: SIM118
        values["headers"] = json.dumps(
            [[k, base64.b64encode(v).decode()] for k, v in letter.headers]
        )
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(dead_letters).values(**values))
        except IntegrityError:
            return False
        return True

    async def find(self, where: Filter) -> list[DeadLetter]:
        c = dead_letters.c
        query = select(dead_letters).order_by(c.dead_lettered_at, c.id).limit(where.limit)
        conditions = [
            (where.agent, c.agent),
            (where.error_type, c.error_type),
            (where.reason, c.reason),
            (where.status, c.status),
            (where.event_id, c.event_id),
        ]
        for value, column in conditions:
            if value is not None:
                query = query.where(column == value)
        if where.since is not None:
            query = query.where(c.dead_lettered_at >= where.since)
        if where.until is not None:
            query = query.where(c.dead_lettered_at < where.until)
        if where.ids:
            query = query.where(c.id.in_(where.ids))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_letter(r._mapping) for r in rows]

    async def counts(self) -> list[tuple[str, str, int]]:
        """How many dead letters there are, as ``(reason, status, count)`` rows."""
        c = dead_letters.c
        query = select(c.reason, c.status, func.count()).group_by(c.reason, c.status)
        async with self.engine.connect() as conn:
            return [(r, s, int(n)) for r, s, n in (await conn.execute(query)).all()]

    async def replay_count(self, agent: str, event_key: str) -> int:
        r = dead_letter_replays.c
        query = select(func.count()).where(r.agent == agent, r.event_key == event_key)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def record_replay(self, letter: DeadLetter, at: datetime, requested_by: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(dead_letter_replays).values(
                    dead_letter_id=letter.id, agent=letter.agent, event_key=letter.event_key,
                    replayed_at=at, requested_by=requested_by,
                )
            )  # fmt: skip
            await conn.execute(
                update(dead_letters).where(dead_letters.c.id == letter.id).values(status=REPLAYED)
            )

    async def replays(self, dead_letter_id: str) -> list[dict[str, Any]]:
        r = dead_letter_replays.c
        query = select(r.replayed_at, r.requested_by).where(r.dead_letter_id == dead_letter_id)
        async with self.engine.connect() as conn:
            return [dict(row._mapping) for row in (await conn.execute(query.order_by(r.id)))]


def _letter(row: Any) -> DeadLetter:
    values = dict(row)
    values["headers"] = [(k, base64.b64decode(v)) for k, v in json.loads(values["headers"])]
    return DeadLetter(**values)


@dataclass(slots=True)
class ReplayResult:
    replayed: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"replayed": self.replayed, "refused": self.refused}


class DeadLetters:
    """Listing and replay, for the HTTP views and the CLI alike. ``send(topic, key, value,
    headers, partition)`` must return only once the broker has the record."""

    def __init__(
        self, store: DeadLetterStore, send: Send, *, replay_limit: int,
        redelivery_topic: Callable[[str], str], known_agents: Callable[[], Sequence[str]],
        max_age_seconds: float | None = None,
    ) -> None:  # fmt: skip
        self.max_age_seconds = max_age_seconds
        self.store = store
        self.send = send
        self.replay_limit = replay_limit
        self.redelivery_topic = redelivery_topic
        self.known_agents = known_agents

    async def list(self, where: Filter) -> list[DeadLetter]:
        return await self.store.find(where)

    async def replay(self, where: Filter, requested_by: str) -> ReplayResult:
        """Replay the open dead letters ``where`` selects (and, when ids are named, those
        even if replayed before: the loop guard still applies)."""
        if not where.ids and where.status is None:
            where = replace(where, status=OPEN)
        result = ReplayResult()
        for letter in await self.store.find(where):
            if letter.agent not in self.known_agents():
                result.refused.append(
                    {"id": letter.id, "reason": f"unknown agent {letter.agent!r}"}
                )
                continue
            too_old = self._too_old(letter)
            if too_old is not None:
                result.refused.append({"id": letter.id, "reason": too_old})
                continue
            done = await self.store.replay_count(letter.agent, letter.event_key)
            if done >= self.replay_limit:
                result.refused.append({
                    "id": letter.id,
                    "reason": f"replay limit reached: {letter.event_key} was replayed {done} "
                              f"times (PIPELINE_REPLAY_LIMIT={self.replay_limit})",
                })  # fmt: skip
                continue
            await self.send(
                self.redelivery_topic(letter.agent), letter.record_key, letter.record_value,
                replay_headers(letter, done + 1), letter.original_partition,
            )  # fmt: skip
            await self.store.record_replay(letter, datetime.now(UTC), requested_by)
            result.replayed.append(letter.id)
        return result

    def _too_old(self, letter: DeadLetter) -> str | None:
        """Why ``letter`` is past the replay horizon, or None. Its key noted it as pending for
        ``PIPELINE_REPLAY_MAX_AGE_SECONDS`` of record time from the original record's time; past
        that, the agent could not tell a first application from a repeat (tables.horizon)."""
        if self.max_age_seconds is None:
            return None
        born = letter.original_timestamp
        if born is None:
            born = letter.first_failure_at.timestamp()
        age = time.time() - born
        if age <= self.max_age_seconds:
            return None
        return (
            f"too old to replay: its record is {age / 86400:.1f} days old, past "
            f"PIPELINE_REPLAY_MAX_AGE_SECONDS={self.max_age_seconds:g}, beyond which the agent "
            "no longer remembers whether it applied the event; check the event's effect by hand "
            "(GET the order, the customer's stats, the SKU) and send a correcting order or "
            "stock set if it is missing"
        )


def replay_headers(letter: DeadLetter, replays: int) -> errors.Headers:
    """The original headers, where the record came from and how often it was replayed: the
    replay starts a fresh round of retries, and the loop guard counts across rounds."""
    state = errors.Failure(
        agent=letter.agent,
        origin=errors.Origin(
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
    original = errors.original_headers(dict(letter.headers))
    return [*original, *state.headers()]
