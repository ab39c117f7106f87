"""Every topic the pipeline uses, by name, and the only place events are sent from.

Topic values are raw bytes: producers encode with :mod:`pipeline.events` and consumers decode
with it, so the wire format is one JSON schema whoever writes it (the outbox forwarder is not a
Faust producer).
"""

from __future__ import annotations

import faust

from pipeline.app import app, settings
from pipeline.events import CustomerStatsUpdated, encode

ORDER_EVENTS = "orders.events"
ANALYTICS_EVENTS = "analytics.events"


def _topic(base: str) -> faust.TopicT:
    return app.topic(
        settings.topic_name(base),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        replicas=settings.replication_factor,
        # Faust creates only "internal" topics before subscribing; an agent whose source topic
        # is missing at start-up ignores it and never picks it up once it appears.
        internal=True,
    )


order_events_topic = _topic(ORDER_EVENTS)
analytics_events_topic = _topic(ANALYTICS_EVENTS)


async def publish_stats_updated(event: CustomerStatsUpdated) -> None:
    """Send a derived analytics event keyed by customer, its id in a header for dedupe."""
    await analytics_events_topic.send(
        key=event.customer_id.encode(),
        value=encode(event),
        headers={"event_id": event.event_id.encode(), "event_type": event.event_type.encode()},
    )
