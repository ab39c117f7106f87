"""The notification agent through Faust's test_context (memory store, no broker): one message
per order, by the ``notifications_sent`` table, whichever worker handles the decision.

The fake sender is not idempotent (a mail server is not): every message it is handed counts,
so the table alone is what keeps an order to one message.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import agents.notifications as notifications
from pipeline.app import app
from pipeline.domain.events import (
    OrderConfirmed,
    OrderRejected,
    derived_event_id,
    encode,
)
from pipeline.domain.notifications import Message, NotificationSent, needs_notice
from pipeline.settings import load_settings
from pipeline.streaming import consume, versioned_store, versions
from tables.notifications import kept_seconds, notifications_sent, notifications_sent_table

Changelog = list[tuple[str, bytes, bytes]]


@dataclass
class Outbox:
    """Stands in for the mail server: every message handed over is delivered."""

    delivered: list[Message] = field(default_factory=list)
    failures: int = 0  # the next sends that fail (the server is down)

    async def send(self, message: Message) -> bool:
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("mail server down")
        self.delivered.append(message)
        return True


@dataclass
class Senders:
    current: Outbox


@pytest.fixture
def set_aside(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Topics of the records sent to retry or dead-letter topics, collected instead of sent."""
    sent: list[str] = []

    async def collect(topic: str, *_: object, **__: object) -> None:
        sent.append(topic)

    monkeypatch.setattr(consume, "send_reliably", collect)
    return sent


@pytest.fixture
async def changelog(
    monkeypatch: pytest.MonkeyPatch, set_aside: list[str]
) -> AsyncIterator[Changelog]:
    """Changelog records the table writes send (table, key, value), collected instead of sent."""
    records: Changelog = []

    async def record(table: Any, event: Any, key: bytes, raw: bytes) -> None:
        records.append((table.name, key, raw))

    monkeypatch.setattr(versions, "_send", record)
    handle_record = consume.handle_record

    async def counted(message: Any, *args: Any) -> None:
        await handle_record(message, *args)
        handled.append(message)

    monkeypatch.setattr(consume, "handle_record", counted)
    app.finalize()
    app.flow_control.resume()
    yield records


@pytest.fixture
def mail(monkeypatch: pytest.MonkeyPatch) -> Outbox:
    outbox = Outbox()
    monkeypatch.setattr(notifications, "senders", Senders(outbox))
    return outbox


def confirmed(order_id: str) -> OrderConfirmed:
    return OrderConfirmed(derived_event_id(order_id, "OrderConfirmed"), order_id, "cust-1",
                          "cust-1@example.com")  # fmt: skip


def rejected(order_id: str) -> OrderRejected:
    return OrderRejected(derived_event_id(order_id, "OrderRejected"), order_id, "cust-1",
                         "cust-1@example.com", "not enough stock")  # fmt: skip


async def deliver(*decisions: OrderConfirmed | OrderRejected) -> None:
    """Hand the decisions to the agent and return once it has done with every one of them
    (``put`` returns when the stream takes a record, before the agent has handled it)."""
    done = len(handled)
    async with notifications.notify_customers.test_context() as agent:
        for decision in decisions:
            await agent.put(encode(decision), key=decision.order_id.encode())
        async with asyncio.timeout(10):
            while len(handled) < done + len(decisions):
                await asyncio.sleep(0.01)


# Records the agent has done with: handled, or set aside for a retry or a dead letter.
handled: list[object] = []


def move_partition(records: Changelog, *order_ids: str) -> None:
    """The partition's next owner, on another host: its store holds what it recovered from the
    changelog records given, nothing of the previous owner's disk or memory."""
    versions.reset()
    for order_id in order_ids:
        notifications_sent_table.data.pop(order_id.encode(), None)
    for name, key, raw in records:
        if name == "notifications_sent" and key.decode() in order_ids:
            notifications_sent_table.data[key] = raw


def new_order() -> str:
    return str(uuid.uuid4())


def test_an_order_is_due_a_notice_only_when_none_was_sent() -> None:
    assert needs_notice(None)
    assert not needs_notice(NotificationSent("o-1", "evt-1", 1_767_225_600))


def test_an_entry_is_a_few_dozen_bytes_whatever_the_order() -> None:
    order_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    entry = NotificationSent(order_id, derived_event_id(order_id, "OrderConfirmed"), 9_999_999_999)
    raw = versions.encode(entry.version + 1, entry.to_value())
    assert len(raw) == 78  # the size stated in tables.notifications
    assert NotificationSent.from_value(order_id, json.loads(raw)) == entry


def test_entries_expire_only_past_every_redelivery_of_their_decision() -> None:
    short = load_settings({"PIPELINE_REPLAY_MAX_AGE_SECONDS": "3600",
                           "PIPELINE_DEDUPE_HORIZON_SECONDS": "600"})  # fmt: skip
    assert kept_seconds(short) == 3600 + 600 + 86400  # replays, repeats, a day of lag
    # By default past the topics' 7-day retention too.
    assert kept_seconds(load_settings({})) >= 7 * 86400
    # The same span in the store (RocksDB's TTL) and in the changelog a new owner reads.
    kept = kept_seconds(load_settings())
    assert notifications_sent_table.options["ttl"] == kept
    assert notifications_sent_table.changelog_topic.config == {
        "cleanup.policy": "compact,delete", "retention.ms": str(kept * 1000)
    }  # fmt: skip


async def test_each_order_is_notified_once_however_often_its_decision_comes(
    changelog: Changelog, mail: Outbox
) -> None:
    first, second = new_order(), new_order()
    await deliver(confirmed(first), confirmed(first), rejected(second), confirmed(first))

    assert [m.idempotency_key for m in mail.delivered] == [
        confirmed(first).event_id, rejected(second).event_id
    ]  # fmt: skip
    sent = notifications_sent.get(first)
    assert sent is not None and sent.event_id == confirmed(first).event_id
    # One entry per order, and each repeat sends the stored entry to the changelog again (its record
    # may never have reached the changelog before a crash: pipeline.streaming.versions.resend).
    keys = [key.decode() for name, key, _ in changelog if name == "notifications_sent"]
    assert keys == [first, first, second, first]
    assert {versioned_store.version_of(raw) for _, _, raw in changelog} == {1}


async def test_a_decision_redelivered_to_the_partitions_next_owner_sends_nothing(
    changelog: Changelog, mail: Outbox
) -> None:
    orders = [new_order() for _ in range(3)]
    await deliver(*(confirmed(o) for o in orders))  # worker A, its records acknowledged
    assert len(mail.delivered) == 3

    move_partition(changelog, *orders)  # worker B, another host: A's disk is not there
    await deliver(*(confirmed(o) for o in orders))

    assert len(mail.delivered) == 3


async def test_a_second_decision_for_a_notified_order_sends_nothing(
    changelog: Changelog, mail: Outbox
) -> None:
    order = new_order()
    await deliver(confirmed(order), rejected(order))
    assert [m.idempotency_key for m in mail.delivered] == [confirmed(order).event_id]


async def test_a_crash_before_the_entry_reaches_the_changelog_repeats_the_message_once(
    changelog: Changelog, mail: Outbox
) -> None:
    order = new_order()
    await deliver(confirmed(order))  # worker A mails, then dies before its record is acked
    changelog.clear()

    move_partition(changelog, order)  # worker B recovers nothing for this order
    await deliver(confirmed(order), confirmed(order))

    # The stated crash window: one duplicate, with the same idempotency key (Message-ID).
    assert [m.idempotency_key for m in mail.delivered] == [confirmed(order).event_id] * 2
    assert [key.decode() for _, key, _ in changelog] == [order, order]


async def test_a_failed_send_writes_no_entry_so_the_retry_sends_once(
    changelog: Changelog, mail: Outbox, set_aside: list[str]
) -> None:
    order = new_order()
    mail.failures = 100  # down for every attempt in place: the decision goes to a retry topic
    await deliver(confirmed(order))
    assert notifications_sent.get(order) is None and mail.delivered == []
    assert len(set_aside) == 1 and "retry" in set_aside[0]

    mail.failures = 1  # back from the retry topic: one more failure, then the server answers
    await deliver(confirmed(order), confirmed(order))

    assert [m.idempotency_key for m in mail.delivered] == [confirmed(order).event_id]
    assert notifications_sent.get(order) is not None
