"""A test agent with switchable faults, loaded into real workers by the failure tests through
``PIPELINE_EXTRA_MODULES=tests.integration.faulty_agent`` (the way users plug in agents).

It consumes ``faulty.in`` (order events keyed by customer) through the same ``consume`` as
every agent. Per event id, a file ``<FAULTY_AGENT_DIR>/<event_id>.fail`` says how it fails:
a number ``k`` (fail k more times with a timeout), ``always`` (a timeout every time) or
``permanent`` (a non-retryable error). On success it appends the event id to ``calls.log``
(every successful call) and, if the customer's table value has not seen the event, to
``effects.log`` (the idempotent effect, deduped in a RocksDB table like the real agents).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import faust

from pipeline.app import app, settings
from pipeline.domain.events import OrderCreated
from pipeline.domain.failures import NonRetryableError
from pipeline.streaming.consume import consume
from pipeline.streaming.topics import agent_source

FAULTS = Path(os.environ.get("FAULTY_AGENT_DIR", "/nonexistent"))

faulty_in = app.topic(
    settings.topic_name("faulty.in"), key_type=bytes, value_type=bytes, key_serializer="raw",
    value_serializer="raw", partitions=settings.partitions, internal=True,
)  # fmt: skip
seen_table = app.Table("faulty_seen", default=None, key_type=bytes, value_type=bytes,
                       partitions=settings.partitions)  # fmt: skip


def _append(name: str, line: str) -> None:
    with (FAULTS / name).open("a") as f:
        f.write(line + "\n")


async def handle(event: OrderCreated) -> None:
    plan = FAULTS / f"{event.event_id}.fail"
    if plan.exists():
        rule = plan.read_text().strip()
        if rule == "permanent":
            raise NonRetryableError(f"event {event.event_id} is refused for good")
        if rule == "always":
            raise TimeoutError("the dependency is down")
        if int(rule) > 0:
            plan.write_text(str(int(rule) - 1))
            raise TimeoutError(f"the dependency is down ({rule} more)")
    key = event.customer_id.encode()
    raw = seen_table.get(key)
    seen = json.loads(raw) if raw else []
    _append("calls.log", event.event_id)
    if event.event_id not in seen:
        seen_table[key] = json.dumps([*seen, event.event_id]).encode()
        _append("effects.log", event.event_id)


@app.agent(agent_source("faulty", faulty_in), concurrency=1)
async def faulty(stream: faust.StreamT[bytes]) -> None:
    await consume(stream, "faulty", handle, OrderCreated)
