"""Per-customer analytics: consumes ``orders.events``, keeps ``customer_stats``, publishes
``CustomerStatsUpdated`` and milestones to ``analytics.events`` and revenue records to the
revenue windows.

Guarantees: each order event changes a customer's stats exactly once however often the
pipeline delivers it within the dedupe horizon, and a replayed dead letter once whenever it comes
(the dedupe state is in the stats value itself, ``pipeline.domain.horizon``); its derived events
have ids computed from the cause and are sent again on a redelivery, so a crash between the table
write and the send loses nothing and consumers dedupe the repeat.
Assumes: events are keyed by customer id, so a customer's events share one partition and
arrive in commit order. Concurrency stays 1 (faust #606: concurrency > 1 can commit an
offset past an in-flight event).
"""

from __future__ import annotations

import faust

from pipeline.app import app, settings
from pipeline.domain.customer_stats import (
    applied_at,
    apply_event,
    milestone_events,
    revenue_record,
    stats_updated_event,
)
from pipeline.domain.events import OrderCancelled, OrderCreated
from pipeline.streaming import delivery
from pipeline.streaming.consume import consume
from pipeline.streaming.topics import (
    agent_source,
    analytics_events_topic,
    analytics_revenue_topic,
    publish,
)
from tables.customer_stats import customer_stats, note_dead_letter


async def update_customer_stats(event: OrderCreated | OrderCancelled) -> None:
    before = customer_stats.get(event.customer_id)
    stats, applied = apply_event(
        before, event, delivery.horizon(),
        settings.lifetime_value_milestone, replayed=delivery.is_replay(),
        position=delivery.position(),
    )  # fmt: skip
    await customer_stats.save(before, stats if applied else before)
    at = delivery.cause_time()
    await publish(analytics_events_topic, stats.customer_id,
                  stats_updated_event(stats, event.event_id), timestamp=at)  # fmt: skip
    for milestone in milestone_events(stats, event.event_id):
        await publish(analytics_events_topic, stats.customer_id, milestone, timestamp=at)
    # Sent again on a repeat, same id (the windows dedupe by it) and the position of the first
    # application (where it was read: the soak checks the revenue topic's order by it). A
    # replay that changed nothing (not pending) has none left to send.
    position = applied_at(stats, event.event_id)
    if position is not None:
        revenue = revenue_record(event, position)
        await publish(analytics_revenue_topic, "revenue", revenue, timestamp=revenue.occurred_at)


@app.agent(agent_source("analytics"), concurrency=1)
async def customer_analytics(stream: faust.StreamT[bytes]) -> None:
    await consume(stream, "analytics", update_customer_stats, OrderCreated, OrderCancelled,
                  on_dead_letter=note_dead_letter)  # fmt: skip
