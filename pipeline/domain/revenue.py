"""Revenue per tumbling window: a Faust windowed table on the one-partition revenue topic.

Each window's value holds its net revenue, its net order count, the ids of the revenue records it
applied within the dedupe horizon (with their record time) and the ids of its records that were
dead-lettered (pending, for their replay). Every repeat the pipeline makes comes within the horizon
(:mod:`pipeline.domain.horizon`), so the ids are the exact dedupe state; the value's size is bounded
by the records a window receives within the horizon, not by its history.

Not by offset marks: a window once kept only the highest position per stream at which the analytics
agent applied a record's cause, which assumes each stream is applied in offset order; after a
rebalance the stuck-partition re-read (``pipeline.streaming.faust_patches``) applies a range again
after later records, and its first copies fell below the mark and were dropped (the soak lost 197
orders in the window of a worker's kill). Windows are assigned by the record's Kafka timestamp,
which the analytics agent sets to the time the order was created or cancelled, and which retries and
replays keep; they expire after ``PIPELINE_REVENUE_WINDOW_EXPIRES_SECONDS``.

Every change to a window counts its version up by one (``"v"``, first in its value, as in
:mod:`pipeline.streaming.versions`), so a frozen worker's late changelog record of a window is not
applied over the new owner's newer one (the nemesis, seed 22: a window's changelog ended with a
zombie's record of 31 orders, written 2 s after the owner's of 95; a worker recovering it lost 64).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from pipeline.domain.events import RevenueRecorded, money
from pipeline.domain.horizon import Horizon
from pipeline.domain.values import VERSION

REVENUE_KEY = "revenue"


# A window holds the ids of the horizon as 96-bit digests, 16 characters each, grouped by record
# time in its stored value: ~17 bytes an id instead of ~50 for the id with its time. At a
# hundred records a second and the default 300 s horizon a window holds ~30,000 ids: about
# 500 KB, where the full ids took 1.5 MB, over the broker's record limit. A new record whose
# digest equals one of the horizon's would be taken for a repeat and not counted; for 30,000
# ids the chance of any such pair is about n² / 2⁹⁷, below 10⁻¹⁹.
DIGEST_CHARS = 16


def digest(record_id: str) -> str:
    """The 16-character digest a window keeps of a record id (blake2b, 96 bits, base64url)."""
    raw = hashlib.blake2b(record_id.encode(), digest_size=12).digest()
    return base64.urlsafe_b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class Window:
    revenue: Decimal = Decimal("0.00")
    orders: int = 0
    # digests of the ids of the records applied within the horizon, grouped by the window's
    # clock when each was applied (oldest group first, as the clock never runs back). A record
    # adds to the newest group only, so applying one copies that group and the index of ~300
    # groups, not every id: a 28,000-id window copied whole per record was most of the revenue
    # agent's CPU in the soak (2-6 ms a record).
    seen: dict[int, frozenset[str]] = field(default_factory=dict)
    # ids of records dead-lettered here and not applied since: a replay applies only these
    pending: tuple[str, ...] = ()
    clock: int = 0  # the latest record time applied (pipeline.domain.horizon)
    # One more per change: a late changelog record with a lower one is not applied
    # (pipeline.streaming.versions.apply_changelog_batch). Not part of what the window says.
    version: int = field(default=0, compare=False)

    def has_seen(self, key: str) -> bool:
        """Whether the digest ``key`` is among the horizon's."""
        return any(key in group for group in self.seen.values())

    def seen_count(self) -> int:
        return sum(len(group) for group in self.seen.values())

    def to_value(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            VERSION: self.version,
            "revenue": money(self.revenue), "orders": self.orders, "clock": self.clock,
            "ids": {str(at): "".join(group) for at, group in self.seen.items()},
        }  # fmt: skip
        if self.pending:
            value["pending"] = list(self.pending)
        return value

    @classmethod
    def from_value(cls, value: dict[str, Any] | None) -> Window:
        if not value:
            return cls()
        if "ids" in value:
            seen = {
                int(at): frozenset(
                    packed[n : n + DIGEST_CHARS] for n in range(0, len(packed), DIGEST_CHARS)
                )
                for at, packed in sorted(value["ids"].items(), key=lambda item: int(item[0]))
            }
        else:  # written before digests: full ids, with their times or (older) without
            old = value.get("seen", {})
            times = dict.fromkeys(old, 0) if isinstance(old, list) else dict(old)
            groups: dict[int, set[str]] = {}
            for record_id, at in sorted(times.items(), key=lambda item: item[1]):
                groups.setdefault(at, set()).add(digest(record_id))
            seen = {at: frozenset(group) for at, group in groups.items()}
        return cls(
            Decimal(value["revenue"]),
            value["orders"],
            seen,
            tuple(value.get("pending", ())),
            value.get("clock", 0),
            value.get(VERSION, 0),
        )


def apply_revenue(
    window: Window, record: RevenueRecorded, h: Horizon, *, replayed: bool = False
) -> tuple[Window, bool]:
    """Add ``record`` once: a repeat comes within the horizon, where its id is still kept. A
    dead-letter replay is added only while its id is pending here."""
    event_id = record.event_id
    key = digest(event_id)
    if window.has_seen(key) or (replayed and event_id not in window.pending):
        return window, False
    h = h.advanced(window.clock)
    cutoff = h.cutoff
    # Groups go in at the window's clock, which never runs back: the first is the oldest.
    if window.seen and next(iter(window.seen)) < cutoff:
        seen = {at: group for at, group in window.seen.items() if at >= cutoff}
    else:
        seen = dict(window.seen)
    seen[h.now] = seen.get(h.now, frozenset()) | {key}
    pending = tuple(p for p in window.pending if p != event_id)
    return (
        replace(
            window,
            revenue=window.revenue + record.amount,
            orders=window.orders + record.orders,
            seen=seen,
            pending=pending,
            clock=h.now,
            version=window.version + 1,
        ),
        True,
    )


def set_aside(window: Window, record_id: str) -> Window:
    """Note a dead-lettered record as pending in its window, so its replay adds it once.
    Bounded by the window's own life: windows expire."""
    if record_id in window.pending or window.has_seen(digest(record_id)):
        return window
    return replace(window, pending=(*window.pending, record_id), version=window.version + 1)
