"""The SMTP sender against a real SMTP server on loopback (aiosmtpd). Dedupe is not its job:
the notification agent's table sends each order's message once (test_notifications_move)."""

from __future__ import annotations

import asyncio
import email
from typing import Any

from aiosmtpd.controller import Controller

from pipeline.adapters.mail import SmtpSender
from pipeline.domain.notifications import Message
from tests.integration.workers import free_port


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


def test_smtp_sender_sends_the_message_with_its_message_id() -> None:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sender = SmtpSender("127.0.0.1", port, "orders@example.com")
        message = Message("evt-42", "c@example.com", "Your order", "Thanks")
        assert asyncio.run(sender.send(message)) is True
    finally:
        controller.stop()
    assert len(inbox.messages) == 1
    mail = inbox.messages[0]
    assert mail["Message-ID"] == "<evt-42@orders-pipeline>"
    assert (mail["To"], mail["Subject"]) == ("c@example.com", "Your order")
