"""The contract every order and outbox repository keeps (pipeline.services.ports), whatever
holds the rows: run against memory (tests/unit/test_repositories.py), SQLite and PostgreSQL
(tests/integration/test_repositories.py). A subclass provides the ``repos`` fixture: an
order repository and an outbox repository over one empty database (``operations``: those and
the operator's outbox repository)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from pipeline.domain.audit import Audit
from pipeline.domain.dead_letters import DeadLetter, Filter
from pipeline.domain.events import OrderCancelled, OrderCreated, decode_order_event
from pipeline.domain.orders import CancelOutcome, IdempotencyConflict, OrderRow, StoredResponse
from pipeline.services.ports import (
    DeadLetterRepository,
    OrderRepository,
    OutboxAdminRepository,
    OutboxRepository,
)
from tests.conftest import T0, order_created

Repos = tuple[OrderRepository, OutboxRepository]
Operations = tuple[OrderRepository, OutboxRepository, OutboxAdminRepository]
OPERATOR = Audit("alice", "the topic's limit was raised", T0 + timedelta(hours=1))
LONG_AGO = T0 - timedelta(days=1)  # rows created after this are within retention
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
        # Written at the default write version: the shape the previous release reads.
        assert row.schema_version == 1
        assert json.loads(row.payload)["customer_email"] == "alice@example.com"
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


class OperationsContract:
    """The operator's outbox verbs and a customer's orders (``operations`` fixture)."""

    async def _rows(self, ops: Operations, customers: list[str]) -> list[int]:
        orders, outbox, _ = ops
        for n, customer in enumerate(customers):
            await orders.create_order(order_created(customer, at=T0 + timedelta(seconds=n)))
        return [r.id for r in await outbox.pending(100)]

    async def test_parked_rows_are_listed_a_page_at_a_time(self, operations: Operations) -> None:
        _, outbox, admin = operations
        ids = await self._rows(operations, ["a", "b", "c", "d", "e"])
        await outbox.record([ids[1]], [(i, f"too large {i}") for i in ids if i != ids[1]], T0)
        first = await admin.parked_page(None, 2)
        assert [r.id for r in first] == [ids[0], ids[2]]
        assert (first[0].partition_key, first[0].attempts, first[0].last_error) == (
            "a", 1, f"too large {ids[0]}")  # fmt: skip
        second = await admin.parked_page(first[-1].id, 2)
        assert [r.id for r in second] == [ids[3], ids[4]]
        assert await admin.parked_page(second[-1].id, 2) == []

    async def test_a_requeue_never_sends_a_row_after_a_later_one_of_its_key_unasked(
        self, operations: Operations
    ) -> None:
        _, outbox, admin = operations
        a1, b1, a2, c1 = await self._rows(operations, ["a", "b", "a", "c"])
        await outbox.record([a2], [(a1, "too large"), (b1, "too large"), (c1, "too large")], T0)
        done = await admin.requeue([a1, b1, 999_999, a2], OPERATOR, out_of_order=False,
                                   verifiable_since=LONG_AGO)  # fmt: skip
        assert done.done == [b1]
        refused = {r["id"]: r["reason"] for r in done.refused}
        assert set(refused) == {a1, 999_999, a2}
        assert f"{a2} (published)" in refused[a1] and "out_of_order" in refused[a1]
        assert refused[a2] == "not parked: it is published"
        assert [r.id for r in await outbox.pending(10)] == [b1]
        # A row older than the outbox retention cannot be checked: refused too.
        old = await admin.requeue([c1], OPERATOR, out_of_order=False,
                                  verifiable_since=T0 + timedelta(days=1))  # fmt: skip
        assert old.done == [] and "retention" in old.refused[0]["reason"]
        forced = await admin.requeue([a1, c1], OPERATOR, out_of_order=True,
                                     verifiable_since=T0 + timedelta(days=1))  # fmt: skip
        assert forced.done == [a1, c1] and forced.refused == []
        assert [r.id for r in await outbox.pending(10)] == [a1, b1, c1]
        [record] = await admin.actions(str(a1))
        assert (record["actor"], record["action"], record["reason"]) == (
            "alice", "outbox.requeue", "the topic's limit was raised")  # fmt: skip
        assert record["detail"]["parked_reason"] == "too large"
        assert record["detail"]["out_of_order"] is True

    async def test_rows_of_one_key_requeued_together_go_back_in_id_order(
        self, operations: Operations
    ) -> None:
        _, outbox, admin = operations
        a1, a2 = await self._rows(operations, ["a", "a"])
        await outbox.record([], [(a1, "too large"), (a2, "too large")], T0)
        done = await admin.requeue([a2, a1], OPERATOR, out_of_order=False,
                                   verifiable_since=LONG_AGO)  # fmt: skip
        assert done.done == [a1, a2] and done.refused == []
        assert [r.id for r in await outbox.pending(10)] == [a1, a2]

    async def test_a_pending_later_row_of_the_key_also_holds_a_requeue_back(
        self, operations: Operations
    ) -> None:
        _, outbox, admin = operations
        a1, _a2 = await self._rows(operations, ["a", "a"])
        await outbox.record([], [(a1, "too large")], T0)  # a2 pending: maybe in flight
        done = await admin.requeue([a1], OPERATOR, out_of_order=False, verifiable_since=LONG_AGO)
        assert done.done == [] and "(pending)" in done.refused[0]["reason"]

    async def test_a_discarded_row_is_never_pending_again_and_is_recorded(
        self, operations: Operations
    ) -> None:
        _, outbox, admin = operations
        a1, b1 = await self._rows(operations, ["a", "b"])
        await outbox.record([], [(a1, "too large")], T0)
        why = Audit("bob", "a test order, worthless", T0 + timedelta(hours=2))
        done = await admin.discard([a1, b1], why)
        assert done.done == [a1] and done.refused == [
            {"id": b1, "reason": "not parked: it is pending"}
        ]
        assert await outbox.counts() == {"discarded": 1, "pending": 1}
        assert await admin.parked_page(None, 10) == []
        again = await admin.requeue([a1], OPERATOR, out_of_order=True, verifiable_since=LONG_AGO)
        assert again.done == [] and again.refused[0]["reason"] == "not parked: it is discarded"
        [record] = await admin.actions(str(a1))
        assert (record["actor"], record["action"], record["reason"]) == (
            "bob", "outbox.discard", "a test order, worthless")  # fmt: skip
        assert record["at"] == T0 + timedelta(hours=2)
        assert await admin.actions(str(b1)) == []

    async def test_a_customers_orders_come_newest_first_a_page_at_a_time(
        self, operations: Operations
    ) -> None:
        orders, _, _ = operations
        made = []
        for n in range(7):
            # Two orders share each second: the id breaks the tie.
            event = order_created("dana", f"{n}.00", at=T0 + timedelta(seconds=n // 2))
            await orders.create_order(event)
            made.append(event)
        await orders.create_order(order_created("other", at=T0 + timedelta(seconds=9)))
        newest_first = sorted(made, key=lambda e: (e.created_at, e.order_id), reverse=True)
        seen, before = [], None
        while True:
            page = await orders.customer_orders("dana", before, 3)
            assert len(page) <= 3
            if not page:
                break
            seen += page
            last = page[-1]
            before = (datetime.fromisoformat(last["created_at"]), last["order_id"])
        assert [o["order_id"] for o in seen] == [e.order_id for e in newest_first]
        assert (
            seen[0]["status"] == "created"
            and seen[0]["total"] == newest_first[0].total.to_eng_string()
        )
        assert await orders.customer_orders("nobody", None, 3) == []


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
        assert await letters.claim_replay(one)
        await letters.record_replay(one, at, "cli")
        await letters.record_replay(one, at + timedelta(minutes=1), "http")
        assert await letters.replay_count("analytics", "e-1") == 2
        assert await letters.replay_count("analytics", other.event_key) == 0
        assert [r["requested_by"] for r in await letters.replays("0-1")] == ["cli", "http"]
        assert [d.id for d in await letters.find(Filter(status="replayed"))] == ["0-1"]
        assert [d.id for d in await letters.find(Filter(status="open"))] == ["0-2"]

    async def test_a_discarded_letter_cannot_be_claimed_for_replay(
        self, letters: DeadLetterRepository
    ) -> None:
        """Replay claims a letter before it sends it: a discard that came first wins, one that
        comes after finds it replayed; a claim whose send failed is undone."""
        one, two, three = letter(1), letter(2), letter(3)
        for made in (one, two, three):
            await letters.add(made)
        assert await letters.discard([one], OPERATOR) == ["0-1"]
        assert not await letters.claim_replay(one)  # found open, discarded before its claim
        assert await letters.claim_replay(two)
        assert await letters.discard([two], OPERATOR) == ["0-2"]  # after: it was replayed
        assert await letters.claim_replay(three)
        await letters.release_replay(three)  # its send failed: open again, to replay later
        status = {d.id: d.status for d in await letters.find(Filter())}
        assert status == {"0-1": "discarded", "0-2": "discarded", "0-3": "open"}
        assert await letters.replays("0-1") == []

    async def test_a_discarded_letter_is_marked_once_and_stays_so(
        self, letters: DeadLetterRepository
    ) -> None:
        one, other = letter(1, event_id="e-1"), letter(2)
        await letters.add(one)
        await letters.add(other)
        assert await letters.discard([one], OPERATOR) == ["0-1"]
        assert await letters.discard([one], OPERATOR) == []  # discarded already: unchanged
        assert [d.id for d in await letters.find(Filter(status="discarded"))] == ["0-1"]
        assert [d.id for d in await letters.find(Filter(status="open"))] == ["0-2"]
        assert sorted(await letters.counts()) == [("poison", "discarded", 1), ("poison", "open", 1)]
