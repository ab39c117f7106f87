"""The notifications table (see :mod:`pipeline.domain.notifications` for its value and rules)."""

from __future__ import annotations

from pipeline.app import app, settings
from pipeline.domain.notifications import DAY, NotificationSent
from pipeline.settings import Settings
from pipeline.streaming.versioned_table import VersionedTable


def kept_seconds(s: Settings) -> int:
    """How long an entry is kept: past the replay age and the dedupe horizon, and a day more
    for the agents' lag (see above)."""
    return s.replay_max_age_seconds + s.dedupe_horizon_seconds + DAY


notifications_sent_table = app.Table(
    "notifications_sent",
    key_type=bytes,
    # Values are our own JSON bytes, like the other tables' (pipeline.streaming.versions).
    value_type=bytes,
    partitions=settings.partitions,
    help="Per order: the decision whose notification was sent, and when.",
    # Expiry, in the store and in the changelog (see above).
    options={"ttl": kept_seconds(settings)},
    extra_topic_configs={
        "cleanup.policy": "compact,delete",
        "retention.ms": str(kept_seconds(settings) * 1000),
    },
)


# Written at once, not at the next commit: the email went out, and a worker that dies before
# its next commit must not leave the next owner without the mark (a second email).
notifications_sent: VersionedTable[NotificationSent] = VersionedTable(
    notifications_sent_table, NotificationSent.from_value, lambda sent: sent.order_id,
    at_once=True,
)  # fmt: skip
