"""The customer_stats table (see :mod:`pipeline.domain.customer_stats` for its value and rules)."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from pipeline.app import app, settings
from pipeline.domain.customer_stats import CustomerStats, set_aside
from pipeline.domain.horizon import ValueTooLarge
from pipeline.streaming import delivery
from pipeline.streaming.versioned_table import VersionedTable

log = logging.getLogger(__name__)


customer_stats_table = app.Table(
    "customer_stats",
    key_type=bytes,
    # Values are our own JSON bytes: Faust's json codec cost more than the encoding itself.
    value_type=bytes,
    partitions=settings.partitions,
    help="Per-customer order statistics with the ids of recently applied events.",
)


customer_stats: VersionedTable[CustomerStats] = VersionedTable(
    customer_stats_table, lambda _key, fields: CustomerStats.from_value(fields),
    lambda stats: stats.customer_id,
)  # fmt: skip


def read_figures(raw: bytes) -> dict[str, Any]:
    """A stored value's figures without its dedupe state, for scans over many customers (the
    dashboard's top list): ``to_value`` writes the figures before ``milestones`` and the ids
    of the horizon, which are most of the bytes. ``,"milestones":`` cannot occur earlier,
    inside a JSON string, since a quote there is escaped."""
    cut = raw.find(b',"milestones":')
    if cut > 0:
        with contextlib.suppress(ValueError):
            return dict(json.loads(raw[:cut] + b"}"))
    return dict(json.loads(raw))


async def note_dead_letter(message: Any) -> None:
    """The analytics agent dead-lettered ``message``: its customer's stats note the event as
    pending, so a replay applies it once, however late (:mod:`pipeline.domain.horizon`)."""
    event_id = delivery.event_id(message)
    if not message.key or event_id is None:
        return  # no customer or no id: its replay can be deduped by nothing; nothing to note
    customer_id = bytes(message.key).decode(errors="replace")
    stats = customer_stats.get(customer_id) or CustomerStats(customer_id)
    noted = set_aside(stats, event_id, delivery.horizon(message).now)
    if noted is not stats:
        try:
            await customer_stats.save(stats, noted)
        except ValueTooLarge as exc:  # the dead letter is out; its replay will be refused
            log.error("not noting %s as pending: %s", event_id, exc)
