"""The failure policy and the consume wrapper, offline: classification, back-off, routing to
retry topics and the dead-letter topic, and the context a dead letter carries."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnsupportedVersionError,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from pipeline.domain import failures
from pipeline.domain.dead_letters import (
    BadFilter,
    DeadLetter,
    parse_filter,
    parse_replay_request,
    replay_headers,
)
from pipeline.domain.events import InvalidEvent, OrderCreated, encode
from pipeline.streaming import consume
from pipeline.streaming.topics import egress
from tests.conftest import order_created


def test_errors_are_classified_by_their_most_specific_listed_type() -> None:
    policy = consume.policy_for("analytics")
    assert policy.is_transient(TimeoutError())
    assert policy.is_transient(ConnectionRefusedError())
    assert policy.is_transient(failures.RetryableError("try later"))
    assert policy.is_transient(OperationalError("select", {}, Exception("server closed")))
    assert not policy.is_transient(IntegrityError("insert", {}, Exception("duplicate")))
    assert not policy.is_transient(InvalidEvent("bad"))
    assert not policy.is_transient(ValueError("bad"))
    assert not policy.is_transient(failures.NonRetryableError("never"))
    # Unknown errors are retried, then dead-lettered: retrying a bug costs a minute at most.
    assert policy.is_transient(RuntimeError("who knows"))


def test_a_kafka_error_is_transient_unless_it_refuses_the_record_for_good() -> None:
    policy = consume.policy_for("analytics")
    for passing in (KafkaTimeoutError(), NotEnoughReplicasError(), LeaderNotAvailableError(),
                    KafkaConnectionError(), RequestTimedOutError(), KafkaError()):  # fmt: skip
        assert policy.is_transient(passing), passing
    for refusal in (MessageSizeTooLargeError(), RecordTooLargeError(), InvalidTopicError(),
                    TopicAuthorizationFailedError(), UnsupportedVersionError()):  # fmt: skip
        assert not policy.is_transient(refusal), refusal


def test_a_record_the_producer_refuses_as_too_large_is_dead_lettered_at_once(
    sent: list[Any],
) -> None:
    """aiokafka's ``send`` raises ``MessageSizeTooLargeError`` for a derived record over its
    ``max_request_size``: no retry makes the record smaller."""
    event = order_created("cust-a")
    handle, applied = _flaky(99, MessageSizeTooLargeError("the message is 2000000 bytes"))
    policy = consume.policy_for("analytics", in_place_backoff=0.001)
    _run(Message(encode(event), headers=[("event_id", event.event_id.encode())]), handle, policy)
    assert applied == []
    [(topic, headers)] = sent
    assert topic.endswith("dead-letters")
    assert headers[failures.REASON] == b"permanent"
    assert headers[failures.ATTEMPTS] == b"1"
    assert headers[failures.EXCEPTION_TYPE] == b"aiokafka.errors.MessageSizeTooLargeError"
    assert headers["event_id"] == event.event_id.encode()
    assert headers[failures.ORIGINAL_OFFSET] == b"99"


def test_classification_is_configurable_per_agent() -> None:
    class QuotaExceeded(ValueError):
        pass

    strict = consume.policy_for("notifications", retryable=(*failures.TRANSIENT, QuotaExceeded))
    assert strict.is_transient(QuotaExceeded())
    assert not consume.policy_for("analytics").is_transient(QuotaExceeded())
    with pytest.raises(ValueError, match="retry topics exist"):
        consume.policy_for("analytics", retry_delays=(1.0,) * 20)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (10, 5.0)]:
        delays = [failures.backoff(attempt, 0.1, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def _failure(tier: int) -> failures.Failure:
    origin = failures.Origin("orders.events", 2, 41, 1_700_000_000.5)
    return failures.Failure("analytics", origin, 3, tier, 0, datetime(2026, 11, 26, tzinfo=UTC))


def test_transient_failures_walk_the_retry_topics_then_dead_letter() -> None:
    policy = failures.FailurePolicy("analytics", retry_delays=(1.0, 10.0))
    assert failures.route(policy, _failure(0), TimeoutError()) == (failures.RETRY, 0)
    assert failures.route(policy, _failure(1), TimeoutError()) == (failures.RETRY, 1)
    assert failures.route(policy, _failure(2), TimeoutError()) == (failures.RETRIES_EXHAUSTED, -1)
    assert failures.route(policy, _failure(0), ValueError()) == (failures.PERMANENT_ERROR, -1)


def test_failure_state_survives_the_trip_through_headers() -> None:
    state = _failure(1)
    headers = failures.header_map(state.headers())
    origin = failures.Origin.of(headers, "redeliver.analytics", 0, 7, None)
    assert origin == state.origin  # the first position, not the redelivery topic's
    now = datetime(2027, 1, 1, tzinfo=UTC)
    assert failures.Failure.of("analytics", headers, origin, now) == state


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


def _origin(h: dict[str, bytes]) -> tuple[bytes, bytes, bytes]:
    return h[failures.ORIGINAL_TOPIC], h[failures.ORIGINAL_PARTITION], h[failures.ORIGINAL_OFFSET]


def _flaky(failures: int, exc: BaseException) -> tuple[Any, list[OrderCreated]]:
    applied: list[OrderCreated] = []
    left = [failures]

    async def handle(event: OrderCreated) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise exc
        applied.append(event)

    return handle, applied


def _run(message: Message, handle: Any, policy: failures.FailurePolicy) -> None:
    asyncio.run(consume.handle_record(message, policy, handle, (OrderCreated,)))


FAST = failures.FailurePolicy("analytics", in_place_attempts=3, in_place_backoff=0.001,
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
    assert headers[failures.RETRY_TIER] == b"1" and headers[failures.ATTEMPTS] == b"3"
    assert headers[failures.ORIGINAL_TOPIC] == b"orders.events"
    assert (
        headers[failures.ORIGINAL_PARTITION] == b"1" and headers[failures.ORIGINAL_OFFSET] == b"99"
    )
    assert float(headers[failures.DUE_AT]) > 1_700_000_000
    assert headers[failures.EXCEPTION_TYPE] == b"ConnectionError"


def test_a_permanent_failure_is_dead_lettered_at_once_with_its_context(sent: list[Any]) -> None:
    event = order_created("cust-a")
    handle, applied = _flaky(1, failures.NonRetryableError("customer is blocked"))
    _run(Message(encode(event), headers=[("event_id", event.event_id.encode())]), handle, FAST)
    assert applied == []
    [(topic, headers)] = sent
    assert topic.endswith("dead-letters")
    assert headers[failures.REASON] == b"permanent"
    assert headers[failures.ATTEMPTS] == b"1"
    assert headers[failures.EXCEPTION_TYPE] == b"pipeline.domain.failures.NonRetryableError"
    assert headers[failures.EXCEPTION_MESSAGE] == b"customer is blocked"
    assert b"NonRetryableError" in headers[failures.STACKTRACE]
    assert headers[failures.ORIGINAL_TIMESTAMP] == b"1700000000.0"


def test_the_last_retry_topic_leads_to_the_dead_letter_topic(sent: list[Any]) -> None:
    event = order_created("cust-a")
    handle, _ = _flaky(99, TimeoutError("still down"))
    previous = failures.header_map(_failure(2).headers())
    _run(Message(encode(event), topic="redeliver.analytics", headers=previous), handle, FAST)
    [(topic, headers)] = sent
    assert topic.endswith("dead-letters")
    assert headers[failures.REASON] == b"retries-exhausted"
    assert headers[failures.ATTEMPTS] == b"6"  # 3 before, 3 in place now
    assert headers[failures.ORIGINAL_TOPIC] == b"orders.events"  # not the redelivery topic


def test_a_poison_pill_is_dead_lettered_without_calling_the_handler(sent: list[Any]) -> None:
    handle, applied = _flaky(0, TimeoutError())
    _run(Message(b"\xff\xfe not json"), handle, FAST)
    _run(Message(b'{"event_type": "Unheard", "event_id": "x"}'), handle, FAST)
    assert applied == []
    assert [h[failures.REASON] for _, h in sent] == [b"poison", b"poison"]


def test_a_record_whose_header_key_is_not_utf8_is_poison_and_keeps_it_escaped(
    sent: list[Any],
) -> None:
    """The fetcher hands such a key over with surrogate escapes (its bytes,
    ``pipeline.streaming.faust_patches.header_keys``); the value may be a valid event, but the
    record is nothing a pipeline producer wrote. Kafka would not take the key back as it is."""
    event = order_created("cust-a")
    handle, applied = _flaky(0, TimeoutError())
    key = b"\xff\xfeid".decode("utf-8", "surrogateescape")
    headers = [(key, b"1"), ("event_id", event.event_id.encode())]
    _run(Message(encode(event), headers=headers), handle, FAST)
    assert applied == []
    [(topic, out)] = sent
    assert topic.endswith("dead-letters")
    assert out[failures.REASON] == b"poison"
    assert out[failures.EXCEPTION_TYPE] == b"pipeline.domain.events.InvalidEvent"
    assert b"not UTF-8" in out[failures.EXCEPTION_MESSAGE]
    assert out["\\xff\\xfeid"] == b"1" and out["event_id"] == event.event_id.encode()
    assert all(k.encode() for k in out)  # every key is text a producer can send


def test_a_dead_letter_record_is_indexed_and_replayed_with_its_original_bytes() -> None:
    event = order_created("cust-a")
    original = [("event_id", event.event_id.encode()), ("event_type", b"OrderCreated")]
    state = _failure(3)
    headers = failures.dead_letter_headers(original, state, "retries-exhausted", TimeoutError("t"),
                                         datetime(2026, 11, 26, 1, tzinfo=UTC))  # fmt: skip
    letter = DeadLetter.from_record(0, 12, b"cust-a", encode(event), headers, 1.0)
    assert letter.id == "0-12" and letter.agent == "analytics"
    assert letter.event_id == event.event_id and letter.event_key == event.event_id
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        "orders.events", 2, 41)  # fmt: skip
    assert letter.error_type == "TimeoutError" and letter.reason == "retries-exhausted"
    replay = dict(replay_headers(letter, 2))
    assert replay["event_id"] == event.event_id.encode()
    assert replay[failures.REPLAYS] == b"2" and replay[failures.RETRY_TIER] == b"0"
    assert failures.REASON not in replay and failures.STACKTRACE not in replay
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
    with pytest.raises(BadFilter):
        parse_filter({"limit": "\u0665"})  # an Arabic-Indic 5: str.isdigit() says yes
    assert {p["field"] for p in bad.value.problems} == {"since", "limit", "colour"}


def test_reason_and_status_filters_take_only_known_values() -> None:
    assert parse_filter({"reason": "poison", "status": "replayed"}).status == "replayed"
    with pytest.raises(BadFilter) as bad:
        parse_filter({"reason": "bad-luck", "status": "AAA"})
    assert {p["field"] for p in bad.value.problems} == {"reason", "status"}


def test_text_filters_the_database_cannot_store_are_refused_before_any_query() -> None:
    with pytest.raises(BadFilter) as bad:
        parse_replay_request({"agent": "a\x00b", "ids": ["ok", "nul\x00"], "event_id": "x" * 256})
    assert {p["field"] for p in bad.value.problems} == {"agent", "ids", "event_id"}


def test_a_replay_request_says_what_it_means_without_nulls() -> None:
    with pytest.raises(BadFilter) as bad:
        parse_replay_request({"agent": "analytics", "limit": None, "all": None})
    assert [p["field"] for p in bad.value.problems] == ["all", "limit"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("limit", "5"), ("limit", 5.0), ("since", 20000101), ("until", []), ("all", 0), ("all", 1)],
)
def test_a_replay_request_takes_json_types(field: str, value: Any) -> None:
    with pytest.raises(BadFilter) as bad:
        parse_replay_request({"agent": "analytics", field: value})
    assert [p["field"] for p in bad.value.problems] == [field]


def test_a_replay_request_must_say_what_to_replay() -> None:
    with pytest.raises(BadFilter, match="say what to replay"):
        parse_replay_request({})
    with pytest.raises(BadFilter):
        parse_replay_request({"ids": "0-1"})
    assert parse_replay_request({"all": True}).limit == 1000
    assert parse_replay_request({"ids": ["0-1", "2-3"]}).ids == ("0-1", "2-3")
    assert parse_replay_request({"event_id": "e-1"}).event_id == "e-1"


# -- hostile records and headers ---------------------------------------------------------------


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    partition: int | None
    timestamp_ms: int | None


def _collector(out: list[Sent]) -> Any:
    """A ``send_reliably`` that keeps what it is asked to send, partition and timestamp too."""

    async def collect(
        topic: str, key: Any, value: Any, headers: Any, *, partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:  # fmt: skip
        out.append(Sent(topic, key, value, dict(headers), partition, timestamp_ms))

    return collect


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[Sent]:
    out: list[Sent] = []
    monkeypatch.setattr(consume, "send_reliably", _collector(out))
    return out


def _with(**fields: object) -> bytes:
    return json.dumps({**json.loads(encode(order_created())), **fields}).encode()


@pytest.mark.parametrize(
    ("value", "cause"),
    [
        (b'{"schema_version": 1, "n": ' + b"9" * 5000 + b"}", "4300 digits"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (_with(created_at="0001-01-01T00:00:00+14:00"), "out of range"),
        (b"\xc3\x28 not UTF-8", "not JSON"),
        (None, "empty record"),
    ],
    ids=["5,000-digit integer", "100,000-deep nesting", "year 1 at +14:00", "not UTF-8", "null"],
)
def test_a_record_the_decoder_chokes_on_is_poison_with_its_context(
    sends: list[Sent], value: bytes | None, cause: str
) -> None:
    handle, applied = _flaky(0, TimeoutError())
    _run(Message(value, key=None if value is None else b"cust-a", partition=3, offset=1234),
         handle, FAST)  # fmt: skip
    assert applied == []
    [letter] = sends
    assert letter.topic.endswith("dead-letters") and letter.value == value
    h = letter.headers
    assert h[failures.REASON] == b"poison" and h[failures.AGENT] == b"analytics"
    assert _origin(h) == (b"orders.events", b"3", b"1234")
    assert h[failures.EXCEPTION_TYPE] == b"pipeline.domain.events.InvalidEvent"
    assert cause in h[failures.EXCEPTION_MESSAGE].decode()


HOSTILE_HEADERS = [
    (failures.ORIGINAL_TOPIC, b"elsewhere"),
    (failures.ORIGINAL_PARTITION, b"not a number"),
    (failures.ORIGINAL_OFFSET, b"9" * 5000),
    (failures.ORIGINAL_TIMESTAMP, b"nan"),
    (failures.ATTEMPTS, b"-7"),
    (failures.RETRY_TIER, b"99"),
    (failures.REPLAYS, b"\xff"),
    (failures.FIRST_FAILURE_AT, b"0001-01-01T00:00:00+14:00"),
    ("event_id", b"\x00\xff"),
]


def test_a_fresh_record_is_its_own_origin_whatever_its_headers_claim(sends: list[Sent]) -> None:
    """Only the pipeline's own topics carry its failure headers; on a source topic they are
    anybody's, and garbage there must neither crash the agent nor steer the record."""
    event = order_created("cust-a")
    handle, _ = _flaky(99, TimeoutError("down"))
    _run(Message(encode(event), headers=HOSTILE_HEADERS), handle, FAST)
    _run(Message(b"poison", headers=HOSTILE_HEADERS), handle, FAST)
    retry, poison = sends
    assert retry.topic.endswith("retry.1")
    for sent in (retry, poison):
        h = sent.headers
        assert _origin(h) == (b"orders.events", b"1", b"99")
        assert h[failures.ORIGINAL_TIMESTAMP] == b"1700000000.0"
        assert h["event_id"] == b"\x00\xff"  # the record's own headers travel unchanged
    assert retry.headers[failures.ATTEMPTS] == b"3" and retry.headers[failures.RETRY_TIER] == b"1"
    assert retry.headers[failures.REPLAYS] == b"0"


def test_garbled_failure_headers_on_a_redelivery_fall_back_instead_of_crashing(
    sends: list[Sent],
) -> None:
    handle, _ = _flaky(99, TimeoutError("down"))
    _run(Message(b"poison", topic="redeliver.analytics", headers=HOSTILE_HEADERS), handle, FAST)
    [letter] = sends
    h = letter.headers
    assert h[failures.REASON] == b"poison"
    assert _origin(h) == (b"redeliver.analytics", b"1", b"99")
    assert letter.timestamp_ms == 1_700_000_000_000
    first = datetime.fromisoformat(h[failures.FIRST_FAILURE_AT].decode())
    assert first.tzinfo is not None and first.year >= 2026


# -- the original timestamp travels with the record -----------------------------------------------

MS = 1_700_000_000_123  # Faust hands over seconds: 1700000000.123 * 1000 is 1700000000122.99...


def test_a_record_sent_to_a_retry_topic_keeps_its_kafka_timestamp(sends: list[Sent]) -> None:
    event = order_created("cust-a")
    handle, _ = _flaky(5, TimeoutError("down"))
    _run(Message(encode(event), timestamp=MS / 1000), handle, FAST)
    [retry] = sends
    assert retry.topic.endswith("retry.1") and retry.timestamp_ms == MS


def test_a_redelivered_record_keeps_the_first_timestamp_not_the_redelivery_s(
    sends: list[Sent],
) -> None:
    event = order_created("cust-a")
    first = failures.Origin("orders.events", 2, 41, MS / 1000)
    earlier = failures.Failure("analytics", first, 3, 1, 0, datetime(2026, 11, 26, tzinfo=UTC))
    headers = failures.header_map(earlier.headers())
    for fault in (TimeoutError("still down"), failures.NonRetryableError("no")):
        handle, _ = _flaky(99, fault)
        _run(Message(encode(event), topic="redeliver.analytics", timestamp=1_800_000_000.0,
                     headers=headers), handle, FAST)  # fmt: skip
    _run(Message(b"poison", topic="redeliver.analytics", timestamp=1_800_000_000.0,
                 headers=headers), handle, FAST)  # fmt: skip
    retry, permanent, poison = sends
    assert retry.topic.endswith("retry.2")
    assert permanent.topic.endswith("dead-letters") and poison.topic.endswith("dead-letters")
    assert [s.timestamp_ms for s in sends] == [MS, MS, MS]
    assert all(s.headers[failures.ORIGINAL_TIMESTAMP] == repr(MS / 1000).encode() for s in sends)


def test_a_record_without_a_timestamp_is_sent_without_one(sends: list[Sent]) -> None:
    handle, _ = _flaky(0, TimeoutError())
    _run(Message(b"poison", timestamp=None), handle, FAST)
    _run(Message(b"poison", timestamp=-0.001), handle, FAST)  # Kafka's -1: none
    assert [s.timestamp_ms for s in sends] == [None, None]


class Records:
    """A retry topic's stream as the holders read it."""

    def __init__(self, *messages: Message) -> None:
        self.messages = messages

    async def events(self) -> Any:
        for message in self.messages:
            yield SimpleNamespace(message=message)


def _held(due_at: float, **changes: bytes) -> list[tuple[str, bytes]]:
    first = failures.Origin("orders.events", 2, 41, MS / 1000)
    state = failures.Failure("analytics", first, 3, 1, 0, datetime(2026, 11, 26, tzinfo=UTC))
    held = failures.retry_headers([("event_id", b"e-1")], state, due_at, TimeoutError("down"))
    return list({**dict(held), **changes}.items())


def _hold(*messages: Message) -> None:
    from agents import failures as holders

    asyncio.run(holders.hold_until_due(Records(*messages)))  # type: ignore[arg-type]


def test_a_due_record_goes_back_with_the_original_timestamp_not_the_retry_record_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agents import failures as holders

    sends: list[Sent] = []
    collect = _collector(sends)
    monkeypatch.setattr(holders, "send_reliably", collect)
    retry = Message(b"{}", topic="retry.1", offset=5, timestamp=1_800_000_000.0,
                    headers=_held(time.time() - 1))  # fmt: skip
    _hold(retry)
    [back] = sends
    assert back.topic.endswith("redeliver.analytics") and back.partition == 2
    assert back.timestamp_ms == MS
    assert failures.DUE_AT not in back.headers and back.headers["event_id"] == b"e-1"


@pytest.mark.parametrize(
    ("changes", "cause"),
    [
        ({failures.AGENT: b"nobody"}, "unknown agent"),
        ({failures.AGENT: b"\xff"}, "unknown agent"),
        ({failures.ORIGINAL_PARTITION: b"999"}, "partition 999"),
        ({failures.ORIGINAL_PARTITION: b"-1"}, "partition"),
        ({failures.DUE_AT: b"nan"}, "due"),
        ({failures.DUE_AT: b"\x00"}, "due"),
    ],
)
def test_a_retry_record_with_hostile_routing_headers_is_dead_lettered(
    monkeypatch: pytest.MonkeyPatch, changes: dict[str, bytes], cause: str
) -> None:
    from agents import failures as holders

    sends: list[Sent] = []
    collect = _collector(sends)
    monkeypatch.setattr(holders, "send_reliably", collect)
    retry = Message(b"{}", topic="retry.1", partition=0, offset=5, timestamp=1_800_000_000.0,
                    headers=_held(time.time() - 1, **changes))  # fmt: skip
    _hold(retry)
    [letter] = sends
    assert letter.topic.endswith("dead-letters") and letter.partition is None
    h = letter.headers
    assert h[failures.REASON] == b"poison" and cause in h[failures.EXCEPTION_MESSAGE].decode()
    assert h["event_id"] == b"e-1"
    # Indexable: the index reads it back without raising, whatever was garbled.
    DeadLetter.from_record(0, 1, letter.key, letter.value, list(h.items()), 1.0)


def test_a_due_time_beyond_the_longest_delay_does_not_hold_the_retry_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agents import failures as holders

    sends: list[str] = []

    async def collect(topic: str, *_: Any, **__: Any) -> None:
        sends.append(topic)

    monkeypatch.setattr(holders, "send_reliably", collect)
    monkeypatch.setattr(holders, "LONGEST_DELAY", 0.05)
    for due in (b"inf", b"1e300", repr(time.time() + 3600).encode()):
        _hold(Message(b"{}", topic="retry.1", headers=_held(0, **{failures.DUE_AT: due})))
    assert [t.rsplit(".", 1)[-1] for t in sends] == ["analytics"] * 3


def test_a_replay_is_sent_with_the_original_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.bootstrap import runtime

    sends: list[Sent] = []
    collect = _collector(sends)

    async def deliver(
        topic: str,
        value: Any,
        *,
        key: Any = None,
        headers: Any = (),
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        await collect(topic, key, value, headers, partition=partition, timestamp_ms=timestamp_ms)

    monkeypatch.setattr(egress, "deliver_reliably", deliver)
    first = failures.Origin("orders.events", 2, 41, MS / 1000)
    state = failures.Failure("analytics", first, 6, 2, 0, datetime(2026, 11, 26, tzinfo=UTC))
    headers = failures.dead_letter_headers([], state, "retries-exhausted", TimeoutError("t"),
                                         datetime(2026, 11, 27, tzinfo=UTC))  # fmt: skip
    # The dead-letter record itself was stamped later: the index keeps the header's time.
    letter = DeadLetter.from_record(0, 12, b"cust-a", b"{}", headers, 1_800_000_000.0)
    assert letter.original_timestamp == MS / 1000
    for replays in (1, 2):
        asyncio.run(runtime._send_replay("redeliver.analytics", letter.record_key,
                                         letter.record_value, replay_headers(letter, replays),
                                         letter.original_partition))  # fmt: skip
    assert [(s.partition, s.timestamp_ms) for s in sends] == [(2, MS), (2, MS)]


@pytest.mark.parametrize(
    "changes",
    [
        {failures.ORIGINAL_PARTITION: b"abc", failures.ORIGINAL_OFFSET: b"9" * 5000},
        {failures.ORIGINAL_PARTITION: b"-1", failures.ORIGINAL_OFFSET: b"-5"},
        {failures.ATTEMPTS: b"9" * 30, failures.RETRY_TIER: b"1.5"},
        {failures.ORIGINAL_TIMESTAMP: b"nan", failures.REPLAYS: b"\xff"},
        {failures.ORIGINAL_TIMESTAMP: b"1e400", failures.FAILED_AT: b"0001-01-01T00:00:00+14:00"},
        {failures.FAILED_AT: b"2026-01-01T00:00:00", failures.FIRST_FAILURE_AT: b"\xff"},
        {failures.FIRST_FAILURE_AT: b"9999-12-31T23:59:59-14:00", failures.AGENT: b"a" * 1000},
        {
            failures.AGENT: b"\x00",
            failures.REASON: b"r" * 100,
            failures.EXCEPTION_TYPE: b"T" * 1000,
        },
        {failures.ORIGINAL_TOPIC: b"\x00" * 1000, failures.EXCEPTION_MESSAGE: b"nul \x00 here"},
        {"event_id": b"\x00" * 10, "event_type": b"x" * 100, failures.STACKTRACE: b"\x00"},
        {"event_id": b"e" * 100},
    ],
)
def test_the_index_takes_any_dead_letter_record_and_keeps_it_storable(
    changes: dict[str, bytes],
) -> None:
    state = _failure(3)
    clean = failures.dead_letter_headers([("event_id", b"e-1")], state, "poison", ValueError("v"),
                                       datetime(2026, 11, 26, 1, tzinfo=UTC))  # fmt: skip
    headers = list({**dict(clean), **changes}.items())
    for value in (HOSTILE_VALUES, b"[" * 100_000, b'{"event_id": "\\ud800\\u0000"}', None):
        for timestamp in (1.0, None, -0.001):
            letter = DeadLetter.from_record(3, 7, None, value, headers, timestamp)
            _assert_storable(letter)


HOSTILE_VALUES = b'{"n": ' + b"9" * 5000 + b"}"


def _assert_storable(letter: DeadLetter) -> None:
    """What the index's columns hold, on PostgreSQL as on SQLite (no NUL in text, lengths,
    integer widths, aware times) and what ``GET /dead-letters`` can answer (finite JSON)."""
    limits = {"agent": 64, "reason": 32, "error_type": 255, "event_id": 64, "event_type": 64,
              "original_topic": 255, "error_message": None, "stacktrace": None}  # fmt: skip
    for name, limit in limits.items():
        text = getattr(letter, name)
        if text is not None:
            assert "\x00" not in text and (limit is None or len(text) <= limit), name
            text.encode()  # no lone surrogates
    assert 0 <= letter.original_partition < 2**31
    assert -1 <= letter.original_offset < 2**63
    assert 0 <= letter.attempts < 2**31 and 0 <= letter.replays < 2**31
    for when in (letter.first_failure_at, letter.dead_lettered_at):
        assert when.utcoffset() == timedelta(0)
    assert letter.original_timestamp is None or 0 <= letter.original_timestamp < 2.6e11
    assert len(letter.event_key) <= 320
    json.dumps(letter.to_json(full=True), allow_nan=False)


def test_a_dead_letter_past_the_replay_age_is_refused_saying_why() -> None:
    import dataclasses as dc
    import time as clock

    from pipeline.services.dead_letters import DeadLetters

    event = order_created("cust-a")
    headers = failures.dead_letter_headers(
        [("event_id", event.event_id.encode())], _failure(3), "permanent", ValueError("v"),
        datetime(2026, 11, 26, 1, tzinfo=UTC),
    )  # fmt: skip
    fresh = DeadLetter.from_record(0, 1, b"cust-a", encode(event), headers, clock.time())
    fresh = dc.replace(fresh, original_timestamp=clock.time() - 60)
    old = dc.replace(fresh, id="0-2", original_timestamp=clock.time() - 8 * 86400)
    sent: list[str] = []

    class Store:
        async def find(self, where: object) -> list[DeadLetter]:
            return [fresh, old]

        async def replay_count(self, agent: str, key: str) -> int:
            return 0

        async def claim_replay(self, letter: DeadLetter) -> bool:
            return True

        async def release_replay(self, letter: DeadLetter) -> None:
            return None

        async def record_replay(self, letter: DeadLetter, at: object, by: str) -> None:
            sent.append(letter.id)

    async def send(*_: object) -> None:
        return None

    store: Any = Store()
    service = DeadLetters(
        store, send, replay_limit=3, redelivery_topic=lambda a: a,
        known_agents=lambda: ["analytics"], max_age_seconds=6 * 86400,
    )  # fmt: skip
    result = asyncio.run(service.replay(parse_filter({}), "test"))
    assert result.replayed == ["0-1"] and sent == ["0-1"]
    [refused] = result.refused
    assert refused["id"] == "0-2" and "PIPELINE_REPLAY_MAX_AGE_SECONDS" in refused["reason"]


def test_a_letter_discarded_while_a_replay_runs_is_never_sent_and_a_failed_send_reopens() -> None:
    """The replay finds its letters, then an operator discards one before it is sent: that one
    is not sent and stays discarded. A send that fails leaves its letter open to replay."""
    from pipeline.adapters.memory import MemoryDatabase, MemoryDeadLetterStore
    from pipeline.domain.audit import Audit
    from pipeline.services.dead_letters import DeadLetters

    headers = failures.dead_letter_headers(
        [("event_id", b"e")], _failure(3), "permanent", ValueError("v"),
        datetime(2026, 11, 26, 1, tzinfo=UTC),
    )  # fmt: skip
    made = [DeadLetter.from_record(0, n, f"cust-{n}".encode(), encode(order_created(f"c{n}")),
                                   headers, time.time()) for n in (1, 2, 3)]  # fmt: skip
    audit = Audit("bob", "worthless", datetime.now(UTC))

    class Racing(MemoryDeadLetterStore):
        async def find(self, where: Any) -> list[DeadLetter]:
            found = await super().find(where)
            await self.discard([found[1]], audit)  # the operator, between find and send
            return found

    store = Racing(MemoryDatabase())
    for letter in made:
        asyncio.run(store.add(letter))
    sent: list[bytes | None] = []

    async def send(topic: str, key: bytes | None, *_: object) -> None:
        if key == b"cust-3":
            raise KafkaConnectionError("the broker is gone")
        sent.append(key)

    service = DeadLetters(store, send, replay_limit=3, redelivery_topic=lambda a: a,
                          known_agents=lambda: ["analytics"])  # fmt: skip
    with pytest.raises(KafkaConnectionError):
        asyncio.run(service.replay(parse_filter({}), "test"))
    assert sent == [b"cust-1"]
    status = {d.id: d.status for d in asyncio.run(store.find(parse_filter({})))}
    assert status == {made[0].id: "replayed", made[1].id: "discarded", made[2].id: "open"}
    assert [r["requested_by"] for r in asyncio.run(store.replays(made[0].id))] == ["test"]
    assert asyncio.run(store.replays(made[2].id)) == []
