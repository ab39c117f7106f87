"""The contract every order and outbox repository keeps (pipeline.services.ports), whatever
holds the rows: run against memory (tests/unit/test_repositories.py), SQLite and PostgreSQL
(tests/integration/test_repositories.py). A subclass provides the ``repos`` fixture: an
order repository and an outbox repository over one empty database."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from pipeline.domain.dead_letters import DeadLetter, Filter
from pipeline.domain.events import OrderCancelled, OrderCreated, decode_order_event
from pipeline.domain.orders import CancelOutcome, IdempotencyConflict, OrderRow, StoredResponse
from pipeline.services.ports import DeadLetterRepository, OrderRepository, OutboxRepository
from tests.conftest import T0, order_created

Repos = tuple[OrderRepository, OutboxRepository]
ANSWER = {"order_id": "o", "status": "created", "total": "10.50"}


def cancelled(order: OrderRow) -> OrderCancelled:
    return OrderCancelled(
        event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"cancel:{order.order_id}")),
        order_id=order.order_id,
        customer_id=order.customer_id, total=order.total, cancelled_at=T0 + timedelta(minutes=1),
        items=order.items, previous_status=order.status,
    )  # fmt: skip


class RepositoryContract:
    async def test_an_order_and_its_outbox_row_are_written_together(self, repos: Repos) -> None:
        orders, outbox = repos
        event = order_created("alice", "12.34")
        assert await orders.create_order(event) is None
        stored = await orders.get_order(event.order_id)
        assert stored is not None
        assert (stored["customer_id"], stored["status"], stored["total"]) == (
            "alice", "created", "12.34")  # fmt: skip
        assert stored["items"] == [{"sku": "sku-1", "quantity": 1, "unit_price": "12.34"}]
        [row] = await outbox.pending(10)
        assert (row.event_id, row.partition_key, row.event_type) == (
            event.event_id, "alice", "OrderCreated")  # fmt: skip
        assert decode_order_event(row.payload) == event
        assert await orders.get_order("nobody") is None

    async def test_an_idempotency_key_answers_its_first_request_again(self, repos: Repos) -> None:
        orders, outbox = repos
        key = ("key-1", "fingerprint-a", 201, ANSWER)
        assert await orders.create_order(order_created(), key) is None
        again = await orders.create_order(order_created(), key)
        assert again == StoredResponse(201, ANSWER)
        with pytest.raises(IdempotencyConflict):
            await orders.create_order(order_created(), ("key-1", "fingerprint-b", 201, ANSWER))
        assert len(await outbox.pending(10)) == 1  # one order, one row

    async def test_a_purged_key_no_longer_answers(self, repos: Repos) -> None:
        orders, outbox = repos
        key = ("key-2", "f", 201, ANSWER)
        await orders.create_order(order_created(at=T0), key)
        assert await orders.purge_idempotency_keys(T0 - timedelta(seconds=1)) == 0
        assert await orders.purge_idempotency_keys(T0 + timedelta(seconds=1)) == 1
        assert await orders.create_order(order_created(at=T0), key) is None
        assert len(await outbox.pending(10)) == 2

    async def test_cancel_writes_its_event_once_and_reports_why_not(self, repos: Repos) -> None:
        orders, outbox = repos
        event = order_created("bob", "7.00")
        await orders.create_order(event)
        outcome, row = await orders.cancel_order(event.order_id, cancelled)
        assert outcome is CancelOutcome.CANCELLED and row is not None
        assert (row.status, row.total, row.items) == ("created", Decimal("7.00"), event.items)
        outcome, row = await orders.cancel_order(event.order_id, cancelled)
        assert outcome is CancelOutcome.CONFLICT and row is not None and row.status == "cancelled"
        assert await orders.cancel_order("nobody", cancelled) == (CancelOutcome.NOT_FOUND, None)
        assert [r.event_type for r in await outbox.pending(10)] == [
            "OrderCreated", "OrderCancelled"]  # fmt: skip
        stored = await orders.get_order(event.order_id)
        assert stored is not None and stored["status"] == "cancelled"

    async def test_a_decision_moves_a_created_order_only(self, repos: Repos) -> None:
        orders, _ = repos
        confirmed, rejected = order_created(), order_created()
        for event in (confirmed, rejected):
            await orders.create_order(event)
        at = T0 + timedelta(minutes=2)
        assert await orders.decide_order(confirmed.order_id, "confirmed", at) == "confirmed"
        assert await orders.decide_order(confirmed.order_id, "rejected", at) == "confirmed"
        assert await orders.decide_order(rejected.order_id, "rejected", at) == "rejected"
        assert await orders.decide_order("nobody", "confirmed", at) is None
        outcome, _ = await orders.cancel_order(confirmed.order_id, cancelled)
        assert outcome is CancelOutcome.CANCELLED  # a confirmed order can still be cancelled
        outcome, row = await orders.cancel_order(rejected.order_id, cancelled)
        assert outcome is CancelOutcome.CONFLICT and row is not None and row.status == "rejected"

    async def test_the_outbox_marks_rows_published_or_parked(self, repos: Repos) -> None:
        orders, outbox = repos
        events = [order_created(f"c{n}", at=T0 + timedelta(seconds=n)) for n in range(4)]
        for event in events:
            await orders.create_order(event)
        rows = await outbox.pending(10)
        assert [r.event_id for r in rows] == [e.event_id for e in events]  # commit order
        assert [r.event_id for r in await outbox.pending(2)] == [e.event_id for e in events[:2]]
        assert await outbox.backlog() == (4, T0)
        at = T0 + timedelta(minutes=1)
        await outbox.record([rows[0].id, rows[1].id], [(rows[2].id, "x" * 5000)], at)
        assert [r.id for r in await outbox.pending(10)] == [rows[3].id]
        assert await outbox.backlog() == (1, T0 + timedelta(seconds=3))
        assert await outbox.counts() == {"published": 2, "parked": 1, "pending": 1}
        assert await outbox.parked_count() == 1
        assert await outbox.published_since(at) == 2
        assert await outbox.published_since(at + timedelta(seconds=1)) == 0
        [parked] = await outbox.parked()
        assert parked["event_id"] == events[2].event_id and 0 < len(parked["last_error"]) < 5000
        assert await outbox.purge_published(at) == 0  # not older than the cutoff
        assert await outbox.purge_published(at + timedelta(seconds=1), chunk=1) == 2
        assert await outbox.counts() == {"parked": 1, "pending": 1}
        await outbox.record([], [], at)  # nothing to mark: nothing happens

    async def test_an_order_with_many_lines_keeps_their_order(self, repos: Repos) -> None:
        orders, _ = repos
        base = order_created("carol")
        lines = tuple(dataclasses.replace(base.items[0], sku=f"sku-{n:02}") for n in range(12))
        event: OrderCreated = dataclasses.replace(
            base, items=lines, total=Decimal("10.50") * len(lines)
        )
        await orders.create_order(event)
        stored = await orders.get_order(event.order_id)
        assert stored is not None and [i["sku"] for i in stored["items"]] == [
            line.sku for line in lines]  # fmt: skip


def letter(n: int, *, agent: str = "analytics", reason: str = "poison", minute: int = 0,
           event_id: str | None = None) -> DeadLetter:  # fmt: skip
    at = T0 + timedelta(minutes=minute)
    return DeadLetter(
        id=f"0-{n}", agent=agent, reason=reason, error_type="ValueError", error_message="bad",
        stacktrace=None, event_id=event_id, event_type="OrderCreated",
        original_topic="orders.events", original_partition=1, original_offset=n,
        original_timestamp=at.timestamp(), attempts=1, replays=0, first_failure_at=at,
        dead_lettered_at=at, record_key=b"c-1", record_value=b"\x00{not json",
        headers=[("event_id", b"e"), ("x-raw", b"\xff\x00")],
    )  # fmt: skip


class DeadLetterContract:
    """The dead-letter index (pipeline.services.ports.DeadLetterRepository); a subclass gives
    the ``letters`` fixture over one empty database."""

    async def test_a_letter_is_indexed_once_and_read_back_as_it_was(
        self, letters: DeadLetterRepository
    ) -> None:
        first = letter(1, event_id="e-1")
        assert await letters.add(first) is True
        assert await letters.add(first) is False
        assert await letters.find(Filter()) == [first]

    async def test_filters_select_and_order_the_letters(
        self, letters: DeadLetterRepository
    ) -> None:
        made = [
            letter(1, minute=5, event_id="e-1"),
            letter(2, minute=1, agent="inventory", reason="retries-exhausted"),
            letter(3, minute=3, event_id="e-3"),
            letter(4, minute=3),
        ]
        for one in made:
            await letters.add(one)
        ids = [d.id for d in await letters.find(Filter())]
        assert ids == ["0-2", "0-3", "0-4", "0-1"]  # by time, then id
        assert [d.id for d in await letters.find(Filter(agent="inventory"))] == ["0-2"]
        assert [d.id for d in await letters.find(Filter(reason="poison", limit=2))] == [
            "0-3", "0-4"]  # fmt: skip
        assert [d.id for d in await letters.find(Filter(event_id="e-3"))] == ["0-3"]
        window = Filter(since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=5))
        assert [d.id for d in await letters.find(window)] == ["0-3", "0-4"]
        assert [d.id for d in await letters.find(Filter(ids=("0-1", "0-9")))] == ["0-1"]
        assert sorted(await letters.counts()) == [
            ("poison", "open", 3), ("retries-exhausted", "open", 1)]  # fmt: skip

    async def test_a_replay_is_recorded_counted_and_marks_its_letter(
        self, letters: DeadLetterRepository
    ) -> None:
        one, other = letter(1, event_id="e-1"), letter(2)
        await letters.add(one)
        await letters.add(other)
        at = T0 + timedelta(hours=1)
        await letters.record_replay(one, at, "cli")
        await letters.record_replay(one, at + timedelta(minutes=1), "http")
        assert await letters.replay_count("analytics", "e-1") == 2
        assert await letters.replay_count("analytics", other.event_key) == 0
        assert [r["requested_by"] for r in await letters.replays("0-1")] == ["cli", "http"]
        assert [d.id for d in await letters.find(Filter(status="replayed"))] == ["0-1"]
        assert [d.id for d in await letters.find(Filter(status="open"))] == ["0-2"]
