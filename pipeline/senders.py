"""Notification senders. Each takes the event id as its idempotency key.

- :class:`MailboxSender` (the default) writes one file per message into a folder, named by the
  event id and created atomically (write to a temporary name, then ``link``): a repeat of the
  same event finds the file and adds nothing, overwrites nothing. Exactly one message per
  event, across redeliveries and crashes.
- :class:`SmtpSender` sends through an SMTP server when ``PIPELINE_SMTP_HOST`` is set, with
  ``Message-ID`` derived from the event id, and records each sent id in a marker folder first
  checked on a repeat. What SMTP cannot promise: if the worker dies after the server accepted
  the message but before the marker is written, the message is sent again on redelivery. The
  repeat carries the same ``Message-ID``, which many mail stores use to drop duplicates, but
  SMTP itself has no idempotent submission.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Message:
    idempotency_key: str  # the event id
    to: str
    subject: str
    body: str


class Sender(Protocol):
    async def send(self, message: Message) -> bool:
        """Deliver ``message`` unless it was delivered before; True if sent now."""
        ...


def _email(message: Message, sender: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = message.to
    mail["Subject"] = message.subject
    mail["Message-ID"] = f"<{message.idempotency_key}@orders-pipeline>"
    mail.set_content(message.body)
    return mail


def _create_once(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists; atomic, never a partial file."""
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


class MailboxSender:
    def __init__(self, folder: Path, sender: str = "orders@localhost") -> None:
        self.folder = folder
        self.sender = sender
        folder.mkdir(parents=True, exist_ok=True)

    async def send(self, message: Message) -> bool:
        data = bytes(_email(message, self.sender))
        return await asyncio.to_thread(
            _create_once, self.folder / f"{message.idempotency_key}.eml", data
        )


class SmtpSender:
    def __init__(self, host: str, port: int, sender: str, sent_markers: Path) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.markers = sent_markers
        sent_markers.mkdir(parents=True, exist_ok=True)

    async def send(self, message: Message) -> bool:
        marker = self.markers / message.idempotency_key
        if marker.exists():
            return False
        await asyncio.to_thread(self._deliver, _email(message, self.sender))
        await asyncio.to_thread(_create_once, marker, b"")
        return True

    def _deliver(self, mail: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=30) as smtp:
            smtp.send_message(mail)
