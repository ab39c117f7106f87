"""Notification senders: adapters that hand one message to the outside world.

Whether a message is due is not theirs to decide: the notification agent sends each order's
message once, by its ``notifications_sent`` table, which moves with the partition between
hosts (:mod:`agents.notifications`). Each message carries the decision's event id as its
idempotency key: the file name of the mailbox, the ``Message-ID`` of a mail.

- :class:`MailboxSender` (the default) writes one file per message into a folder, named by the
  event id and created atomically (write to a temporary name, then ``link``): never a partial
  file, and a repeat into the same folder adds nothing and overwrites nothing.
- :class:`SmtpSender` sends through an SMTP server when ``PIPELINE_SMTP_HOST`` is set, with
  ``Message-ID`` derived from the event id. SMTP has no idempotent submission: a message sent
  twice is delivered twice, with the same ``Message-ID``, which many mail stores use to drop
  duplicates. It keeps no sent-markers of its own: they were on the worker's local disk, so a
  partition's next owner on another host never saw them, and they grew by a file per message
  forever. The agent's table does their job on every host, and on the same host its RocksDB
  write follows the send as closely as the marker did, so it protects no less there.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from pipeline.domain.notifications import Message


class Sender(Protocol):
    async def send(self, message: Message) -> bool:
        """Deliver ``message``; False if the sender knows it delivered it before (the mailbox
        finds its file), True otherwise."""
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
    def __init__(self, host: str, port: int, sender: str) -> None:
        self.host = host
        self.port = port
        self.sender = sender

    async def send(self, message: Message) -> bool:
        await asyncio.to_thread(self._deliver, _email(message, self.sender))
        return True

    def _deliver(self, mail: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=30) as smtp:
            smtp.send_message(mail)
