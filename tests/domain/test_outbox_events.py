"""Other services' events: what may become an outbox row, and the error that names the field."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.domain.outbox import InvalidOutboxEvent, OutboxTopics, outbox_event

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TOPICS = OutboxTopics.from_patterns(["payments.events", "audit.*"], "p1.")


def event(**overrides: Any) -> Any:
    args: dict[str, Any] = {
        "topic": "p1.payments.events", "key": "acct-1", "value": {"amount": "1.00"},
        "event_type": "PaymentCaptured", "created_at": AT, "topics": TOPICS,
        "max_value_bytes": 1024,
    }  # fmt: skip
    args.update(overrides)
    return outbox_event(**args)


def test_a_valid_event_keeps_what_it_was_given() -> None:
    e = event(headers={"source": "payments", "trace": b"t-1"}, aggregate_id="pay-9")
    assert (e.topic, e.key, e.event_type, e.aggregate_id) == (
        "p1.payments.events",
        "acct-1",
        "PaymentCaptured",
        "pay-9",
    )
    assert json.loads(e.value) == {"amount": "1.00"}
    assert e.headers == (("source", "payments"), ("trace", "t-1"))
    assert uuid.UUID(e.event_id).version == 4


def test_bytes_and_text_values_are_kept_as_they_are() -> None:
    assert event(value=b'{"a": 1}').value == '{"a": 1}'
    assert event(value="plain text").value == "plain text"


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("p1.payments.events", True),
        ("p1.audit.logins", True),  # a prefix pattern
        ("p1.audit.", False),  # the prefix alone is no topic
        ("payments.events", False),  # without the deployment's prefix
        ("p1.orders.events", False),  # the order service's topic is not listed
        ("p1.payments.events2", False),
    ],
)
def test_only_allowed_topics_pass(topic: str, allowed: bool) -> None:
    if allowed:
        assert event(topic=topic).topic == topic
    else:
        with pytest.raises(InvalidOutboxEvent) as err:
            event(topic=topic)
        assert err.value.field == "topic" and "PIPELINE_OUTBOX_TOPICS" in str(err.value)


def test_no_topics_configured_refuses_every_topic_and_says_so() -> None:
    with pytest.raises(InvalidOutboxEvent, match="PIPELINE_OUTBOX_TOPICS is empty"):
        event(topics=OutboxTopics())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"topic": "p1.bad topic"}, "topic"),
        ({"topic": ""}, "topic"),
        ({"key": ""}, "key"),
        ({"key": "k" * 65}, "key"),
        ({"key": b"acct-1"}, "key"),
        ({"value": b"\xff\xfe"}, "value"),
        ({"value": "x" * 1025}, "value"),
        ({"value": {"n": float("nan")}}, "value"),
        ({"value": {"when": AT}}, "value"),
        ({"value": 12}, "value"),
        ({"event_type": ""}, "event_type"),
        ({"event_type": "E" * 65}, "event_type"),
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"schema_version": 0}, "schema_version"),
        ({"schema_version": True}, "schema_version"),
        ({"headers": {"event_id": "x"}}, "headers"),
        ({"headers": {f"h{i}": "v" for i in range(17)}}, "headers"),
        ({"headers": {"h": "v" * 5000}}, "headers"),
        ({"headers": {"h": 1}}, "headers"),
        ({"aggregate_type": "a" * 33}, "aggregate_type"),
        ({"aggregate_id": "a" * 37}, "aggregate_id"),
        ({"created_at": datetime(2026, 12, 1)}, "created_at"),  # noqa: DTZ001 - naive on purpose
    ],
)
def test_a_bad_field_is_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidOutboxEvent) as err:
        event(**overrides)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


def test_a_given_event_id_is_kept_in_canonical_form() -> None:
    given = uuid.uuid4()
    assert event(event_id=str(given).upper()).event_id == str(given)
