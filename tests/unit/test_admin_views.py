"""The operator's views offline, over the in-memory stores: what they answer for good and bad
input, in the error shape, with the field at fault."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from pipeline.adapters.memory import (
    MemoryDatabase,
    MemoryDeadLetterStore,
    MemoryOrderStore,
    MemoryOutboxAdmin,
    MemoryOutboxStore,
)
from pipeline.app import app
from pipeline.bootstrap import runtime
from pipeline.domain.dead_letters import Filter
from pipeline.services.dead_letters import DeadLetters
from pipeline.services.outbox_admin import OutboxOperations
from pipeline.web.admin import (
    CustomerOrders,
    DiscardDeadLetters,
    DiscardOutbox,
    InventoryList,
    ParkedOutbox,
    RequeueOutbox,
    WorkerInventory,
)
from tests.conftest import T0, order_created
from tests.repository_contract import letter


def _answer(response: Any) -> tuple[int, Any]:
    return response.status, json.loads(response.body)


def _get(path: str) -> Any:
    return make_mocked_request("GET", path)


def _post(path: str, body: Any) -> Any:
    from unittest import mock

    from aiohttp.streams import StreamReader

    raw = json.dumps(body).encode()
    payload = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=mock.Mock())
    payload.feed_data(raw)
    payload.feed_eof()
    return make_mocked_request("POST", path, headers={"Content-Length": str(len(raw))},
                               payload=payload)  # fmt: skip


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch) -> MemoryDatabase:
    app.finalize()
    memory = MemoryDatabase()
    operations = OutboxOperations(MemoryOutboxAdmin(memory), retention=timedelta(days=10_000))
    monkeypatch.setitem(runtime.__dict__, "outbox_operations", operations)
    monkeypatch.setitem(runtime.__dict__, "order_store", MemoryOrderStore(memory))

    async def never(*_: Any) -> None:
        raise AssertionError("nothing is replayed here")

    letters = DeadLetters(MemoryDeadLetterStore(memory), never, replay_limit=3,
                          redelivery_topic=str, known_agents=lambda: ["analytics"])  # fmt: skip
    monkeypatch.setitem(runtime.__dict__, "dead_letters", letters)
    return memory


async def _parked(db: MemoryDatabase, customers: list[str]) -> list[int]:
    orders, outbox = MemoryOrderStore(db), MemoryOutboxStore(db)
    for n, customer in enumerate(customers):
        await orders.create_order(order_created(customer, at=T0 + timedelta(seconds=n)))
    ids = [r.id for r in await outbox.pending(10)]
    await outbox.record([], [(i, "MessageSizeTooLargeError: too big") for i in ids], T0)
    return ids


async def test_parked_rows_are_listed_with_why_and_a_cursor(db: MemoryDatabase) -> None:
    ids = await _parked(db, ["a", "b", "c"])
    status, body = _answer(
        await ParkedOutbox(app, app.web).get(_get("/admin/outbox/parked?limit=2"))
    )
    assert status == 200 and [r["id"] for r in body["parked"]] == ids[:2]
    assert body["next"] == ids[1]
    first = body["parked"][0]
    assert (first["key"], first["attempts"], first["parked_reason"]) == (
        "a", 1, "MessageSizeTooLargeError: too big")  # fmt: skip
    assert first["topic"].endswith("orders.events") and first["age_seconds"] > 0
    path = f"/admin/outbox/parked?after={ids[1]}"
    status, body = _answer(await ParkedOutbox(app, app.web).get(_get(path)))
    assert [r["id"] for r in body["parked"]] == ids[2:] and body["next"] is None


@pytest.mark.parametrize(
    ("query", "at_fault"),
    [("limit=0", ["limit"]), ("after=-1", ["after"]), ("after=1&after=2", ["after"]),
     ("offset=5", ["offset"]), ("after=x&limit=9999", ["after", "limit"])],
)  # fmt: skip
async def test_a_bad_page_of_parked_rows_is_422_naming_the_field(
    db: MemoryDatabase, query: str, at_fault: list[str]
) -> None:
    status, body = _answer(await ParkedOutbox(app, app.web).get(_get(f"/x?{query}")))
    assert (status, body["error"]) == (422, "validation_failed")
    assert [p["field"] for p in body["detail"]] == at_fault


async def test_requeue_and_discard_over_http(db: MemoryDatabase) -> None:
    a1, b1, a2 = await _parked(db, ["a", "b", "a"])
    status, body = _answer(await RequeueOutbox(app, app.web).post(_post("/", {"ids": [a1, b1]})))
    assert status == 200 and body == {"requeued": [a1, b1], "refused": []}
    status, body = _answer(await RequeueOutbox(app, app.web).post(_post("/", {})))
    assert status == 422 and body["detail"][0]["field"] == "ids"
    status, body = _answer(await DiscardOutbox(app, app.web).post(_post("/", {"ids": [a2]})))
    assert status == 422 and [p["field"] for p in body["detail"]] == ["why"]
    status, body = _answer(await DiscardOutbox(app, app.web).post(
        _post("/", {"ids": [a2, a1], "why": "test"})))  # fmt: skip
    refused = [{"id": a1, "reason": "not parked: it is pending"}]
    assert status == 200 and body == {"discarded": [a2], "refused": refused}
    # Who: the body's "by", else the HTTP peer (a mocked request has none).
    assert [a["subject"] for a in db.actions] == [str(a1), str(b1), str(a2)]
    assert {a["actor"] for a in db.actions} == {"http:unknown"}


async def test_dead_letters_are_discarded_by_filter_with_why(db: MemoryDatabase) -> None:
    store = runtime.dead_letters.store
    for n in (1, 2):
        await store.add(letter(n, reason="poison" if n == 1 else "permanent"))
    status, body = _answer(await DiscardDeadLetters(app, app.web).post(
        _post("/", {"reason": "poison", "why": "garbage", "by": "anna"})))  # fmt: skip
    assert (status, body) == (200, {"discarded": ["0-1"], "refused": []})
    assert [d.id for d in await store.find(Filter(status="open"))] == ["0-2"]
    status, body = _answer(await DiscardDeadLetters(app, app.web).post(
        _post("/", {"all": True, "until": "0001-01-01T00:00:00+14:00", "why": "x"})))  # fmt: skip
    assert status == 422 and [p["field"] for p in body["detail"]] == ["until"]


async def test_a_customers_orders_come_newest_first_with_a_cursor(db: MemoryDatabase) -> None:
    orders = MemoryOrderStore(db)
    made = [order_created("c-1", at=T0 + timedelta(minutes=n)) for n in range(3)]
    for event in made:
        await orders.create_order(event)
    view = CustomerOrders(app, app.web)
    status, body = _answer(await view.get(_get("/customers/c-1/orders?limit=2"), customer_id="c-1"))
    assert status == 200 and [o["order_id"] for o in body["orders"]] == [
        made[2].order_id, made[1].order_id]  # fmt: skip
    path = f"/customers/c-1/orders?limit=2&before={body['next']}"
    status, body = _answer(await view.get(_get(path), customer_id="c-1"))
    assert [o["order_id"] for o in body["orders"]] == [made[0].order_id] and body["next"] is None
    status, body = _answer(await view.get(_get("/x?before=nope"), customer_id="c" * 65))
    assert status == 422 and [p["field"] for p in body["detail"]] == ["customer_id", "before"]


async def test_the_sku_list_checks_its_page_and_waits_out_a_rebalance(
    db: MemoryDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, body = _answer(await InventoryList(app, app.web).get(_get("/inventory?limit=501")))
    assert status == 422 and [p["field"] for p in body["detail"]] == ["limit"]
    status, body = _answer(await InventoryList(app, app.web).get(_get("/inventory?after=")))
    assert status == 422 and [p["field"] for p in body["detail"]] == ["after"]
    monkeypatch.setattr(app, "rebalancing", True)
    for view in (InventoryList, WorkerInventory):
        response = await view(app, app.web).get(_get("/inventory"))
        assert response.status == 503 and response.headers["Retry-After"] == "1"
