"""Notifications: one message per order on ``orders.status`` — a confirmation when inventory
reserved every line, a rejection notice when it could not.

Guarantees: once per order, whichever worker, on whichever host, handles its decisions. The
dedupe state is the ``notifications_sent`` table (:mod:`tables.notifications`), keyed by order
id like ``orders.status``: it moves with the partition, so a decision redelivered to the next
owner after a crash or a rebalance, retried, replayed or announced again finds the entry and
sends nothing (it sends the entry to the changelog again, as every table does for a repeat).
A failed send writes no entry: the failure policy retries the decision, then dead-letters it.

Crash window: the entry is written when the sender returns, in RocksDB at once and to the
changelog within the producer's linger and the broker's acknowledgement (milliseconds). A
worker killed (or stopped) after the mail server accepted a message and before that
acknowledgement leaves no entry the partition's next owner can see, and that owner sends the
message again: at most one duplicate per order per such crash, with the same ``Message-ID``
(from the decision's event id), which many mail stores drop. On the same host the RocksDB
write survives a killed process, so there only a kill between the server's acceptance and
that write repeats. Nothing is marked *sending* before the send: SMTP cannot be asked whether
it accepted a message, so a next owner finding such a mark would face the same choice — send
again (this same duplicate) or skip (a customer who may never hear of the order) — and every
message would wait for a broker acknowledgement first. A duplicate is the lesser harm.

Zombies: a worker frozen past its session timeout goes on, when it runs again, with the
decisions it had fetched, whose partition another worker owns by then and has notified. Right before
it sends, the agent checks its lease (:mod:`pipeline.streaming.fencing`): no heartbeat answered
within a session timeout, or a record from an older group generation, and it does not send; the
decision is retried and set aside to a retry topic, and the owner finds it notified.

Assumes: decisions are keyed by order id (the order-status agent publishes them so).
Concurrency stays 1 (faust #606).
"""

from __future__ import annotations

import logging
import time
from functools import cached_property

import faust
from faust.streams import current_event

from pipeline.adapters.mail import MailboxSender, Sender, SmtpSender
from pipeline.app import app, settings
from pipeline.domain.events import OrderConfirmed, OrderRejected
from pipeline.domain.notifications import NotificationSent, compose, needs_notice
from pipeline.streaming import fencing
from pipeline.streaming.consume import consume
from pipeline.streaming.topics import agent_source
from tables.notifications import notifications_sent

log = logging.getLogger(__name__)


class _Senders:
    @cached_property
    def current(self) -> Sender:
        if settings.smtp_host:
            return SmtpSender(settings.smtp_host, settings.smtp_port, settings.smtp_sender)
        assert settings.mailbox_dir is not None
        return MailboxSender(settings.mailbox_dir, settings.smtp_sender)


senders = _Senders()


async def notify(decision: OrderConfirmed | OrderRejected) -> None:
    sent = notifications_sent.get(decision.order_id)
    if not needs_notice(sent):
        assert sent is not None
        if sent.event_id != decision.event_id:  # the database holds one decision per order
            log.warning("order %s was notified of %s already; %s not sent",
                        decision.order_id, sent.event_id, decision.event_id)  # fmt: skip
        await notifications_sent.save(sent, sent)  # a repeat: the changelog may lack it
        return
    record = current_event()
    if record is not None:  # a worker that lost the partition (a zombie) must not send
        fencing.check(record.message, app, settings.session_timeout_seconds)
    await senders.current.send(compose(decision))
    await notifications_sent.save(
        sent, NotificationSent(decision.order_id, decision.event_id, int(time.time()))
    )


@app.agent(agent_source("notifications"), concurrency=1)
async def notify_customers(stream: faust.StreamT[bytes]) -> None:
    await consume(stream, "notifications", notify, OrderConfirmed, OrderRejected)
