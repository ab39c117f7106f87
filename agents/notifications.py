"""Notifications: one message per order decision on ``orders.status`` — a confirmation when
inventory reserved every line, a rejection notice when it could not.

Guarantees: the sender is given the decision event's id (computed from the order) as its
idempotency key, so redeliveries and repeats of the decision send nothing more (see
``pipeline.senders`` for what SMTP can and cannot promise). No table: the sender's own record
(the mailbox file, or the SMTP sent-marker) is the dedupe state.
"""

from __future__ import annotations

from functools import cached_property

import faust

from pipeline.app import app, settings
from pipeline.consume import consume
from pipeline.events import OrderConfirmed, OrderRejected
from pipeline.senders import MailboxSender, Message, Sender, SmtpSender
from pipeline.topics import agent_source


def compose(decision: OrderConfirmed | OrderRejected) -> Message:
    if isinstance(decision, OrderConfirmed):
        subject = f"Your order {decision.order_id} is confirmed"
        body = "Thank you for your order. Every item is reserved for you."
    else:
        subject = f"Your order {decision.order_id} could not be fulfilled"
        body = f"We are sorry: your order was not accepted ({decision.reason})."
    return Message(decision.event_id, decision.customer_email, subject, body)


class _Senders:
    @cached_property
    def current(self) -> Sender:
        if settings.smtp_host:
            return SmtpSender(settings.smtp_host, settings.smtp_port, settings.smtp_sender,
                              settings.data_dir / "smtp-sent")  # fmt: skip
        assert settings.mailbox_dir is not None
        return MailboxSender(settings.mailbox_dir, settings.smtp_sender)


senders = _Senders()


async def notify(decision: OrderConfirmed | OrderRejected) -> None:
    await senders.current.send(compose(decision))


@app.agent(agent_source("notifications"), concurrency=1)
async def notify_customers(stream: faust.StreamT[bytes]) -> None:
    await consume(stream, "notifications", notify, OrderConfirmed, OrderRejected)
