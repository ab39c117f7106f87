"""The analytics agent through Faust's test_context (memory store, no broker)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

import agents.analytics as analytics
from pipeline.app import app
from pipeline.domain.events import CustomerStatsUpdated, encode
from pipeline.streaming import consume, versioned_store, versions
from tables.customer_stats import customer_stats
from tests.conftest import order_cancelled, order_created

SetAside = list[tuple[str, bytes | None, bytes | None, dict[str, bytes]]]


@pytest.fixture
def set_aside(monkeypatch: pytest.MonkeyPatch) -> SetAside:
    """Records sent to retry or dead-letter topics, collected instead of sent."""
    sent: SetAside = []

    async def collect(topic: str, key: bytes | None, value: bytes | None,
                      headers: list[tuple[str, bytes]], **_: object) -> None:  # fmt: skip
        sent.append((topic, key, value, dict(headers)))

    monkeypatch.setattr(consume, "send_reliably", collect)
    return sent


# Changelog records the table writes send (table, key, value), collected instead of sent.
changelog: list[tuple[str, bytes, bytes]] = []


async def record_changelog(table: Any, event: Any, key: bytes, raw: bytes) -> None:
    changelog.append((table.name, key, raw))


@pytest.fixture
async def published(
    monkeypatch: pytest.MonkeyPatch, set_aside: SetAside
) -> AsyncIterator[list[CustomerStatsUpdated]]:
    """The agent's outbound dependency: collects derived events instead of sending them."""
    sent: list[CustomerStatsUpdated] = []

    async def collect(topic: object, key: str, event: object, **_: object) -> None:
        if isinstance(event, CustomerStatsUpdated):
            sent.append(event)

    monkeypatch.setattr(analytics, "publish", collect)
    monkeypatch.setattr(versions, "_send", record_changelog)
    changelog.clear()
    app.finalize()
    app.conf.store = "memory://"
    app.flow_control.resume()
    yield sent


async def test_agent_applies_each_event_once_and_republishes_duplicates(
    published: list[CustomerStatsUpdated], set_aside: SetAside
) -> None:
    created = order_created("cust-a", total="12.00")
    other = order_created("cust-a", total="8.00")
    async with analytics.customer_analytics.test_context() as agent:
        for event in (created, created, other, order_cancelled(created)):
            await agent.put(encode(event), key=b"cust-a")
        await agent.put(b"not json at all", key=b"cust-a")

    stats = customer_stats.get("cust-a")
    assert stats is not None
    assert (stats.order_count, stats.cancelled_count) == (2, 1)
    assert stats.total_spent == Decimal("8.00")
    # The duplicate is re-sent with the same deterministic id, so nothing is lost downstream.
    ids = [e.event_id for e in published]
    assert len(published) == 4
    assert ids[0] == ids[1] and len(set(ids)) == 3
    assert published[-1].total_spent == Decimal("8.00")
    # Nothing reaches the changelog before the commit's flush, then one record for the three changes
    # (pipeline.streaming.versions: write-behind); a duplicate handled after that flush sends the
    # stored value again (its record may never have reached the changelog before a crash:
    # pipeline.streaming.versions.resend).
    assert changelog == []
    await versions.flush()
    async with analytics.customer_analytics.test_context() as agent:
        await agent.put(encode(created), key=b"cust-a")
    versions_sent = [versioned_store.version_of(raw) for _, _, raw in changelog]
    assert versions_sent == [3, 3]
    assert all(name == "customer_stats" and key == b"cust-a" for name, key, _ in changelog)
    # The undecodable record went to the dead-letter topic, bytes intact, and nothing stalled.
    [(topic, key, value, headers)] = set_aside
    assert topic.endswith("dead-letters")
    assert (key, value) == (b"cust-a", b"not json at all")
    assert headers["x-dead-letter-reason"] == b"poison"
    assert headers["x-agent"] == b"analytics"


async def test_a_dead_lettered_event_is_pending_and_its_replay_applies_once(
    published: list[CustomerStatsUpdated], set_aside: SetAside, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.domain.failures import NonRetryableError

    lost = order_created("cust-p", total="4.00")
    real_read = customer_stats.get
    failing = {lost.event_id}

    def read(customer_id: str) -> Any:
        if failing:
            failing.clear()
            raise NonRetryableError("the handler's dependency refused it")
        return real_read(customer_id)

    monkeypatch.setattr(customer_stats, "get", read)
    ids = [("event_id", lost.event_id.encode())]
    async with analytics.customer_analytics.test_context() as agent:
        await agent.put(encode(lost), key=b"cust-p", headers=ids)
        [(topic, *_)] = set_aside
        assert topic.endswith("dead-letters")
        pending = customer_stats.get("cust-p")
        assert pending is not None and lost.event_id in pending.pending
        assert pending.order_count == 0
        for replays in (b"1", b"2"):  # the replay, then a second replay of the same letter
            await agent.put(encode(lost), key=b"cust-p", headers=[*ids, ("x-replays", replays)])
        # a replay of an event never dead-lettered here (not pending) changes nothing
        other = order_created("cust-p", total="9.00")
        replay = [("event_id", other.event_id.encode()), ("x-replays", b"1")]
        await agent.put(encode(other), key=b"cust-p", headers=replay)

    stats = customer_stats.get("cust-p")
    assert stats is not None and stats.order_count == 1 and stats.total_spent == Decimal("4.00")
    assert stats.pending == {}
