"""Order status: gathers each order's line outcomes from ``inventory.events``, decides, and
moves the order row from ``created`` to ``confirmed`` or ``rejected`` — never out of
``cancelled`` — then announces the decision on ``orders.status``.

Guarantees: the database update is conditional (``WHERE status = 'created'``), so repeating it
is harmless; the decision is announced only if the database holds it (a cancelled order gets
no confirmation), with an id computed from the order, and again on every repeat (consumers
dedupe). A rejected order's reserved lines are released, also those reserved after the
decision. Concurrency stays 1 (faust #606).
"""

from __future__ import annotations

from functools import partial

import faust

from pipeline.app import app
from pipeline.consume import decoded, with_db_retries
from pipeline.events import InventoryRejected, InventoryReleased, InventoryReserved, utc_now
from pipeline.runtime import runtime
from pipeline.topics import (
    inventory_commands_topic,
    inventory_events_topic,
    order_status_topic,
    publish,
)
from tables.order_progress import (
    apply_outcome,
    compensations,
    decision_event,
    forget_progress,
    read_progress,
    settled,
    write_progress,
)


@app.agent(inventory_events_topic, concurrency=1)
async def track_order_status(stream: faust.StreamT[bytes]) -> None:
    async for _record, outcome in decoded(
        stream, InventoryReserved, InventoryRejected, InventoryReleased
    ):
        if isinstance(outcome, InventoryReleased):
            continue
        progress = read_progress(outcome.order_id)
        updated = apply_outcome(progress, outcome)
        if updated != progress:
            write_progress(updated)
        for release in compensations(updated):
            await publish(inventory_commands_topic, release.sku, release)
        announcement = decision_event(updated)
        if announcement is None:
            continue
        decision = updated.decision
        assert decision is not None
        status = await with_db_retries(
            partial(runtime.order_store.decide_order, updated.order_id, decision, utc_now())
        )
        if status == decision:
            await publish(order_status_topic, updated.order_id, announcement)
        if settled(updated):
            # Only now: a crash before this line leaves the entry for the redelivery to redo.
            forget_progress(updated.order_id)
