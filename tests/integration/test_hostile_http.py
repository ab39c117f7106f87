"""Hostile HTTP against a real worker, once per database: bodies split across TCP segments or
chunked past the limit, JSON the decoder chokes on, times at the edge of the calendar, totals
the database cannot hold, and reads of personal data without the token.

Every answer is a 2xx, a 400, a 401, a 413 or a 422 with its field: never a 500, never a 503
that a client would retry forever. In every error case nothing is written: each test checks
the database afterwards.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from pipeline.adapters.db.schema import (
    idempotency_keys,
    make_engine,
    migrate,
    order_items,
    orders,
    outbox,
)
from pipeline.local.postgres import LocalPostgres
from tests.integration.workers import Worker, WorkerFactory, drop_test_database, http_post

TOKEN = "hostile-token-7c1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 256 * 1024  # room for 100,000-deep nesting
YEAR_ONE = "0001-01-01T00:00:00+14:00"  # before year 1 in UTC
YEAR_9999 = "9999-12-31T23:59:59-14:00"  # after year 9999 in UTC


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    postgres: LocalPostgres | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Worker, str]]:
    root = tmp_path_factory.mktemp("hostile")
    name: str | None = None  # the PostgreSQL database made for the module
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{root / 'pipeline.db'}"
    else:
        assert postgres is not None
        name = f"hostile_{uuid.uuid4().hex[:12]}"
        url = postgres.create_database(name)
    migrate(url)
    test_id = uuid.uuid4().hex[:10]
    factory = WorkerFactory(
        bootstrap=kafka_bootstrap, root=root, app_id=f"hostile-{test_id}",
        topic_prefix=f"t{test_id}.", database_url=url,
    )  # fmt: skip
    worker = factory.start(PIPELINE_API_TOKEN=TOKEN, PIPELINE_MAX_BODY_BYTES=str(MAX_BODY))
    try:
        yield worker, url
    finally:
        factory.stop_all()
        drop_test_database(postgres, name)


def written(url: str) -> tuple[int, ...]:
    """Rows in every table a request may write."""

    async def read() -> tuple[int, ...]:
        engine = make_engine(url)
        async with engine.connect() as conn:
            found = [
                int((await conn.execute(select(func.count()).select_from(t))).scalar_one())
                for t in (orders, order_items, outbox, idempotency_keys)
            ]
        await engine.dispose()
        return tuple(found)

    return asyncio.run(read())


def order(customer: str = "hostile-1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer_id": customer,
        "customer_email": f"{customer}@example.com",
        "items": [{"sku": f"sku-{n}", "quantity": 1, "unit_price": "1.50"} for n in range(8)],
    }
    body.update(overrides)
    return body


def send_raw(worker: Worker, parts: list[bytes], pause: float = 0.2) -> tuple[int, Any]:
    """Send ``parts`` on one connection, each its own TCP segment ``pause`` seconds after the
    last, then read the answer. A server that answers before the last part may stop reading:
    the answer still counts."""
    with socket.create_connection(("127.0.0.1", worker.web_port), timeout=15) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, part in enumerate(parts):
            if i:
                time.sleep(pause)
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode(errors="replace")


def head(path: str, *fields: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Connection: close",
        "Content-Type: application/json",
        f"Authorization: Bearer {TOKEN}",
        *fields,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def get(worker: Worker, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(worker.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_body_in_two_segments_is_read_whole(api: tuple[Worker, str]) -> None:
    worker, url = api
    body = json.dumps(order("two-segments")).encode()
    first, rest = body[: len(body) // 2], body[len(body) // 2 :]
    before = written(url)
    status, reply = send_raw(
        worker, [head("/orders", f"Content-Length: {len(body)}") + first, rest]
    )
    assert status == 201, reply
    assert reply["total"] == "12.00"
    assert written(url)[:3] == (before[0] + 1, before[1] + 8, before[2] + 1)


def test_a_chunked_body_in_pieces_is_read_whole(api: tuple[Worker, str]) -> None:
    worker, _ = api
    body = json.dumps(order("chunked")).encode()
    pieces = [body[i : i + 100] for i in range(0, len(body), 100)]
    parts = [head("/orders", "Transfer-Encoding: chunked")]
    parts += [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
    status, reply = send_raw(worker, parts, pause=0.05)
    assert status == 201, reply


def test_a_chunked_body_over_the_limit_is_413(api: tuple[Worker, str]) -> None:
    worker, url = api
    before = written(url)
    pad = json.dumps(order("big-chunked", pad="x" * (5 << 20))).encode()  # over any limit allowed
    step = 16 * 1024
    chunks = [b"%x\r\n%s\r\n" % (len(c), c) for c in (pad[i : i + step]
              for i in range(0, len(pad), step))]  # fmt: skip
    # A streaming client: the first chunk, a pause, then the rest as fast as it goes.
    first = head("/orders", "Transfer-Encoding: chunked") + chunks[0]
    status, reply = send_raw(worker, [first, b"".join(chunks[1:]) + b"0\r\n\r\n"])
    assert (status, reply["error"]) == (413, "body_too_large")
    assert written(url) == before


def test_a_content_length_over_the_limit_is_413(api: tuple[Worker, str]) -> None:
    worker, url = api
    before = written(url)
    pad = json.dumps(order("big-length", pad="x" * MAX_BODY)).encode()
    status, reply = send_raw(worker, [head("/orders", f"Content-Length: {len(pad)}") + pad])
    assert (status, reply["error"]) == (413, "body_too_large")
    assert written(url) == before


@pytest.mark.parametrize("path", ["/orders", "/inventory/sku-hostile", "/dead-letters/replay"])
def test_every_json_endpoint_reads_split_bodies_and_refuses_big_ones(
    api: tuple[Worker, str], path: str
) -> None:
    worker, url = api
    before = written(url)
    method = "PUT" if path.startswith("/inventory") else "POST"
    big = b'{"pad": "' + b"x" * (MAX_BODY + 10) + b'"}'
    request = head(path, "Transfer-Encoding: chunked").replace(b"POST", method.encode(), 1)
    status, reply = send_raw(worker, [request, b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)])
    assert (status, reply["error"]) == (413, "body_too_large")
    # Split in two: read whole, then judged on what it says (422: an unknown field).
    small = b'{"unknown_field": 1}'
    request = head(path, f"Content-Length: {len(small)}").replace(b"POST", method.encode(), 1)
    status, reply = send_raw(worker, [request + small[:7], small[7:]])
    assert (status, reply["error"]) == (422, "validation_failed"), reply
    assert written(url) == before


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        pytest.param(b'{"customer_id": ' + b"7" * 5000 + b"}", 400, id="5000-digit-integer"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, 400, id="100000-deep-nesting"),
        pytest.param(b'{"items": [{"unit_price": 1e99999999999999999999}]}', 400, id="exponent"),
        pytest.param(json.dumps(order(created_at=YEAR_ONE)).encode(), 422, id="year-1-created-at"),
    ],
)
def test_bodies_the_decoder_chokes_on_are_400_or_422_never_500(
    api: tuple[Worker, str], raw: bytes, status: int
) -> None:
    worker, url = api
    before = written(url)
    got, reply = http_post(worker.url + "/orders", raw, AUTH)
    assert got == status, reply
    assert reply["error"] == ("malformed_json" if status == 400 else "validation_failed")
    assert written(url) == before


def test_a_lone_surrogate_in_an_order_names_its_field(api: tuple[Worker, str]) -> None:
    worker, url = api
    before = written(url)
    raw = json.dumps(order(customer_id="c\ud800")).encode()
    got, reply = http_post(worker.url + "/orders", raw, AUTH)
    assert (got, reply["error"]) == (422, "validation_failed"), reply
    assert [e["field"] for e in reply["detail"]] == ["customer_id"]
    assert written(url) == before


@pytest.mark.parametrize("when", [YEAR_ONE, YEAR_9999])
def test_dead_letter_times_beyond_the_calendar_are_422(api: tuple[Worker, str], when: str) -> None:
    worker, url = api
    before = written(url)
    status, reply = get(worker, "/dead-letters?since=" + urllib.parse.quote(when), AUTH)
    assert (status, reply["error"]) == (422, "validation_failed"), reply
    assert [e["field"] for e in reply["detail"]] == ["since"]
    status, reply = http_post(worker.url + "/dead-letters/replay", {"until": when}, AUTH)
    assert (status, reply["error"]) == (422, "validation_failed"), reply
    assert [e["field"] for e in reply["detail"]] == ["until"]
    assert written(url) == before


@pytest.mark.parametrize(
    "items",
    [
        pytest.param([{"sku": "gold", "quantity": 10_000, "unit_price": "1000000.00"}], id="line"),
        pytest.param(
            [{"sku": f"gold-{n}", "quantity": 5_000, "unit_price": "999999.99"} for n in range(3)],
            id="lines",
        ),
    ],
)
def test_a_total_beyond_the_money_column_is_422_naming_it(
    api: tuple[Worker, str], items: list[dict[str, Any]]
) -> None:
    worker, url = api
    before = written(url)
    status, reply = worker.post("/orders", order("whale", items=items), AUTH)
    assert (status, reply["error"]) == (422, "validation_failed"), reply
    assert [e["field"] for e in reply["detail"]] == ["total"]
    assert written(url) == before
    # The largest total the column holds is accepted.
    largest = [{"sku": "gold", "quantity": 10_000, "unit_price": "999999.99"}]
    status, reply = worker.post("/orders", order("whale", items=largest), AUTH)
    assert (status, reply["total"]) == (201, "9999999900.00"), reply


def test_reads_of_orders_and_spend_need_the_token(api: tuple[Worker, str]) -> None:
    worker, _ = api
    status, placed = worker.post("/orders", order("private"), AUTH)
    assert status == 201
    for path in (f"/orders/{placed['order_id']}", "/dashboard/data", "/dashboard/worker"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            status, reply = get(worker, path, headers)
            assert (status, reply["error"]) == (401, "unauthorized"), (path, headers)
        status, reply = get(worker, path, AUTH)
        assert status == 200, (path, reply)
    assert get(worker, f"/orders/{placed['order_id']}", AUTH)[1]["customer_email"] == (
        "private@example.com"
    )
    # The page itself holds no data: it loads, and asks for the token.
    with urllib.request.urlopen(worker.url + "/dashboard", timeout=10) as resp:
        assert resp.status == 200


def test_hostile_bytes_in_headers_paths_and_queries_are_never_500(api: tuple[Worker, str]) -> None:
    worker, url = api
    before = written(url)
    body = json.dumps(order("hostile-head")).encode()
    raw = head("/orders", f"Content-Length: {len(body)}", "Idempotency-Key: k-BYTE")
    status, reply = send_raw(worker, [raw.replace(b"-BYTE", b"\xff") + body])  # not UTF-8
    assert status in (400, 422), reply
    raw = head("/orders/%ED%A0%80/cancel", "Content-Length: 0")
    assert send_raw(worker, [raw])[0] == 404
    raw = head("/orders/%ff", "Content-Length: 0").replace(b"POST", b"GET", 1)
    assert send_raw(worker, [raw])[0] == 404
    for query in ("agent=%ED%A0%80", "event_id=%ff", "since=%ff"):
        raw = head("/dead-letters?" + query, "Content-Length: 0").replace(b"POST", b"GET", 1)
        assert send_raw(worker, [raw])[0] in (200, 422), query
    assert written(url) == before


def test_a_body_that_does_not_decompress_is_a_400(api: tuple[Worker, str]) -> None:
    worker, url = api
    before = written(url)
    raw = head("/orders", "Content-Encoding: gzip", "Content-Length: 9") + b"not gzip!"
    status, reply = send_raw(worker, [raw])
    assert (status, reply["error"]) == (400, "malformed_body"), reply
    assert written(url) == before
