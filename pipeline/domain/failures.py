"""The failure policy: which errors are worth retrying, how long to wait, and what a failed
record carries with it to the retry topics and the dead-letter topic.

Pure functions and plain data; ``pipeline.streaming.consume`` applies them inside every agent.

A record that fails is never dropped. Transient errors (timeouts, connection errors,
:class:`RetryableError`) are retried in place a few times with exponential back-off and jitter,
then sent through the retry topics (one per configured delay, each holding records until they
are due), then dead-lettered. Permanent errors (undecodable records, validation errors,
:class:`NonRetryableError`) are dead-lettered at once. Both lists are per agent
(:class:`FailurePolicy`); an error on neither list counts as transient, as in Spring Kafka:
retrying a bug costs a minute, dropping a record loses it.
"""

from __future__ import annotations

import asyncio
import math
import random
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.domain.events import InvalidEvent

# Headers the pipeline adds; every other header is the original record's and travels unchanged.
PREFIX = "x-"
AGENT = "x-agent"
ATTEMPTS = "x-attempts"
RETRY_TIER = "x-retry-tier"
DUE_AT = "x-due-at"
FIRST_FAILURE_AT = "x-first-failure-at"
FAILED_AT = "x-failed-at"
REPLAYS = "x-replays"
ORIGINAL_TOPIC = "x-original-topic"
ORIGINAL_PARTITION = "x-original-partition"
ORIGINAL_OFFSET = "x-original-offset"
ORIGINAL_TIMESTAMP = "x-original-timestamp"
EXCEPTION_TYPE = "x-exception-type"
EXCEPTION_MESSAGE = "x-exception-message"
STACKTRACE = "x-stacktrace"
REASON = "x-dead-letter-reason"

MAX_MESSAGE_CHARS = 1000
MAX_STACKTRACE_CHARS = 4000

Headers = list[tuple[str, bytes]]


class RetryableError(Exception):
    """Raise from a handler for a failure that may pass by itself (a dependency is down)."""


class Unavailable(RetryableError):
    """A dependency (the database) could not answer; the same request may succeed later."""


class NonRetryableError(Exception):
    """Raise from a handler for a failure that no retry can fix (the event itself is wrong)."""


TRANSIENT: tuple[type[BaseException], ...] = (
    RetryableError,
    TimeoutError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
)
PERMANENT: tuple[type[BaseException], ...] = (
    NonRetryableError,
    InvalidEvent,
    ValueError,
    TypeError,
    KeyError,
    LookupError,
    AssertionError,
)

# Why a record was dead-lettered.
POISON = "poison"  # it could not be decoded into an event this agent handles
PERMANENT_ERROR = "permanent"  # the handler raised a non-retryable error
RETRIES_EXHAUSTED = "retries-exhausted"  # transient, but still failing after every retry


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """How one agent treats failures: which errors are transient, how often to retry in
    place, and the delays of the retry topics; the defaults suit agents whose dependencies are
    Kafka, the database and a mail server."""

    agent: str
    retryable: tuple[type[BaseException], ...] = TRANSIENT
    non_retryable: tuple[type[BaseException], ...] = PERMANENT
    in_place_attempts: int = 3
    in_place_backoff: float = 0.1
    retry_delays: tuple[float, ...] = (1.0, 10.0, 60.0)
    # Called with the record once it is dead-lettered, so the agent's table can note its id
    # as pending: a replay then applies it once, however late (pipeline.domain.horizon).
    on_dead_letter: Callable[[Any], Awaitable[None]] | None = None

    def is_transient(self, exc: BaseException) -> bool:
        """The most specific listed class of ``exc`` decides (``IntegrityError`` may be
        permanent while its base ``DBAPIError`` is transient); unlisted means transient."""
        for kind in type(exc).__mro__:
            if kind in self.non_retryable:
                return False
            if kind in self.retryable:
                return True
        return True


def backoff(
    attempt: int, base: float, *, cap: float = 5.0, rng: random.Random | None = None
) -> float:
    """Delay before in-place retry number ``attempt`` (1-based): exponential with full
    jitter in its upper half, so workers retrying the same dependency do not march in step."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def header_map(
    headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None,
) -> dict[str, bytes]:
    """The headers by key, every key text Kafka takes back (see :func:`header_key`)."""
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {
        (k if k.isascii() else header_key(k)): (v if isinstance(v, bytes) else str(v).encode())
        for k, v in items
    }


def header_key(key: str) -> str:
    """``key``, or, when it is not UTF-8 text, its bytes with the undecodable ones escaped
    (``\\xff``). The consumer hands such a key over with surrogate escapes (the record's
    own bytes; ``pipeline.streaming.faust_patches.header_keys``), and no producer sends those."""
    try:
        key.encode()
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return key


def check_header_keys(headers: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> None:
    """Raise :class:`InvalidEvent` when a header key is not UTF-8 text: such a record was not
    written by a Kafka client that follows the protocol, whatever its value says (a poison pill,
    dead-lettered with its key escaped)."""
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    for key, _ in items:
        if not key.isascii() and header_key(key) != key:
            raise InvalidEvent(f"header key '{header_key(key)[:80]}' is not UTF-8 text")


def original_headers(headers: Mapping[str, bytes]) -> Headers:
    """The record's own headers, without what the pipeline added on earlier failures."""
    return [(k, v) for k, v in headers.items() if not k.startswith(PREFIX)]


# Bounds for what the headers say: the index's columns hold them (INTEGER, BIGINT).
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
MAX_TOPIC_CHARS = 249  # Kafka's own limit on a topic name


def header_int(headers: Mapping[str, bytes], name: str, high: int = MAX_INT32) -> int | None:
    """The header as an integer in ``0..high``, or None when it is missing or anything else:
    headers can be written by anybody, and a bad one must not crash what reads it."""
    raw = headers.get(name)
    if raw is None or not 0 < len(raw) <= 20 or not raw.isdigit():
        return None
    value = int(raw)
    return value if value <= high else None


def header_seconds(headers: Mapping[str, bytes], name: str) -> float | None:
    """A Kafka timestamp in seconds (as Faust gives them), or None unless a finite time from
    the epoch on."""
    try:
        value = float(headers.get(name) or b"")
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 <= value < 253402300800 else None  # < 10000 AD


def header_time(headers: Mapping[str, bytes], name: str) -> datetime | None:
    """An aware UTC time, or None when the header holds no such thing."""
    raw = headers.get(name)
    if not raw or len(raw) > 64:
        return None
    try:
        value = datetime.fromisoformat(raw.decode())
        return value.astimezone(UTC) if value.tzinfo is not None else None
    except (ValueError, OverflowError):  # not ISO 8601 (or UTF-8); beyond year 1 or 9999
        return None


def timestamp_ms(seconds: float | None) -> int | None:
    """Kafka's milliseconds for Faust's seconds, exactly: ``int(s * 1000)`` (what Faust's
    ``Producer.send`` does) truncates 1700000000.123 to ...122. None for no timestamp (Kafka's
    -1, which Faust hands over as -0.001)."""
    return None if seconds is None or seconds < 0 else round(seconds * 1000)


def original_timestamp_ms(headers: Iterable[tuple[str, bytes]]) -> int | None:
    """The timestamp to send a replay with: the original record's, from its headers."""
    return timestamp_ms(header_seconds(header_map(headers), ORIGINAL_TIMESTAMP))


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record first entered the agent, kept across its trips through retry topics."""

    topic: str
    partition: int
    offset: int
    timestamp: float | None

    @classmethod
    def of(cls, headers: Mapping[str, bytes], topic: str, partition: int, offset: int,
           timestamp: float | None) -> Origin:  # fmt: skip
        """From the failure headers when they hold a whole position, else the record's own
        (``headers`` should be empty for a record read from a source topic)."""
        raw_topic = headers.get(ORIGINAL_TOPIC, b"")
        first_partition = header_int(headers, ORIGINAL_PARTITION)
        first_offset = header_int(headers, ORIGINAL_OFFSET, MAX_INT64)
        if 0 < len(raw_topic) <= MAX_TOPIC_CHARS and raw_topic.isascii() and \
                first_partition is not None and first_offset is not None:  # fmt: skip
            ts = header_seconds(headers, ORIGINAL_TIMESTAMP)
            # The record being redelivered was sent with the original timestamp: a fallback.
            return cls(raw_topic.decode(), first_partition, first_offset,
                       timestamp if ts is None else ts)  # fmt: skip
        return cls(topic, partition, offset, timestamp)

    @property
    def timestamp_ms(self) -> int | None:
        """The Kafka timestamp every copy of the record is sent with (retry topics, the
        redelivery topics, the dead-letter topic, replays): windows placed by record time put
        every delivery of a record where its first delivery went."""
        return timestamp_ms(self.timestamp)

    def headers(self) -> Headers:
        ts = b"" if self.timestamp is None else repr(self.timestamp).encode()
        return [
            (ORIGINAL_TOPIC, self.topic.encode()),
            (ORIGINAL_PARTITION, str(self.partition).encode()),
            (ORIGINAL_OFFSET, str(self.offset).encode()),
            (ORIGINAL_TIMESTAMP, ts),
        ]


@dataclass(frozen=True, slots=True)
class Failure:
    """One record's failure history as far as it got: the state the headers carry."""

    agent: str
    origin: Origin
    attempts: int
    retry_tier: int
    replays: int
    first_failure_at: datetime

    @classmethod
    def of(cls, agent: str, headers: Mapping[str, bytes], origin: Origin, now: datetime) -> Failure:
        """From the failure headers; what is missing or garbled counts as not failed yet."""
        return cls(
            agent=agent,
            origin=origin,
            attempts=header_int(headers, ATTEMPTS) or 0,
            retry_tier=header_int(headers, RETRY_TIER) or 0,
            replays=header_int(headers, REPLAYS) or 0,
            first_failure_at=header_time(headers, FIRST_FAILURE_AT) or now,
        )

    def headers(self) -> Headers:
        return [
            (AGENT, self.agent.encode()),
            (ATTEMPTS, str(self.attempts).encode()),
            (RETRY_TIER, str(self.retry_tier).encode()),
            (REPLAYS, str(self.replays).encode()),
            (FIRST_FAILURE_AT, self.first_failure_at.isoformat().encode()),
            *self.origin.headers(),
        ]


def retry_headers(
    original: Headers, failure: Failure, due_at: float, exc: BaseException
) -> Headers:
    """Headers of a record on its way to retry topic ``failure.retry_tier - 1``."""
    return [
        *original,
        *failure.headers(),
        (DUE_AT, repr(due_at).encode()),
        *exception_headers(exc),
    ]


def dead_letter_headers(
    original: Headers, failure: Failure, reason: str, exc: BaseException | None, failed_at: datetime
) -> Headers:
    return [
        *original,
        *failure.headers(),
        (REASON, reason.encode()),
        (FAILED_AT, failed_at.isoformat().encode()),
        *exception_headers(exc),
    ]


def exception_headers(exc: BaseException | None) -> Headers:
    if exc is None:
        return []
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    trace = "".join(traceback.format_exception(exc))
    return [
        (EXCEPTION_TYPE, name.encode()),
        (EXCEPTION_MESSAGE, str(exc)[:MAX_MESSAGE_CHARS].encode()),
        # The end of a trace is where it failed; keep that part when it is long.
        (STACKTRACE, trace[-MAX_STACKTRACE_CHARS:].encode()),
    ]


RETRY = "retry"


def route(policy: FailurePolicy, failure: Failure, exc: BaseException) -> tuple[str, int]:
    """Where a record goes once its in-place retries failed: ``(RETRY, tier)`` for the retry
    topic of that tier, else ``(reason, -1)`` for the dead-letter topic."""
    if not policy.is_transient(exc):
        return PERMANENT_ERROR, -1
    if failure.retry_tier < len(policy.retry_delays):
        return RETRY, failure.retry_tier
    return RETRIES_EXHAUSTED, -1


def now_utc() -> datetime:
    return datetime.now(UTC)
