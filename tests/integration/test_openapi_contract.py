"""The published contracts against the live system: a real worker (PostgreSQL, Kafka, RocksDB)
with a token set.

- The worker serves docs/openapi.json at ``/openapi.json``; Schemathesis reads it and fuzzes
  every operation of the worker with generated requests, valid and invalid (each schema's
  boundary values first, then random ones), with the token: no answer may be a 5xx, every
  answer must be documented (its status, content type, headers and body schema), invalid
  requests must be refused, and requests without the token where one is needed too.
- Every error a client can provoke without a view's say (unknown route, wrong method, a body
  over the limit, malformed JSON, no token) answers the one documented ``Error`` shape, on the
  worker and on the forwarder process's server.
- The events the worker wrote to its topics, and the outbox rows in the database, validate
  against docs/schemas/.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import jsonschema
import pytest
import schemathesis
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.config import SchemathesisConfig
from sqlalchemy import select

from pipeline.adapters.db.schema import make_engine, migrate, outbox
from pipeline.local.postgres import LocalPostgres
from pipeline.settings import PROJECT_ROOT
from pipeline.web.contract import ROUTES
from tests.integration.workers import (
    Worker,
    WorkerFactory,
    consume,
    drop_test_database,
    free_port,
    http_get,
    http_post,
    wait_for,
)

pytestmark = pytest.mark.integration

TOKEN = "contract-token-3f9a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 64 * 1024
SCHEMAS = PROJECT_ROOT / "docs" / "schemas"
TOPICS = ["orders.events", "inventory.commands", "inventory.events", "orders.status",
          "analytics.events", "analytics.revenue"]  # fmt: skip

# Bounded: every schema's boundary cases (the coverage phase) and at most this many random
# examples per operation, each way (valid and invalid), no shrinking, no example database.
CONFIG = SchemathesisConfig.from_str(
    f"""
    request-timeout = 20
    [auth.openapi.bearerToken]
    bearer = "{TOKEN}"
    [generation]
    mode = "all"
    max-examples = 15
    no-shrink = true
    database = "none"
    [checks.negative_data_rejection]
    # Schemathesis' list, with 413: an invalid body over the size limit is refused as such.
    expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
    [phases.examples]
    enabled = false
    [phases.stateful]
    enabled = false
    """
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    unsupported_method,
    allow_header_conformance,
    ignored_auth,
]


@pytest.fixture(scope="module")
def factory(
    kafka_bootstrap: str, postgres: LocalPostgres | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFactory]:
    root = tmp_path_factory.mktemp("contract")
    name: str | None = None  # the PostgreSQL database made for the module
    # PostgreSQL, the production database: a fresh one, or the one TEST_DATABASE_URL names.
    if postgres is None:
        url = os.environ["TEST_DATABASE_URL"]
    else:
        name = f"contract_{uuid.uuid4().hex[:12]}"
        url = postgres.create_database(name)
    migrate(url)
    test_id = uuid.uuid4().hex[:10]
    made = WorkerFactory(
        bootstrap=kafka_bootstrap, root=root, app_id=f"contract-{test_id}",
        topic_prefix=f"t{test_id}.", database_url=url,
    )  # fmt: skip
    try:
        yield made
    finally:
        made.stop_all()
        drop_test_database(postgres, name)


@pytest.fixture(scope="module")
def worker(factory: WorkerFactory) -> Worker:
    return factory.start(PIPELINE_API_TOKEN=TOKEN, PIPELINE_MAX_BODY_BYTES=str(MAX_BODY))


@pytest.fixture(scope="module")
def served(worker: Worker) -> dict[str, Any]:
    status, document = http_get(worker.url + "/openapi.json")  # no token: it is public
    assert status == 200
    return dict(document)


def test_every_worker_serves_the_published_document(served: dict[str, Any]) -> None:
    written = json.loads((PROJECT_ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
    assert served == written


# The document the worker serves, which the test above proves equal to the published file: read
# at collection so that Schemathesis makes one test per operation (its fixture-based loader
# does not run under this pytest).
fuzzed = schemathesis.openapi.from_path(PROJECT_ROOT / "docs" / "openapi.json", config=CONFIG)


SENT: Counter[str] = Counter()


@fuzzed.parametrize()
def test_the_live_api_answers_as_its_document_says(case: Any, worker: Worker) -> None:
    SENT[case.operation.label] += 1
    case.call_and_validate(base_url=worker.url, checks=CHECKS)


def test_every_operation_was_fuzzed_with_many_requests() -> None:
    """The bounds above bound the run; they must not have emptied it."""
    if not SENT:
        pytest.skip("the fuzzing test did not run in this session")
    declared = {f"{route.method.upper()} {route.path}" for route in ROUTES}
    assert set(SENT) == declared
    # An operation without parameters or body has one request to make; every other, many.
    few = {label for label, n in SENT.items() if n < 10}
    assert few <= {"GET /healthz", "GET /readyz", "GET /metrics", "GET /dashboard",
                   "GET /openapi.json"}, SENT  # fmt: skip


# -- the one error shape -------------------------------------------------------------------------


def raw(url: str, method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, str, Any]:  # fmt: skip
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers.get_content_type(), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get_content_type(), json.loads(err.read())


def error_validator(document: dict[str, Any]) -> jsonschema.Draft202012Validator:
    root = {"components": document["components"], "$ref": "#/components/schemas/Error"}
    return jsonschema.Draft202012Validator(root)


def test_every_error_has_the_one_documented_shape(worker: Worker, served: dict[str, Any]) -> None:
    line = {"sku": "s", "quantity": 1, "unit_price": "1"}
    order = json.dumps({"customer_id": "c", "customer_email": "c@x.org", "items": [line]}).encode()
    cases = {
        "unknown route": (("/no/such/route", "GET", None, AUTH), 404, "not_found"),
        "wrong method": (("/orders", "DELETE", None, AUTH), 405, "method_not_allowed"),
        "HEAD of a POST route": (("/orders", "HEAD", None, AUTH), 405, None),
        "body over the limit": (("/orders", "POST", b"{" * (MAX_BODY + 1), AUTH), 413,
                                "body_too_large"),
        "malformed JSON": (("/orders", "POST", b'{"customer_id": ', AUTH), 400, "malformed_json"),
        "no token": (("/orders", "POST", order, None), 401, "unauthorized"),
        "wrong token": (("/orders", "POST", order, {"Authorization": "Bearer nope"}), 401,
                        "unauthorized"),
        "no token on a routed read": (("/customers/c/stats", "GET", None, None), 401,
                                      "unauthorized"),
        "invalid field": (("/inventory/s", "PUT", b'{"available": -1}', AUTH), 422,
                          "validation_failed"),
    }  # fmt: skip
    check = error_validator(served)
    for name, ((path, method, body, headers), status, code) in cases.items():
        if method == "HEAD":  # no body to read: the status and Allow say it
            request = urllib.request.Request(worker.url + path, method="HEAD", headers=AUTH)
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=10)
            assert caught.value.code == status, name
            continue
        got, content_type, reply = raw(worker.url + path, method, body, headers)
        assert (got, content_type) == (status, "application/json"), (name, reply)
        check.validate(reply)
        assert reply["error"] == code, (name, reply)
    status, _, reply = raw(worker.url + "/orders", "DELETE")
    assert "POST" in reply["detail"]


def test_the_forwarder_process_answers_errors_in_the_one_shape(
    factory: WorkerFactory, served: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    log = tmp_path_factory.mktemp("forwarder") / "forwarder.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "forwarder", "--web-port", str(port)],
            cwd=PROJECT_ROOT, env=factory.env(), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url + "/healthz"), 60, "the forwarder's /healthz")
        check = error_validator(served)
        for path, method, status, code in (
            ("/nowhere", "GET", 404, "not_found"),
            ("/metrics", "POST", 405, "method_not_allowed"),
            ("/healthz", "POST", 405, "method_not_allowed"),
        ):
            got, content_type, reply = raw(url + path, method, b"{}" if method == "POST" else None)
            assert (got, content_type) == (status, "application/json"), (path, reply)
            check.validate(reply)
            assert reply["error"] == code
    finally:
        proc.terminate()
        proc.wait(30)


def _answers(url: str) -> bool:
    try:
        return http_get(url)[0] == 200
    except OSError:
        return False


# -- the events and the outbox rows -------------------------------------------------------------


def event_validators() -> dict[str, jsonschema.Draft202012Validator]:
    return {
        path.stem: jsonschema.Draft202012Validator(
            json.loads(path.read_text(encoding="utf-8")), format_checker=jsonschema.FormatChecker()
        )
        for path in (SCHEMAS / "events").glob("*.json")
    }


def test_the_events_on_the_topics_and_the_outbox_rows_follow_their_schemas(
    worker: Worker, factory: WorkerFactory
) -> None:
    customer, sku = f"contract-{uuid.uuid4().hex[:8]}", f"sku-{uuid.uuid4().hex[:8]}"
    _put_stock(worker, sku, 5)
    wait_for(lambda: _get(worker, f"/inventory/{sku}")[0] == 200, 60, "the stock set")
    line = {"sku": sku, "quantity": 2, "unit_price": "10.25"}
    placed = _order(worker, customer, [line])
    wait_for(lambda: _get(worker, f"/orders/{placed}")[1].get("status") == "confirmed", 60,
             "the first order confirmed")  # fmt: skip
    rejected = _order(worker, customer, [{**line, "quantity": 50}])
    assert http_post(f"{worker.url}/orders/{placed}/cancel", b"", AUTH)[0] == 200
    wait_for(lambda: _get(worker, f"/orders/{rejected}")[1].get("status") == "rejected", 60,
             "the second order rejected")  # fmt: skip
    wait_for(lambda: _get(worker, f"/inventory/{sku}")[1].get("reserved") == 0, 60,
             "the cancelled order's units released")  # fmt: skip
    wait_for(lambda: _get(worker, f"/customers/{customer}/stats")[1].get("cancelled_count") == 1,
             60, "the cancellation counted")  # fmt: skip

    validators = event_validators()
    seen: set[str] = set()
    for topic in TOPICS:
        records = asyncio.run(consume(factory.bootstrap, factory.topic(topic), count=100_000,
                                      timeout=4))  # fmt: skip
        for record in records:
            body = json.loads(record.value)
            validators[body["event_type"]].validate(body)
            seen.add(body["event_type"])
    assert seen >= {
        "StockSet", "OrderCreated", "OrderCancelled", "LineReservationRequested",
        "LineReleaseRequested", "LineSettled", "InventoryReserved", "InventoryRejected",
        "InventoryReleased", "OrderConfirmed", "OrderRejected", "CustomerStatsUpdated",
        "MilestoneReached", "RevenueRecorded",
    }  # fmt: skip

    row_schema = json.loads((SCHEMAS / "outbox-row.json").read_text(encoding="utf-8"))
    row_validator = jsonschema.Draft202012Validator(
        row_schema, format_checker=jsonschema.FormatChecker()
    )
    rows = asyncio.run(_outbox_rows(factory.database_url))
    assert {row["event_type"] for row in rows} >= {"OrderCreated", "OrderCancelled"}
    for row in rows:
        row_validator.validate(row)
        validators[row["event_type"]].validate(json.loads(row["payload"]))


def _put_stock(worker: Worker, sku: str, available: int) -> None:
    request = urllib.request.Request(
        f"{worker.url}/inventory/{sku}", data=json.dumps({"available": available}).encode(),
        method="PUT", headers=AUTH,
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=20) as resp:
        assert resp.status == 202


def _get(worker: Worker, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(worker.url + path, headers=AUTH)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, {}


def _order(worker: Worker, customer: str, items: list[dict[str, Any]]) -> str:
    body = {"customer_id": customer, "customer_email": f"{customer}@example.com", "items": items}
    status, reply = http_post(worker.url + "/orders", body, AUTH)
    assert status == 201, reply
    return str(reply["order_id"])


async def _outbox_rows(url: str) -> list[dict[str, Any]]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(outbox))).mappings().all()
    finally:
        await engine.dispose()
    return [{k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
            for row in rows]  # fmt: skip
