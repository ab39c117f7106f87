"""Per-customer order statistics: the table, its value and its pure update rule.

Meaning (the public contract): ``order_count`` counts orders created, cancelled ones included;
``cancelled_count`` counts cancellations; ``total_spent`` sums the totals of orders not
cancelled; ``average_order_value`` is ``total_spent`` over the orders not cancelled (0.00 when
there are none).

Idempotency: the ids of the events applied to a customer within the dedupe horizon live in the same
table value as the figures they guard (one changelog record), with the ids of its events that were
dead-lettered and not applied since (``pending``, for replays). Every repeat the pipeline makes
arrives within the horizon, and a replay is applied only while pending
(:mod:`pipeline.domain.horizon`), so the value's size is bounded by the customer's events per
horizon, not by how many it has had.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.domain.events import (
    CENTS,
    CustomerStatsUpdated,
    MilestoneReached,
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    RevenueRecorded,
    derived_event_id,
    money,
)
from pipeline.domain.horizon import Horizon, prune_times
from pipeline.domain.values import VERSION

FIRST_ORDER, LIFETIME_VALUE = "first_order", "lifetime_value"

ZERO = Decimal("0.00")


@dataclass(frozen=True, slots=True)
class CustomerStats:
    customer_id: str
    order_count: int = 0
    cancelled_count: int = 0
    total_spent: Decimal = ZERO
    first_order_at: datetime | None = None
    last_order_at: datetime | None = None
    # ids of the events applied within the horizon -> (record time, where it was applied:
    # ``pipeline.streaming.delivery.position``, carried by the revenue record for diagnosis)
    seen: dict[str, tuple[int, str]] = field(default_factory=dict)
    # milestone -> the event that reached it: each is reached once per customer, ever.
    milestones: dict[str, str] = field(default_factory=dict)
    # ids of events dead-lettered and not applied since -> when (replays apply only these)
    pending: dict[str, int] = field(default_factory=dict)
    clock: int = 0  # the latest record time applied (pipeline.domain.horizon)
    # Of the stored value this was read from (pipeline.streaming.versions); not part of what it
    # says.
    version: int = field(default=0, compare=False)

    @property
    def average_order_value(self) -> Decimal:
        live = self.order_count - self.cancelled_count
        return (self.total_spent / live).quantize(CENTS) if live > 0 else ZERO

    def to_value(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "order_count": self.order_count,
            "cancelled_count": self.cancelled_count,
            "total_spent": money(self.total_spent),
            "first_order_at": _iso(self.first_order_at),
            "last_order_at": _iso(self.last_order_at),
            # The dedupe state last: ``read_figures`` stops before it.
            "milestones": self.milestones,
            "clock": self.clock,
            "pending": self.pending,
            "seen": {event_id: list(entry) for event_id, entry in self.seen.items()},
        }

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> CustomerStats:
        return cls(
            customer_id=value["customer_id"],
            order_count=value["order_count"],
            cancelled_count=value["cancelled_count"],
            total_spent=Decimal(value["total_spent"]),
            first_order_at=_time(value["first_order_at"]),
            last_order_at=_time(value["last_order_at"]),
            seen=_seen(value["seen"]),
            milestones=dict(value.get("milestones", {})),
            pending=dict(value.get("pending", {})),
            clock=value.get("clock", 0),
            version=value.get(VERSION, 0),
        )

    def weight(self) -> int:
        """What its encoded size grows with (``pipeline.streaming.versions`` estimates the size from
        it)."""
        return 1 + len(self.seen) + len(self.pending) + len(self.milestones)

    def public(self) -> dict[str, Any]:
        """The body of ``GET /customers/{customer_id}/stats``."""
        body = self.to_value()
        for internal in ("seen", "milestones", "pending", "clock"):
            del body[internal]
        body["average_order_value"] = money(self.average_order_value)
        return body


def apply_order_created(stats: CustomerStats, event: OrderCreated) -> CustomerStats:
    first = (
        event.created_at
        if stats.first_order_at is None
        else min(stats.first_order_at, event.created_at)
    )
    last = (
        event.created_at
        if stats.last_order_at is None
        else max(stats.last_order_at, event.created_at)
    )
    return replace(
        stats,
        order_count=stats.order_count + 1,
        total_spent=stats.total_spent + event.total,
        first_order_at=first,
        last_order_at=last,
    )


def apply_order_cancelled(stats: CustomerStats, event: OrderCancelled) -> CustomerStats:
    return replace(
        stats,
        cancelled_count=stats.cancelled_count + 1,
        total_spent=stats.total_spent - event.total,
    )


def reach_milestones(
    stats: CustomerStats, cause_event_id: str, lifetime_value: Decimal
) -> CustomerStats:
    reached = dict(stats.milestones)
    if stats.order_count >= 1 and FIRST_ORDER not in reached:
        reached[FIRST_ORDER] = cause_event_id
    if stats.total_spent >= lifetime_value and LIFETIME_VALUE not in reached:
        reached[LIFETIME_VALUE] = cause_event_id
    return stats if reached == stats.milestones else replace(stats, milestones=reached)


def _seen(raw: Any) -> dict[str, tuple[int, str]]:
    # Values written before the horizon held a list of ids; they count as seen at time 0.
    if isinstance(raw, list):
        return dict.fromkeys(raw, (0, ""))
    entries = {event_id: (int(entry[0]), str(entry[1])) for event_id, entry in raw.items()}
    # Oldest first, as apply_event relies on (values are written so; this keeps any that is not).
    return dict(sorted(entries.items(), key=lambda item: item[1][0]))


def apply_event(
    stats: CustomerStats | None,
    event: OrderEvent,
    h: Horizon,
    lifetime_value: Decimal = Decimal("1000.00"),
    *,
    replayed: bool = False,
    position: str = "",
) -> tuple[CustomerStats, bool]:
    """Apply ``event`` once: returns the new stats and whether it changed anything.
    ``replayed`` says the event comes from a dead-letter replay, applied only while pending;
    ``position`` is where the record was read (kept with its id, see ``revenue_record``)."""
    current = stats if stats is not None else CustomerStats(customer_id=event.customer_id)
    event_id = event.event_id
    if event_id in current.seen or (replayed and event_id not in current.pending):
        return current, False
    h = h.advanced(current.clock)
    if isinstance(event, OrderCreated):
        updated = apply_order_created(current, event)
    else:
        updated = apply_order_cancelled(current, event)
    updated = reach_milestones(updated, event_id, lifetime_value)
    cutoff = h.cutoff
    seen = current.seen
    # Entries go in at the value's clock, which never runs back: the first is the oldest (a
    # min over a hot customer's 3,000 entries per event was 4% of its worker).
    if seen and next(iter(seen.values()))[0] < cutoff:
        seen = {k: entry for k, entry in seen.items() if entry[0] >= cutoff}
    seen = {**seen, event_id: (h.now, position)}
    pending = current.pending
    if event_id in pending or (pending and min(pending.values()) < h.replay_cutoff):
        pending = prune_times(
            {k: at for k, at in pending.items() if k != event_id}, h.replay_cutoff
        )
    return replace(updated, seen=seen, pending=pending, clock=h.now), True


def set_aside(stats: CustomerStats, event_id: str, at: int) -> CustomerStats:
    """Note a dead-lettered event as pending, so its replay applies it (once); an event the
    stats already count is not pending."""
    if event_id in stats.pending or event_id in stats.seen:
        return stats
    return replace(stats, pending={**stats.pending, event_id: at})


def milestone_events(stats: CustomerStats, cause_event_id: str) -> list[MilestoneReached]:
    """The milestones this event reached (again, on a redelivery of the same event)."""
    return [
        MilestoneReached(
            event_id=derived_event_id(f"{stats.customer_id}:{name}", MilestoneReached.event_type),
            caused_by=cause,
            customer_id=stats.customer_id,
            milestone=name,
            total_spent=stats.total_spent,
        )
        for name, cause in sorted(stats.milestones.items())
        if cause == cause_event_id
    ]


def applied_at(stats: CustomerStats, event_id: str) -> str | None:
    """Where ``event_id`` was first applied, while the horizon remembers it."""
    entry = stats.seen.get(event_id)
    return None if entry is None or not entry[1] else entry[1]


def revenue_record(event: OrderEvent, position: str) -> RevenueRecorded:
    """Net revenue, in the window of the time the event happened (a cancellation subtracts
    in the window it happened in). Its id derives from the event's, so a repeat has the same
    id, which the revenue windows dedupe by; ``position`` is where the event was first applied
    (a repeat carries the same), kept for diagnosis: ``make soak`` checks the revenue topic's
    order by it."""
    created = isinstance(event, OrderCreated)
    return RevenueRecorded(
        event_id=derived_event_id(event.event_id, RevenueRecorded.event_type),
        caused_by=event.event_id,
        amount=event.total if created else -event.total,
        orders=1 if created else -1,
        occurred_at=event.created_at if isinstance(event, OrderCreated) else event.cancelled_at,
        position=position,
    )


def stats_updated_event(stats: CustomerStats, cause_event_id: str) -> CustomerStatsUpdated:
    return CustomerStatsUpdated(
        event_id=derived_event_id(cause_event_id, CustomerStatsUpdated.event_type),
        caused_by=cause_event_id,
        customer_id=stats.customer_id,
        order_count=stats.order_count,
        cancelled_count=stats.cancelled_count,
        total_spent=stats.total_spent,
        average_order_value=stats.average_order_value,
        first_order_at=stats.first_order_at,
        last_order_at=stats.last_order_at,
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


# Keys are the raw customer-id bytes, as on the source topic: the web router hashes a key
# with the table's key serializer, and only raw bytes hash to the partition the event came on.
