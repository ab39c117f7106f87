"""The failure policy: which errors are worth retrying, how long to wait, and what a failed
record carries with it to the retry topics and the dead-letter topic.

Pure functions and plain data; ``pipeline.consume`` applies them inside every agent.

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
import random
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.events import InvalidEvent

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
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: (v if isinstance(v, bytes) else str(v).encode()) for k, v in items}


def original_headers(headers: Mapping[str, bytes]) -> Headers:
    """The record's own headers, without what the pipeline added on earlier failures."""
    return [(k, v) for k, v in headers.items() if not k.startswith(PREFIX)]


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
        if ORIGINAL_TOPIC in headers:
            ts = headers.get(ORIGINAL_TIMESTAMP, b"")
            return cls(
                headers[ORIGINAL_TOPIC].decode(),
                int(headers[ORIGINAL_PARTITION]),
                int(headers[ORIGINAL_OFFSET]),
                float(ts) if ts else None,
            )
        return cls(topic, partition, offset, timestamp)

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
        first = headers.get(FIRST_FAILURE_AT)
        return cls(
            agent=agent,
            origin=origin,
            attempts=int(headers.get(ATTEMPTS, b"0")),
            retry_tier=int(headers.get(RETRY_TIER, b"0")),
            replays=int(headers.get(REPLAYS, b"0")),
            first_failure_at=datetime.fromisoformat(first.decode()) if first else now,
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
