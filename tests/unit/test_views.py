"""Views answered offline: the rebalance guard, before any routing happens; request bodies
read whole and judged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from typing import Any, cast
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    TopicAuthorizationFailedError,
)

from pipeline.app import app, settings
from pipeline.streaming.topics import egress
from pipeline.web import views
from pipeline.web.http import HttpError, parse_json, read_json
from pipeline.web.views import CustomerStatsView, Inventory, ReplayDeadLetters, Revenue


@pytest.fixture
def rebalancing(monkeypatch: pytest.MonkeyPatch) -> None:
    app.finalize()
    monkeypatch.setattr(app, "rebalancing", True)


@pytest.mark.usefixtures("rebalancing")
@pytest.mark.parametrize(
    ("view", "kwargs"),
    [(CustomerStatsView, {"customer_id": "c"}), (Inventory, {"sku": "s"}), (Revenue, {})],
)
async def test_table_reads_answer_503_with_a_retry_hint_while_rebalancing(
    view: type, kwargs: dict[str, str]
) -> None:
    response = await view(app, app.web).get(None, **kwargs)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert json.loads(response.body)["error"] == "rebalancing"


@pytest.mark.usefixtures("rebalancing")
async def test_table_readiness_answers_503_while_rebalancing() -> None:
    response = await views.TablesReady(app, app.web).get(None)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert json.loads(response.body)["rebalancing"] is True


@pytest.mark.usefixtures("rebalancing")
@pytest.mark.parametrize("view", [views.Live, views.Health])
async def test_liveness_answers_whatever_the_partitions_do(view: type) -> None:
    response = await view(app, app.web).get(None)
    assert response.status == 200
    assert json.loads(response.body) == {"status": "ok"}


def _request(pieces: list[bytes], headers: dict[str, str] | None = None) -> Any:
    """An aiohttp request whose body arrives in ``pieces``, one at a time, as a slow client
    or a proxy sends it."""
    loop = asyncio.get_running_loop()
    protocol = mock.Mock(_reading_paused=False)
    payload = StreamReader(protocol, 2**16, loop=loop)

    async def arrive() -> None:
        for piece in pieces:
            await asyncio.sleep(0.01)
            payload.feed_data(piece)
        payload.feed_eof()

    _arrivals.add(loop.create_task(arrive()))
    return make_mocked_request("POST", "/orders", headers=headers or {}, payload=payload)


_arrivals: set[asyncio.Task[None]] = set()
LIMITS = replace(settings, max_body_bytes=1024)


async def test_a_body_in_pieces_is_read_whole() -> None:
    body = json.dumps({"customer_id": "c", "items": [{"unit_price": "1.50"}]}).encode()
    request = _request([body[:9], body[9:20], body[20:]], {"Content-Length": str(len(body))})
    expected = {"customer_id": "c", "items": [{"unit_price": "1.50"}]}
    assert await read_json(request, LIMITS) == expected


async def test_a_body_over_the_limit_is_413_with_or_without_a_length() -> None:
    with pytest.raises(HttpError) as info:
        await read_json(_request([b"{}"], {"Content-Length": "2000"}), LIMITS)
    assert (info.value.status, info.value.code) == (413, "body_too_large")
    with pytest.raises(HttpError) as info:  # chunked: no length, only bytes
        await read_json(_request([b"[" + b"1," * 300, b"1," * 300 + b"1]"]), LIMITS)
    assert (info.value.status, info.value.code) == (413, "body_too_large")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"a": ', id="truncated"),
        pytest.param(b"\xff\xfe\x00", id="not-utf-8"),
        pytest.param(b'{"a": ' + b"7" * 5000 + b"}", id="5000-digit-integer"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="100000-deep"),
        pytest.param(b'{"a": 1e99999999999999999999}', id="exponent-beyond-decimal"),
    ],
)
def test_any_body_the_decoder_chokes_on_is_a_400(raw: bytes) -> None:
    with pytest.raises(HttpError) as info:
        parse_json(raw)
    assert (info.value.status, info.value.code) == (400, "malformed_json")
    assert str(info.value.detail).startswith("request body")


def test_decimals_stay_exact() -> None:
    assert parse_json(b'{"p": 0.1, "n": 3}') == {"p": Decimal("0.1"), "n": 3}


class RefusingKafka:
    """aiokafka's producer as a view's send reaches it, answering every record with ``error``
    as the broker would (or, ``at_send``, raising it before sending, as aiokafka does when it
    gets no metadata or the record is over ``max_request_size``)."""

    def __init__(self, error: Exception | None, *, at_send: bool = False) -> None:
        self.error = error
        self.at_send = at_send
        self.sent: list[str] = []

    async def send(self, topic: str, value: bytes | None, **_: Any) -> asyncio.Future[Any]:
        self.sent.append(topic)
        if self.at_send:
            raise self.error
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.error is not None:  # else never acknowledged: the broker is out of reach
            delivery.set_exception(self.error)
        return delivery


def _answer(response: Any) -> tuple[int, dict[str, Any], Any]:
    return response.status, json.loads(response.body), response.headers


UNSENT = {
    "timeout": (RefusingKafka(KafkaTimeoutError()), 503, "kafka_unavailable"),
    "no-metadata": (RefusingKafka(KafkaTimeoutError(), at_send=True), 503, "kafka_unavailable"),
    "not-enough-replicas": (RefusingKafka(NotEnoughReplicasError()), 503, "kafka_unavailable"),
    "no-answer": (RefusingKafka(None), 503, "kafka_unavailable"),
    "unauthorized": (RefusingKafka(TopicAuthorizationFailedError("t")), 500, "kafka_refused"),
    "too-large": (RefusingKafka(MessageSizeTooLargeError(), at_send=True), 500, "kafka_refused"),
}


@pytest.mark.parametrize(("kafka", "status", "code"), list(UNSENT.values()), ids=list(UNSENT))
async def test_a_stock_set_kafka_does_not_take_is_answered_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, kafka: RefusingKafka, status: int, code: str
) -> None:
    """A broker that cannot take the record now is a 503 to retry; one that refuses it for good
    says so, in the error shape: never an unhandled error."""
    app.finalize()
    monkeypatch.setattr(egress, "_get", lambda: kafka)
    monkeypatch.setattr(views, "SEND_WAIT_SECONDS", 0.2)  # Faust's producer waits 20 minutes
    body = b'{"available": 5}'
    request = _request([body], {"Content-Length": str(len(body))})
    answer = _answer(await Inventory(app, app.web).put(request, sku="sku-1"))
    assert kafka.sent, "the stock set was sent"
    assert answer[:2] == (status, {"error": code, "detail": answer[1]["detail"]})
    assert (kafka.error is None) or type(kafka.error).__name__ in answer[1]["detail"]
    assert (answer[2].get("Retry-After") is not None) == (status == 503)


async def test_a_replay_kafka_refuses_for_good_is_answered_with_a_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.adapters.memory import MemoryDatabase, MemoryDeadLetterStore
    from pipeline.bootstrap import runtime
    from pipeline.domain import failures
    from pipeline.domain.dead_letters import DeadLetter
    from pipeline.services.dead_letters import DeadLetters
    from pipeline.streaming.topics import redelivery_topic_name

    app.finalize()
    kafka = RefusingKafka(MessageSizeTooLargeError())
    monkeypatch.setattr(egress, "_get", lambda: kafka)
    store = MemoryDeadLetterStore(MemoryDatabase())
    origin = failures.Origin("orders.events", 0, 7, time.time())
    state = failures.Failure("analytics", origin, 1, 0, 0, failures.now_utc())
    headers = failures.dead_letter_headers([], state, "permanent", ValueError("x"),
                                         failures.now_utc())  # fmt: skip
    await store.add(DeadLetter.from_record(0, 1, b"c", b"{}", headers, time.time()))
    service = DeadLetters(store, runtime._send_replay, replay_limit=3,
                          redelivery_topic=redelivery_topic_name,
                          known_agents=lambda: ["analytics"])  # fmt: skip
    monkeypatch.setitem(runtime.__dict__, "dead_letters", service)
    body = b'{"all": true}'
    request = _request([body], {"Content-Length": str(len(body))})
    status, answer, _ = _answer(await ReplayDeadLetters(app, app.web).post(request))
    assert kafka.sent == [redelivery_topic_name("analytics")]
    assert (status, answer["error"]) == (500, "kafka_refused")
    assert "MessageSizeTooLargeError" in answer["detail"]


@contextlib.asynccontextmanager
async def serving(handler: Any) -> AsyncIterator[int]:
    """A real aiohttp server on loopback running ``handler`` for every request; its port."""
    server = web.Application()
    server.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_a_body_that_stops_arriving_is_answered_408_and_frees_its_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that sends its headers and half its body, then nothing, must not hold a
    handler (and its connection) for ever: the view answers 408 once the body is overdue."""
    app.finalize()
    monkeypatch.setattr(views, "settings", replace(settings, http_body_timeout_seconds=0.5))
    handled: list[int] = []

    async def put(request: web.Request) -> web.StreamResponse:
        response = await Inventory(app, app.web).put(request, sku="sku-1")  # type: ignore[arg-type]
        handled.append(response.status)
        return cast(web.StreamResponse, response)

    async with serving(put) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"PUT /inventory/sku-1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
                     b'{"available": ')  # fmt: skip
        await writer.drain()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            waited = time.monotonic() - started
            length = int(dict(
                line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
            )["Content-Length"])  # fmt: skip
            body = json.loads(await reader.readexactly(length))
        finally:
            writer.close()
            await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert body["error"] == "body_timeout" and "0.5 s" in body["detail"]
    assert 0.5 <= waited < 5
    assert handled == [408]


async def test_reconcile_refuses_parameters_it_does_not_take() -> None:
    request = make_mocked_request("GET", "/admin/reconcile?kafka=maybe&pool_pre_ping=1")
    response = await views.Reconcile(app, app.web).get(request)
    assert response.status == 422
    body = json.loads(response.body)
    assert body["error"] == "validation_failed"
    assert [p["field"] for p in body["detail"]] == ["pool_pre_ping", "kafka"]


@pytest.mark.parametrize("view", [views.OrderDetail, views.CancelOrder])
async def test_an_order_id_no_order_can_have_is_a_404_without_a_query(view: type) -> None:
    # PostgreSQL refuses NUL in text: the query would fail as if the database were down (503).
    method = "get" if view is views.OrderDetail else "post"
    request = make_mocked_request(method.upper(), "/orders/x%00y")
    response = await getattr(view(app, app.web), method)(request, order_id="x\x00y")
    assert response.status == 404
    assert json.loads(response.body)["error"] == "not_found"
