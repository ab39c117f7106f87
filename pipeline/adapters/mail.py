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
    mail["Message-ID"] = _message_id(message)
    mail.set_content(message.body)
    return mail


def _message_id(message: Message) -> str:
    return f"<{message.idempotency_key}@orders-pipeline>"


def email_bytes(message: Message, sender: str) -> bytes:
    """The message as ``bytes(_email(message, sender))`` gives it, byte for byte.

    The email package parses every header it is given through its header registry: about
    2 ms per message, which made composing the mail a tenth of a worker's CPU in the soak. A
    message whose headers and body are plain printable ASCII lines needs none of that (no
    encoded words, 7bit body), so it is written directly; anything else (non-ASCII, a line
    break or control character in a header, a line over RFC 5322's 998 characters) goes
    through the email package as before. Headers past 78 characters are not folded here
    (78 is a SHOULD of RFC 5322; 998 a MUST), so such a message differs from the email
    package's in its folding only: parsed, both give the same headers and body.
    """
    headers = (
        ("From", sender),
        ("To", message.to),
        ("Subject", message.subject),
        ("Message-ID", _message_id(message)),
    )
    body = message.body if message.body.endswith("\n") else message.body + "\n"
    if not all(_plain(f"{name}: {value}") for name, value in headers) or not _plain_body(body):
        return bytes(_email(message, sender))
    lines = [f"{name}: {value}" for name, value in headers]
    lines += ['Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: 7bit",
              "MIME-Version: 1.0", "", body]  # fmt: skip
    return "\n".join(lines).encode("ascii")


_MAX_PLAIN_LINE = 998  # RFC 5322 2.1.1


def _plain(line: str) -> bool:
    return (
        line.isascii() and len(line) <= _MAX_PLAIN_LINE
        and "\r" not in line and "\n" not in line and line.isprintable()
    )  # fmt: skip


def _plain_body(body: str) -> bool:
    return body.isascii() and all(
        len(line) <= _MAX_PLAIN_LINE and line.isprintable() for line in body[:-1].split("\n")
    )


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
        # Inline, not in a thread: a small file written to the page cache (no fsync) costs
        # less than the hand-over to a thread and back.
        return _create_once(
            self.folder / f"{message.idempotency_key}.eml", email_bytes(message, self.sender)
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
