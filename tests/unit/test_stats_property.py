"""Property: whatever the order stream — duplicates anywhere, cancellations, poison records —
the stats that come out of decode → dedupe → apply equal a plain model of the contract, and
every poison record is dead-lettered, none applied."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.domain import failures
from pipeline.domain.customer_stats import CustomerStats, apply_event
from pipeline.domain.events import OrderCancelled, OrderCreated, encode
from pipeline.domain.horizon import Horizon
from pipeline.streaming import consume
from tests.conftest import order_cancelled, order_created

CUSTOMERS = ["c1", "c2", "c3"]
POISON = [b"", b"\xff\xfe", b"[]", b'{"event_type": "OrderCreated"}', b'{"event_type": "Nope"}']


@dataclass
class Message:
    value: bytes
    key: bytes = b"k"
    topic: str = "orders.events"
    partition: int = 0
    offset: int = 0
    timestamp: float | None = None
    headers: Any = None


@st.composite
def streams(draw: Any) -> list[bytes]:
    created = [
        order_created(draw(st.sampled_from(CUSTOMERS)), f"{draw(st.integers(1, 500))}.25")
        for _ in range(draw(st.integers(0, 12)))
    ]
    cancelled = [order_cancelled(c) for c in created if draw(st.booleans())]
    events: list[bytes] = [encode(e) for e in created]
    # A cancellation comes after its order or, through a retry, before it: both must work.
    events += [encode(c) for c in cancelled]
    events = draw(st.permutations(events))
    duplicates = draw(st.lists(st.sampled_from(events), max_size=8)) if events else []
    poison = draw(st.lists(st.sampled_from(POISON), max_size=4))
    return list(draw(st.permutations([*events, *duplicates, *poison])))


def model(stream: list[bytes]) -> dict[str, tuple[int, int, Decimal]]:
    """The contract, computed the simple way from the distinct valid events."""
    from pipeline.domain.events import InvalidEvent, decode_order_event

    seen: dict[str, Any] = {}
    for raw in stream:
        try:
            event = decode_order_event(raw)
        except InvalidEvent:
            continue
        seen[event.event_id] = event
    out: dict[str, tuple[int, int, Decimal]] = {}
    cancelled = {e.order_id for e in seen.values() if isinstance(e, OrderCancelled)}
    for c in CUSTOMERS:
        mine = [e for e in seen.values() if e.customer_id == c]
        orders = [e for e in mine if isinstance(e, OrderCreated)]
        live = sum((e.total for e in orders if e.order_id not in cancelled), Decimal("0.00"))
        out[c] = (len(orders), sum(isinstance(e, OrderCancelled) for e in mine), live)
    return out


@settings(max_examples=150, deadline=None)
@given(streams())
def test_stats_match_the_model_for_any_stream(stream: list[bytes]) -> None:
    table: dict[str, CustomerStats] = {}
    set_aside: list[dict[str, bytes]] = []

    async def handle(event: OrderCreated | OrderCancelled) -> None:
        stats, applied = apply_event(table.get(event.customer_id), event, Horizon(0, 300, 86400))
        if applied:
            table[event.customer_id] = stats

    async def collect(topic: str, key: Any, value: Any, headers: Any, **_: Any) -> None:
        set_aside.append(dict(headers))

    policy = failures.FailurePolicy("analytics", in_place_attempts=1, retry_delays=())
    original = consume.send_reliably
    consume.send_reliably = collect  # type: ignore[assignment]
    try:
        for offset, raw in enumerate(stream):
            asyncio.run(consume.handle_record(Message(raw, offset=offset), policy, handle,
                                              (OrderCreated, OrderCancelled)))  # fmt: skip
    finally:
        consume.send_reliably = original  # type: ignore[assignment]

    got = {c: (s.order_count, s.cancelled_count, s.total_spent) for c, s in table.items()}
    expected = {c: figures for c, figures in model(stream).items() if figures[:2] != (0, 0)}
    assert got == expected
    assert len(set_aside) == sum(raw in POISON for raw in stream)
    assert all(h[failures.REASON] == b"poison" for h in set_aside)


@pytest.mark.parametrize("raw", POISON)
def test_each_poison_record_is_rejected_by_the_decoder(raw: bytes) -> None:
    from pipeline.domain.events import InvalidEvent, decode_order_event

    with pytest.raises(InvalidEvent):
        decode_order_event(raw)
