"""Views answered offline: the rebalance guard, before any routing happens; request bodies
read whole and judged."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from pipeline.app import app
from pipeline.web.http import HttpError, parse_json, read_json
from pipeline.web.views import CustomerStatsView, Inventory, Revenue


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


async def test_a_body_in_pieces_is_read_whole() -> None:
    body = json.dumps({"customer_id": "c", "items": [{"unit_price": "1.50"}]}).encode()
    request = _request([body[:9], body[9:20], body[20:]], {"Content-Length": str(len(body))})
    assert await read_json(request, 1024) == {"customer_id": "c", "items": [{"unit_price": "1.50"}]}


async def test_a_body_over_the_limit_is_413_with_or_without_a_length() -> None:
    with pytest.raises(HttpError) as info:
        await read_json(_request([b"{}"], {"Content-Length": "2000"}), 1024)
    assert (info.value.status, info.value.code) == (413, "body_too_large")
    with pytest.raises(HttpError) as info:  # chunked: no length, only bytes
        await read_json(_request([b"[" + b"1," * 300, b"1," * 300 + b"1]"]), 1024)
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
