"""The mailbox sender's messages: written directly when plain, through the email package
otherwise, and the same mail either way (``pipeline.adapters.mail.email_bytes``)."""

from __future__ import annotations

import asyncio
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from pipeline.adapters.mail import MailboxSender, _email, email_bytes
from pipeline.domain.events import OrderConfirmed, OrderRejected
from pipeline.domain.notifications import Message, compose

ORDER = "86fc7070-d916-4a75-a666-14ee8ef93c9d"


def decisions() -> list[OrderConfirmed | OrderRejected]:
    common = {"order_id": ORDER, "customer_id": "c-1", "customer_email": "c-1@example.com"}
    return [
        OrderConfirmed(event_id="e-confirmed", **common),
        OrderRejected(event_id="e-rejected", reason="insufficient stock for sku-1", **common),
    ]


def parsed(data: bytes) -> dict[str, str]:
    mail = message_from_bytes(data, policy=policy.default)
    # Stripped: the email package folds a long subject right after "Subject:", and its own
    # parser then reads a leading space.
    fields = {name: str(mail[name]).strip() for name in ("From", "To", "Subject", "Message-ID")}
    fields["type"] = mail.get_content_type()
    fields["body"] = mail.get_content()
    return fields


@pytest.mark.parametrize("decision", decisions(), ids=lambda d: type(d).__name__)
def test_a_plain_message_is_the_same_mail_as_the_email_packages(decision: OrderConfirmed) -> None:
    message = compose(decision)
    fast = email_bytes(message, "orders@localhost")
    assert parsed(fast) == parsed(bytes(_email(message, "orders@localhost")))
    assert parsed(fast)["Message-ID"] == f"<{decision.event_id}@orders-pipeline>"


def test_a_short_plain_message_is_byte_for_byte_the_email_packages() -> None:
    message = Message("e-1", "a@example.com", "Your order 1 is confirmed", "Thank you.")
    assert email_bytes(message, "orders@localhost") == bytes(_email(message, "orders@localhost"))


@pytest.mark.parametrize(
    "message",
    [
        Message("e-2", "zoë@example.com", "Your order is confirmed", "Thank you."),
        Message("e-3", "a@example.com", "Bestellung bestätigt", "Danke schön."),
        Message("e-4", "a@example.com", "Subject", "Merci, voilà."),
        Message("e-5", "a@example.com", "Subject", "x" * 1200),
    ],
    ids=["non-ascii address", "non-ascii subject", "non-ascii body", "long body line"],
)
def test_anything_but_plain_lines_goes_through_the_email_package(message: Message) -> None:
    assert email_bytes(message, "orders@localhost") == bytes(_email(message, "orders@localhost"))


def test_a_line_break_in_a_header_cannot_add_a_header() -> None:
    message = Message("e-6", "a@example.com", "Hi\r\nBcc: victim@example.com", "Body")
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        email_bytes(message, "orders@localhost")  # the email package refuses, as before


def test_the_mailbox_writes_each_message_once(tmp_path: Path) -> None:
    sender = MailboxSender(tmp_path)
    message = compose(decisions()[0])
    assert asyncio.run(sender.send(message)) is True
    assert asyncio.run(sender.send(message)) is False
    (written,) = tmp_path.glob("*.eml")
    assert written.name == "e-confirmed.eml"
    assert parsed(written.read_bytes())["To"] == "c-1@example.com"
