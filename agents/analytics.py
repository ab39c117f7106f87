"""Per-customer analytics: consumes ``orders.events``, keeps ``customer_stats``, publishes
``CustomerStatsUpdated`` to ``analytics.events``.

Guarantees: each order event changes a customer's stats exactly once however often it is
delivered (the dedupe marker is in the stats value itself); its derived event has an id
computed from the cause and is sent again on a redelivery, so a crash between the table write
and the send loses nothing and consumers dedupe the repeat.
Assumes: events are keyed by customer id, so a customer's events share one partition and
arrive in commit order. Concurrency stays 1 (faust #606: concurrency > 1 can commit an
offset past an in-flight event).
"""

from __future__ import annotations

import logging

import faust

from pipeline.app import app, settings
from pipeline.events import InvalidEvent, decode_order_event
from pipeline.topics import order_events_topic, publish_stats_updated
from tables.customer_stats import (
    apply_event,
    read_customer_stats,
    stats_updated_event,
    write_customer_stats,
)

log = logging.getLogger(__name__)


@app.agent(order_events_topic, concurrency=1)
async def customer_analytics(stream: faust.StreamT[bytes]) -> None:
    async for record in stream.events():
        try:
            event = decode_order_event(record.value)
        except InvalidEvent as exc:
            # Dead-lettering arrives with the failure-handling work; until then the record is
            # skipped loudly with enough context to find it.
            msg = record.message
            log.warning(
                "skipping undecodable record %s[%s]@%s: %s",
                msg.topic, msg.partition, msg.offset, exc,
            )  # fmt: skip
            continue
        stats, applied = apply_event(
            read_customer_stats(event.customer_id), event, settings.dedupe_window
        )
        if applied:
            write_customer_stats(stats)
        await publish_stats_updated(stats_updated_event(stats, event.event_id))
