"""The failure policy and the consume wrapper, offline: classification, back-off, routing to
retry topics and the dead-letter topic, and the context a dead letter carries."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from pipeline import consume, errors
from pipeline.dead_letters import (
    BadFilter,
    DeadLetter,
    parse_filter,
    parse_replay_request,
    replay_headers,
)
from pipeline.events import InvalidEvent, OrderCreated, encode
from tests.conftest import order_created


def test_errors_are_classified_by_their_most_specific_listed_type() -> None:
    policy = consume.policy_for("analytics")
    assert policy.is_transient(TimeoutError())
    assert policy.is_transient(ConnectionRefusedError())
    assert policy.is_transient(errors.RetryableError("try later"))
    assert policy.is_transient(OperationalError("select", {}, Exception("server closed")))
    assert not policy.is_transient(IntegrityError("insert", {}, Exception("duplicate")))
    assert not policy.is_transient(InvalidEvent("bad"))
    assert not policy.is_transient(ValueError("bad"))
    assert not policy.is_transient(errors.NonRetryableError("never"))
    # Unknown errors are retried, then dead-lettered: retrying a bug costs a minute at most.
    assert policy.is_transient(RuntimeError("who knows"))


def test_classification_is_configurable_per_agent() -> None:
    class QuotaExceeded(ValueError):
        pass

    strict = consume.policy_for("notifications", retryable=(*errors.TRANSIENT, QuotaExceeded))
    assert strict.is_transient(QuotaExceeded())
    assert not consume.policy_for("analytics").is_transient(QuotaExceeded())
    with pytest.raises(ValueError, match="retry topics exist"):
        consume.policy_for("analytics", retry_delays=(1.0,) * 20)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (10, 5.0)]:
        delays = [errors.backoff(attempt, 0.1, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def _failure(tier: int) -> errors.Failure:
    origin = errors.Origin("orders.events", 2, 41, 1_700_000_000.5)
    return errors.Failure("analytics", origin, 3, tier, 0, datetime(2026, 11, 26, tzinfo=UTC))


def test_transient_failures_walk_the_retry_topics_then_dead_letter() -> None:
    policy = errors.FailurePolicy("analytics", retry_delays=(1.0, 10.0))
    assert errors.route(policy, _failure(0), TimeoutError()) == (errors.RETRY, 0)
    assert errors.route(policy, _failure(1), TimeoutError()) == (errors.RETRY, 1)
    assert errors.route(policy, _failure(2), TimeoutError()) == (errors.RETRIES_EXHAUSTED, -1)
    assert errors.route(policy, _failure(0), ValueError()) == (errors.PERMANENT_ERROR, -1)


def test_failure_state_survives_the_trip_through_headers() -> None:
    state = _failure(1)
    headers = errors.header_map(state.headers())
    origin = errors.Origin.of(headers, "redeliver.analytics", 0, 7, None)
    assert origin == state.origin  # the first position, not the redelivery topic's
    now = datetime(2027, 1, 1, tzinfo=UTC)
    assert errors.Failure.of("analytics", headers, origin, now) == state


@dataclass
class Message:
    value: bytes | None
    key: bytes | None = b"cust-a"
    topic: str = "orders.events"
    partition: int = 1
    offset: int = 99
    timestamp: float | None = 1_700_000_000.0
    headers: Any = None


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, bytes]]]:
    out: list[tuple[str, dict[str, bytes]]] = []

    async def collect(topic: str, key: Any, value: Any, headers: Any, **_: Any) -> None:
        out.append((topic, dict(headers)))

    monkeypatch.setattr(consume, "send_reliably", collect)
    return out


def _flaky(failures: int, exc: BaseException) -> tuple[Any, list[OrderCreated]]:
    applied: list[OrderCreated] = []
    left = [failures]

    async def handle(event: OrderCreated) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise exc
        applied.append(event)

    return handle, applied


def _run(message: Message, handle: Any, policy: errors.FailurePolicy) -> None:
    asyncio.run(consume.handle_record(message, policy, handle, (OrderCreated,)))


FAST = errors.FailurePolicy("analytics", in_place_attempts=3, in_place_backoff=0.001,
                            retry_delays=(1.0, 10.0))  # fmt: skip


def test_a_brief_transient_failure_is_retried_in_place_and_applied_once(sent: list[Any]) -> None:
    event = order_created("cust-a")
    handle, applied = _flaky(2, TimeoutError("slow"))
    _run(Message(encode(event)), handle, FAST)
    assert applied == [event] and sent == []


def test_a_longer_transient_failure_goes_to_the_first_retry_topic(sent: list[Any]) -> None:
    event = order_created("cust-a")
    handle, applied = _flaky(5, ConnectionError("refused"))
    _run(Message(encode(event), headers=[("event_id", event.event_id.encode())]), handle, FAST)
    assert applied == []
    [(topic, headers)] = sent
    assert topic.endswith("retry.1")
    assert headers["event_id"] == event.event_id.encode()
    assert headers[errors.RETRY_TIER] == b"1" and headers[errors.ATTEMPTS] == b"3"
    assert headers[errors.ORIGINAL_TOPIC] == b"orders.events"
    assert headers[errors.ORIGINAL_PARTITION] == b"1" and headers[errors.ORIGINAL_OFFSET] == b"99"
    assert float(headers[errors.DUE_AT]) > 1_700_000_000
    assert headers[errors.EXCEPTION_TYPE] == b"ConnectionError"


def test_a_permanent_failure_is_dead_lettered_at_once_with_its_context(sent: list[Any]) -> None:
    event = order_created("cust-a")
    handle, applied = _flaky(1, errors.NonRetryableError("customer is blocked"))
    _run(Message(encode(event), headers=[("event_id", event.event_id.encode())]), handle, FAST)
    assert applied == []
    [(topic, headers)] = sent
    assert topic.endswith("dead-letters")
    assert headers[errors.REASON] == b"permanent"
    assert headers[errors.ATTEMPTS] == b"1"
    assert headers[errors.EXCEPTION_TYPE] == b"pipeline.errors.NonRetryableError"
    assert headers[errors.EXCEPTION_MESSAGE] == b"customer is blocked"
    assert b"NonRetryableError" in headers[errors.STACKTRACE]
    assert headers[errors.ORIGINAL_TIMESTAMP] == b"1700000000.0"


def test_the_last_retry_topic_leads_to_the_dead_letter_topic(sent: list[Any]) -> None:
    event = order_created("cust-a")
    handle, _ = _flaky(99, TimeoutError("still down"))
    previous = errors.header_map(_failure(2).headers())
    _run(Message(encode(event), topic="redeliver.analytics", headers=previous), handle, FAST)
    [(topic, headers)] = sent
    assert topic.endswith("dead-letters")
    assert headers[errors.REASON] == b"retries-exhausted"
    assert headers[errors.ATTEMPTS] == b"6"  # 3 before, 3 in place now
    assert headers[errors.ORIGINAL_TOPIC] == b"orders.events"  # not the redelivery topic


def test_a_poison_pill_is_dead_lettered_without_calling_the_handler(sent: list[Any]) -> None:
    handle, applied = _flaky(0, TimeoutError())
    _run(Message(b"\xff\xfe not json"), handle, FAST)
    _run(Message(b'{"event_type": "Unheard", "event_id": "x"}'), handle, FAST)
    assert applied == []
    assert [h[errors.REASON] for _, h in sent] == [b"poison", b"poison"]


def test_a_dead_letter_record_is_indexed_and_replayed_with_its_original_bytes() -> None:
    event = order_created("cust-a")
    original = [("event_id", event.event_id.encode()), ("event_type", b"OrderCreated")]
    state = _failure(3)
    headers = errors.dead_letter_headers(original, state, "retries-exhausted", TimeoutError("t"),
                                         datetime(2026, 11, 26, 1, tzinfo=UTC))  # fmt: skip
    letter = DeadLetter.from_record(0, 12, b"cust-a", encode(event), headers, 1.0)
    assert letter.id == "0-12" and letter.agent == "analytics"
    assert letter.event_id == event.event_id and letter.event_key == event.event_id
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        "orders.events", 2, 41)  # fmt: skip
    assert letter.error_type == "TimeoutError" and letter.reason == "retries-exhausted"
    replay = dict(replay_headers(letter, 2))
    assert replay["event_id"] == event.event_id.encode()
    assert replay[errors.REPLAYS] == b"2" and replay[errors.RETRY_TIER] == b"0"
    assert errors.REASON not in replay and errors.STACKTRACE not in replay
    body = letter.to_json(full=True)
    assert body["value"] == encode(event).decode()
    poison = DeadLetter.from_record(1, 5, None, b"\xff", original, 1.0)
    assert poison.to_json()["value"] == {"base64": "/w=="}


def test_filters_name_every_field_at_fault() -> None:
    where = parse_filter({"agent": "analytics", "since": "2026-11-26T10:00:00", "limit": "5"})
    assert where.agent == "analytics" and where.limit == 5
    assert where.since == datetime(2026, 11, 26, 10, tzinfo=UTC)
    with pytest.raises(BadFilter) as bad:
        parse_filter({"since": "yesterday", "limit": "0", "colour": "red"})
    assert {p["field"] for p in bad.value.problems} == {"since", "limit", "colour"}


def test_a_replay_request_must_say_what_to_replay() -> None:
    with pytest.raises(BadFilter, match="say what to replay"):
        parse_replay_request({})
    with pytest.raises(BadFilter):
        parse_replay_request({"ids": "0-1"})
    assert parse_replay_request({"all": True}).limit == 1000
    assert parse_replay_request({"ids": ["0-1", "2-3"]}).ids == ("0-1", "2-3")
    assert parse_replay_request({"event_id": "e-1"}).event_id == "e-1"
