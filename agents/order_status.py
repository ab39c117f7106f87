"""Order status: gathers each order's line outcomes from ``inventory.events``, decides, and
moves the order row from ``created`` to ``confirmed`` or ``rejected`` — never out of
``cancelled`` — then announces the decision on ``orders.status``.

Guarantees: the database update is conditional (``WHERE status = 'created'``), so repeating it
is harmless; the decision is announced only if the database holds it (a cancelled order gets
no confirmation), with an id computed from the order, and again on every repeat (consumers
dedupe). A rejected order's reserved lines are released, also those reserved after the
decision. A confirmed order's lines are settled with their stock keepers (``LineSettled``), so
the keepers' ledgers do not hold confirmed lines forever. Concurrency stays 1 (faust #606).
"""

from __future__ import annotations

import faust

from pipeline.app import app
from pipeline.bootstrap import runtime
from pipeline.domain.events import InventoryRejected, InventoryReleased, InventoryReserved, utc_now
from pipeline.domain.order_progress import (
    apply_outcome,
    compensations,
    decision_event,
    settled,
    settlements,
)
from pipeline.streaming import delivery
from pipeline.streaming.consume import consume
from pipeline.streaming.topics import (
    agent_source,
    inventory_commands_topic,
    order_status_topic,
    publish,
)
from tables.order_progress import order_progress


async def record_outcome(
    outcome: InventoryReserved | InventoryRejected | InventoryReleased,
) -> None:
    if isinstance(outcome, InventoryReleased):
        return
    progress = order_progress.get(outcome.order_id)
    updated = apply_outcome(progress, outcome)
    await order_progress.save(progress, updated)
    at = delivery.cause_time()  # the horizon runs on source time (pipeline.streaming.delivery)
    for release in compensations(updated):
        await publish(inventory_commands_topic, release.sku, release, timestamp=at)
    announcement = decision_event(updated)
    if announcement is None:
        return
    decision = updated.decision
    assert decision is not None
    # A database that is down fails this event; the failure policy retries it (the update is
    # conditional, and everything above is idempotent, so a retry repeats nothing).
    status = await runtime.order_store.decide_order(updated.order_id, decision, utc_now())
    if status == decision:
        # Confirmed in the database: no cancellation came first, so every line stays reserved
        # until a cancellation that says so (tables.inventory).
        for settlement in settlements(updated):
            await publish(inventory_commands_topic, settlement.sku, settlement, timestamp=at)
        await publish(order_status_topic, updated.order_id, announcement, timestamp=at)
    if settled(updated):
        # Only now: a crash before this line leaves the entry for the redelivery to redo.
        await order_progress.delete(updated.order_id)


@app.agent(agent_source("order-status"), concurrency=1)
async def track_order_status(stream: faust.StreamT[bytes]) -> None:
    await consume(stream, "order-status", record_outcome,
                  InventoryReserved, InventoryRejected, InventoryReleased)  # fmt: skip
