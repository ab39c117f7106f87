"""The public HTTP contract of the order service, on a real worker, once per database.

In every error case nothing is written: each test checks the database afterwards.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from pipeline.adapters.db.schema import make_engine, migrate, order_items, orders, outbox
from pipeline.local.postgres import LocalPostgres
from tests.integration.workers import Worker, WorkerFactory, drop_test_database, http_post

TOKEN = "test-token-5f0c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 4096
MAX_ITEMS = 5


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    postgres: LocalPostgres | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Worker, str]]:
    root = tmp_path_factory.mktemp("api")
    name: str | None = None  # the PostgreSQL database made for the module
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{root / 'pipeline.db'}"
    else:
        assert postgres is not None
        name = f"api_{uuid.uuid4().hex[:12]}"
        url = postgres.create_database(name)
    migrate(url)
    test_id = uuid.uuid4().hex[:10]
    factory = WorkerFactory(
        bootstrap=kafka_bootstrap, root=root, app_id=f"api-{test_id}",
        topic_prefix=f"t{test_id}.", database_url=url,
    )  # fmt: skip
    worker = factory.start(
        PIPELINE_API_TOKEN=TOKEN,
        PIPELINE_MAX_BODY_BYTES=str(MAX_BODY),
        PIPELINE_MAX_ORDER_ITEMS=str(MAX_ITEMS),
    )
    try:
        yield worker, url
    finally:
        factory.stop_all()
        drop_test_database(postgres, name)


def counts(url: str) -> tuple[int, int, int]:
    async def read() -> tuple[int, int, int]:
        engine = make_engine(url)
        async with engine.connect() as conn:
            found = [
                int((await conn.execute(select(func.count()).select_from(t))).scalar_one())
                for t in (orders, order_items, outbox)
            ]
        await engine.dispose()
        return found[0], found[1], found[2]

    return asyncio.run(read())


def read(worker: Worker, path: str) -> tuple[int, Any]:
    """A GET with the token: an order shows its customer's email."""
    request = urllib.request.Request(worker.url + path, headers=AUTH)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def valid(customer: str = "cust-1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer_id": customer,
        "customer_email": f"{customer}@example.com",
        "items": [
            {"sku": "sku-1", "quantity": 2, "unit_price": "10.25"},
            {"sku": "sku-2", "quantity": 1, "unit_price": "0.10"},
        ],
    }
    body.update(overrides)
    return body


def test_post_order_commits_and_returns_201(api: tuple[Worker, str]) -> None:
    worker, url = api
    before = counts(url)
    status, body = worker.post("/orders", valid(), AUTH)
    assert status == 201
    assert body["status"] == "created" and body["total"] == "20.60"
    assert counts(url) == (before[0] + 1, before[1] + 2, before[2] + 1)
    status, order = read(worker, f"/orders/{body['order_id']}")
    assert status == 200
    assert order["status"] == "created" and order["total"] == "20.60"
    assert order["items"] == [
        {"sku": "sku-1", "quantity": 2, "unit_price": "10.25"},
        {"sku": "sku-2", "quantity": 1, "unit_price": "0.10"},
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"customer_email": "a@example.com", "items": []}, "customer_id"),
        (valid(items=[]), "items"),
        (valid(items=[{"sku": "s", "quantity": 0, "unit_price": "1.00"}]), "items[0].quantity"),
        (valid(items=[{"sku": "s", "quantity": 1, "unit_price": "-1.00"}]), "items[0].unit_price"),
        (valid(items=[{"sku": "s", "quantity": 1, "unit_price": "1,5"}]), "items[0].unit_price"),
        (valid(customer_email="nobody"), "customer_email"),
        (valid(items=[{"sku": "s", "quantity": 1, "unit_price": "1"}] * (MAX_ITEMS + 1)), "items"),
        (valid(customer_id="c" * 65), "customer_id"),
        (valid(items=[{"sku": "s" * 65, "quantity": 1, "unit_price": "1"}]), "items[0].sku"),
        (valid(items=[{"sku": "s", "quantity": "2", "unit_price": "1"}]), "items[0].quantity"),
    ],
)
def test_invalid_orders_get_422_naming_the_field_and_write_nothing(
    api: tuple[Worker, str], body: dict[str, Any], field: str
) -> None:
    worker, url = api
    before = counts(url)
    status, reply = worker.post("/orders", body, AUTH)
    assert status == 422
    assert reply["error"] == "validation_failed"
    assert field in [e["field"] for e in reply["detail"]]
    assert counts(url) == before


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b'{"customer_id": ', 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"\xff\xfe\x00", 400, "malformed_json"),
        (json.dumps(valid(pad="x" * MAX_BODY)).encode(), 413, "body_too_large"),
    ],
)
def test_malformed_and_oversized_bodies_write_nothing(
    api: tuple[Worker, str], raw: bytes, status: int, code: str
) -> None:
    worker, url = api
    before = counts(url)
    got, reply = http_post(
        worker.url + "/orders", raw, {**AUTH, "Content-Type": "application/json"}
    )
    assert (got, reply["error"]) == (status, code)
    assert counts(url) == before


def test_writes_need_the_bearer_token(api: tuple[Worker, str]) -> None:
    worker, url = api
    before = counts(url)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        status, reply = worker.post("/orders", valid(), headers)
        assert status == 401 and reply["error"] == "unauthorized"
    status, _ = worker.post(f"/orders/{uuid.uuid4()}/cancel", {}, {})
    assert status == 401
    assert counts(url) == before


def test_dead_letter_endpoints_need_the_bearer_token(api: tuple[Worker, str]) -> None:
    worker, _ = api
    assert worker.get("/dead-letters")[0] == 401  # payloads hold customers' data
    assert worker.post("/dead-letters/replay", {"all": True}, {})[0] == 401
    request = urllib.request.Request(worker.url + "/dead-letters", headers=AUTH)
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200 and "dead_letters" in json.loads(resp.read())
    status, reply = worker.post("/dead-letters/replay", {"all": True}, AUTH)
    assert status == 200 and reply == {"replayed": [], "refused": []}


def test_idempotency_key_replays_the_first_answer_and_rejects_a_new_body(
    api: tuple[Worker, str],
) -> None:
    worker, url = api
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}", **AUTH}
    first = worker.post("/orders", valid("idem"), key)
    before = counts(url)
    again = worker.post("/orders", valid("idem"), key)
    assert first[0] == again[0] == 201 and first[1] == again[1]
    conflict = worker.post("/orders", valid("idem", customer_email="other@example.com"), key)
    assert conflict[0] == 409 and conflict[1]["error"] == "idempotency_key_reused"
    assert counts(url) == before
    too_long = worker.post("/orders", valid("idem"), {"Idempotency-Key": "k" * 201, **AUTH})
    assert too_long[0] == 422 and too_long[1]["detail"][0]["field"] == "Idempotency-Key"


def test_cancel_is_200_then_409_and_404_for_unknown(api: tuple[Worker, str]) -> None:
    worker, url = api
    _, placed = worker.post("/orders", valid("cancels"), AUTH)
    order_id = placed["order_id"]
    assert worker.post(f"/orders/{order_id}/cancel", {}, AUTH) == (
        200,
        {"order_id": order_id, "status": "cancelled"},
    )
    before = counts(url)
    status, reply = worker.post(f"/orders/{order_id}/cancel", {}, AUTH)
    assert status == 409 and reply["error"] == "conflict"
    assert worker.post(f"/orders/{uuid.uuid4()}/cancel", {}, AUTH)[0] == 404
    assert counts(url) == before
    assert read(worker, f"/orders/{order_id}")[1]["status"] == "cancelled"


def test_injection_strings_are_stored_verbatim(api: tuple[Worker, str]) -> None:
    worker, _ = api
    nasty = "x'); DROP TABLE orders; --"
    status, placed = worker.post(
        "/orders",
        valid(nasty, customer_email="evil@example.com",
              items=[{"sku": "<script>alert(1)</script>", "quantity": 1, "unit_price": "1"}]),
        AUTH,
    )  # fmt: skip
    assert status == 201
    order = read(worker, f"/orders/{placed['order_id']}")[1]
    assert order["customer_id"] == nasty
    assert order["items"][0]["sku"] == "<script>alert(1)</script>"


def test_unknown_orders_and_routes_are_404(api: tuple[Worker, str]) -> None:
    worker, _ = api
    status, reply = read(worker, f"/orders/{uuid.uuid4()}")
    assert status == 404 and reply["error"] == "not_found"
    assert worker.get(f"/orders/{uuid.uuid4()}")[0] == 401  # the token comes first
    assert worker.get("/no/such/route")[0] == 404


def test_an_order_reaches_the_stats_through_kafka(api: tuple[Worker, str]) -> None:
    from tests.integration.workers import wait_for

    worker, _ = api
    customer = f"flow-{uuid.uuid4().hex[:6]}"
    assert worker.post("/orders", valid(customer), AUTH)[0] == 201
    stats = wait_for(
        lambda: (r := read(worker, f"/customers/{customer}/stats"))[0] == 200 and r[1],
        30,
        "the order to reach the customer's stats",
    )
    assert stats["order_count"] == 1 and stats["total_spent"] == "20.60"
    # what the customer spent, and the shop's revenue, take the token
    assert worker.get(f"/customers/{customer}/stats")[0] == 401
    assert worker.get("/analytics/revenue")[0] == 401
    assert read(worker, "/analytics/revenue")[0] == 200


def test_metrics_are_prometheus_text(api: tuple[Worker, str]) -> None:
    worker, _ = api
    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    for name in (
        "pipeline_outbox_backlog",
        "pipeline_outbox_oldest_unpublished_age_seconds",
        "pipeline_outbox_published_total",
        "pipeline_orders_created_total",
    ):
        assert f"\n{name}" in text or text.startswith(name)
