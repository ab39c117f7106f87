"""Inventory: order lines repartitioned by SKU, and the stock keeper that owns each SKU.

``request_lines`` turns each order event into one command per line on ``inventory.commands``
(keyed by SKU): a reservation for ``OrderCreated``, a release for ``OrderCancelled``. Command
ids are computed from the order event, so a redelivery repeats them and the keeper dedupes.

``keep_stock`` applies commands to the SKU's stock (see ``tables.inventory``) and answers each
line on ``inventory.events`` (keyed by order id). Guarantees: each line is reserved, rejected or
released at most once whatever the number of deliveries within the dedupe horizon, and a
replayed dead letter at most once whenever it comes (``pipeline.domain.horizon``); a release that
overtakes its reservation makes that reservation take nothing, so stock never leaks.
Concurrency stays 1 (faust #606).
"""

from __future__ import annotations

import faust

from pipeline.app import app
from pipeline.domain.events import (
    LineReleaseRequested,
    LineReservationRequested,
    LineSettled,
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    StockSet,
    derived_event_id,
)
from pipeline.domain.stock import Stock, StockCommand, apply_command
from pipeline.streaming import delivery
from pipeline.streaming.consume import consume
from pipeline.streaming.topics import (
    agent_source,
    inventory_commands_topic,
    inventory_events_topic,
    publish,
)
from tables.inventory import note_dead_letter, stock


def line_commands(
    event: OrderEvent, source: str = ""
) -> list[LineReservationRequested | LineReleaseRequested]:
    """One command per line; ``source`` names the ``orders.events`` partition the event came
    from (the stock keeper expires each line's entry on that partition's clock)."""
    if isinstance(event, OrderCreated):
        return [
            LineReservationRequested(
                event_id=derived_event_id(event.event_id, f"reserve:{n}"),
                caused_by=event.event_id,
                order_id=event.order_id,
                customer_id=event.customer_id,
                customer_email=event.contact.email,
                line_no=n,
                line_count=len(event.items),
                sku=line.sku,
                quantity=line.quantity,
                source=source,
            )
            for n, line in enumerate(event.items, start=1)
        ]
    return [
        LineReleaseRequested(
            event_id=derived_event_id(event.event_id, f"release:{n}"),
            caused_by=event.event_id,
            order_id=event.order_id,
            line_no=n,
            sku=line.sku,
            quantity=line.quantity,
            reason="cancelled",
            confirmed=event.previous_status == "confirmed",
            source=source,
        )
        for n, line in enumerate(event.items, start=1)
    ]


async def send_line_commands(event: OrderEvent) -> None:
    at = delivery.cause_time()  # the horizon runs on source time (pipeline.streaming.delivery)
    # A retry or replay comes back into the partition the event first came from.
    for command in line_commands(event, str(delivery.current_message().partition)):
        await publish(inventory_commands_topic, command.sku, command, timestamp=at)


async def apply_stock_command(command: StockCommand) -> None:
    before = stock.get(command.sku)
    current = before or Stock(command.sku)
    updated, outcome = apply_command(current, command, delivery.horizon(),
                                     replayed=delivery.is_replay())  # fmt: skip
    await stock.save(before, before if updated is current else updated)
    if outcome is not None:
        await publish(inventory_events_topic, outcome.order_id, outcome,
                      timestamp=delivery.cause_time())  # fmt: skip


@app.agent(agent_source("inventory-requests"), concurrency=1)
async def request_lines(stream: faust.StreamT[bytes]) -> None:
    await consume(stream, "inventory-requests", send_line_commands, OrderCreated, OrderCancelled)


@app.agent(agent_source("inventory"), concurrency=1)
async def keep_stock(stream: faust.StreamT[bytes]) -> None:
    commands = (LineReservationRequested, LineReleaseRequested, LineSettled, StockSet)
    await consume(stream, "inventory", apply_stock_command, *commands,
                  on_dead_letter=note_dead_letter)  # fmt: skip
