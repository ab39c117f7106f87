"""The analytics agent's work as a Quix Streams application: the peer the pipeline benchmark
measures the Faust worker against (issue 17). Bench-only: Quix Streams is a dev dependency.

Per event, the same as the plain loop and the Faust worker (``bench/pipeline.py``): decode with
:func:`pipeline.domain.events.decode_order_event`, dedupe and aggregate the customer's stats in
state (Quix's State API over its RocksDB store, the value keyed by the message key, the
customer), then produce the stats update (and any milestones) to ``analytics.events`` keyed by
customer and the revenue record to ``analytics.revenue`` keyed ``revenue``. The changelog
record is Quix's own: it writes each key changed since the last checkpoint to its changelog
topic when the checkpoint commits (so a hot key written many times in one checkpoint goes out
once, as the worker's write-behind does per commit; the loop writes one per event).

Quix's defaults otherwise (a Quix user's application): confluent-kafka's producer (acks=all,
linger 5 ms, like the loop's aiokafka producer), orjson for state values, at-least-once. The
checkpoint interval is the worker's offset-commit interval, since both are measured to their
last commit.

``python -m bench.quix_app BOOTSTRAP PREFIX GROUP STATE_DIR COMMIT_INTERVAL_S``; runs until
SIGTERM (Quix stops cleanly on it).
"""

from __future__ import annotations

import sys
from typing import Any

from quixstreams import Application, State, message_context

from bench.pipeline import horizon
from pipeline.domain.customer_stats import (
    CustomerStats,
    applied_at,
    apply_event,
    milestone_events,
    revenue_record,
    stats_updated_event,
)
from pipeline.domain.events import decode_order_event, encode

STATS = "stats"  # the state key; Quix prefixes it with the message key


def analytics(
    value: bytes, key: bytes, timestamp: int, headers: Any, state: State
) -> tuple[list[bytes], bytes | None]:
    """One order event: the records for ``analytics.events`` and the revenue record, if any."""
    event = decode_order_event(value)
    raw = state.get(STATS)
    current = None if raw is None else CustomerStats.from_value(raw)
    context = message_context()
    stats, applied = apply_event(current, event, horizon(timestamp // 1000),
                                 position=f"s{context.partition}@{context.offset}")  # fmt: skip
    if applied:
        state.set(STATS, stats.to_value())
    updates = [encode(stats_updated_event(stats, event.event_id))]
    updates.extend(encode(m) for m in milestone_events(stats, event.event_id))
    first = applied_at(stats, event.event_id)
    return updates, None if first is None else encode(revenue_record(event, first))


def build(bootstrap: str, prefix: str, group: str, state_dir: str, commit_s: float) -> Application:
    app = Application(
        broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
        commit_interval=commit_s, state_dir=state_dir, loglevel="WARNING",
    )  # fmt: skip
    raw = {"key_serializer": "bytes", "value_serializer": "bytes",
           "key_deserializer": "bytes", "value_deserializer": "bytes"}  # fmt: skip
    source = app.topic(prefix + "orders.events", **raw)
    events = app.topic(prefix + "analytics.events", **raw)
    revenue = app.topic(prefix + "analytics.revenue", **raw)
    sdf = app.dataframe(source).apply(analytics, stateful=True, metadata=True)
    # Two branches of one dataframe: Quix runs both for each record, in order.
    sdf.apply(lambda out: out[0], expand=True).to_topic(events)
    sdf.filter(lambda out: out[1] is not None).apply(lambda out: out[1]).to_topic(
        revenue, key=lambda _value: b"revenue"
    )
    return app


def main(argv: list[str]) -> int:
    bootstrap, prefix, group, state_dir, commit_s = argv
    build(bootstrap, prefix, group, state_dir, float(commit_s)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
