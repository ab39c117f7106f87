"""Which orders have had their notification: the dedupe state of the notification agent.

Keyed by order id, like ``orders.status``, so an order's entry lives in the partition its
decisions arrive on and moves with it: the next owner of the partition, on any host, recovers
the entry from the changelog before it handles a decision again. (A marker on the sending
worker's disk does not move: a decision redelivered to another host was mailed twice.)

Rule: one message per order. An order has one decision (the order-status agent announces only
what the database holds, and the database moves an order out of ``created`` once), so the
first decision mailed is the one; any later decision for the order — a repeat of it from a
redelivery, a retry, a replay or a re-announcement — sends nothing.

The entry is written after the sender returns (see :mod:`agents.notifications` for the crash
window this leaves and why nothing is marked before the send).

Horizon: an entry is kept :func:`kept_seconds` after it was written, past every redelivery
of its order's decision the system can make. Repeats (a crash or a rebalance, the
stuck-partition re-read, the retry topics, a forwarder's re-publish) come within
``PIPELINE_DEDUPE_HORIZON_SECONDS``. A dead letter is replayed only within
``PIPELINE_REPLAY_MAX_AGE_SECONDS`` of its record's time, and a replayed record of the order
(its creation, a line's command or outcome) makes the order-status agent announce the decision
again; those records carry the time of the order's creation, which precedes the message. A day
more covers the agents' lag behind their topics. By default that is 7 days and 5 minutes, also
past the topics' default 7-day retention. Then the entry expires in the partition's RocksDB
(a TTL: dropped when RocksDB next compacts it) and in the changelog (``compact,delete`` with
that retention: dropped with its segment), so neither a running worker nor one recovering the
table keeps it. A decision that arrives later still (an agent more than a day behind its
topic, a consumer group reset by hand) is mailed again.

Size: the key (the order id, 36 bytes for a UUID) and ``{"v":1,"event_id":"<36>","sent_at":
<epoch s>}`` (78 bytes), about 115 bytes per order before RocksDB's and the changelog's own
overhead and compression, whatever the order's history. The table holds the orders notified
within the horizon (and those whose expiry RocksDB has not compacted away yet): at 100,000
orders a day, about 700,000 entries, 80 MB across all partitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.domain.events import OrderConfirmed, OrderRejected
from pipeline.domain.values import VERSION

DAY = 86400


@dataclass(frozen=True, slots=True)
class NotificationSent:
    order_id: str
    event_id: str  # the decision the message announced
    sent_at: int  # when the sender returned, in whole seconds since the epoch
    # Of the stored value this was read from (pipeline.streaming.versions); not part of what it
    # says.
    version: int = field(default=0, compare=False)

    def to_value(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "sent_at": self.sent_at}

    @classmethod
    def from_value(cls, order_id: str, value: dict[str, Any]) -> NotificationSent:
        return cls(
            order_id=order_id,
            event_id=value["event_id"],
            sent_at=value["sent_at"],
            version=value.get(VERSION, 0),
        )


def needs_notice(sent: NotificationSent | None) -> bool:
    """Whether a decision for the order is to be mailed: only if none was before."""
    return sent is None


@dataclass(frozen=True, slots=True)
class Message:
    idempotency_key: str  # the event id
    to: str
    subject: str
    body: str


def compose(decision: OrderConfirmed | OrderRejected) -> Message:
    if isinstance(decision, OrderConfirmed):
        subject = f"Your order {decision.order_id} is confirmed"
        body = "Thank you for your order. Every item is reserved for you."
    else:
        subject = f"Your order {decision.order_id} could not be fulfilled"
        body = f"We are sorry: your order was not accepted ({decision.reason})."
    return Message(decision.event_id, decision.customer_email, subject, body)
