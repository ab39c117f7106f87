"""Reconcile: the database is the source of truth; do the tables, the outbox and Kafka agree?

Checks, once the pipeline has drained:
- per customer, ``order_count``, ``cancelled_count`` and ``total_spent`` in ``customer_stats``
  equal the database's, less what the analytics agent dead-lettered (every event is applied
  or dead-lettered: never both, never neither);
- per SKU, ``reserved`` equals the quantities of confirmed orders that are not cancelled;
- every order has exactly one ``OrderCreated`` outbox row, and one ``OrderCancelled`` row if
  (and only if) it was cancelled — for orders younger than the outbox retention, whose rows
  are still there; no row is pending or parked;
- every outbox row reached ``orders.events`` (by event id), when Kafka is scanned; records
  there without a readable ``event_id`` header (not written by the forwarder) are counted as
  ``kafka_undecodable``, not compared;
- no order is still ``created`` (inventory answered for every order).

``compare`` is pure (:mod:`pipeline.domain.reconcile`); the database's facts come from
:class:`pipeline.adapters.db.reconcile.ReconcileStore`, the topic's ids from
:func:`pipeline.adapters.kafka.scan.scan_event_ids`; the web view
(``GET /admin/reconcile``) reads the tables through the worker's own routed views, so any
worker can run it, and ``python -m pipeline reconcile`` asks a worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from pipeline.adapters.db.reconcile import ReconcileStore
from pipeline.domain.reconcile import Report, TopicIds, compare

Read = Callable[[str], Awaitable[dict[str, Any] | None]]
Scan = Callable[[], Awaitable[TopicIds]]


async def reconcile(
    store: ReconcileStore, young_since: datetime, *, read_stats: Read, read_stock: Read,
    scan: Scan | None = None,
) -> Report:  # fmt: skip
    """The database's facts (outbox rows younger than ``young_since`` checked one by one)
    against each customer's stats and each SKU's stock as ``read_stats``/``read_stock`` answer
    (None: no such key), and, with ``scan``, against the event ids on ``orders.events``."""
    facts = await store.facts(young_since)
    customers = sorted(facts.customers)
    skus = sorted(facts.reserved)
    stats = await asyncio.gather(*(read_stats(c) for c in customers))
    stock = await asyncio.gather(*(read_stock(k) for k in skus))
    topic = await scan() if scan is not None else None
    report = compare(facts, dict(zip(customers, stats, strict=True)),
                     dict(zip(skus, stock, strict=True)),
                     None if topic is None else topic.ids)  # fmt: skip
    if topic is not None:
        report.checked["kafka_duplicates"] = topic.records - len(topic.ids)
        report.checked["kafka_undecodable"] = topic.undecodable
    return report
