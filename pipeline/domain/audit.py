"""Who did what to which row, when and why: the record an operator's action leaves.

Discarding an outbox row or a dead letter throws an event away for good, and requeueing a
parked row sends one out of its first order: each leaves an :class:`Action` in the database
(table ``operator_actions``), in the same transaction as the change it records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_BY = 128
MAX_REASON = 1000

OUTBOX_REQUEUE = "outbox.requeue"
OUTBOX_DISCARD = "outbox.discard"
DEAD_LETTER_DISCARD = "dead-letter.discard"


@dataclass(frozen=True, slots=True)
class Audit:
    """Who asks (``by``: an operator's name, or where the request came from), why, and when."""

    by: str
    reason: str | None
    at: datetime


def parse_audit(
    by: Any, reason: Any, problems: list[dict[str, str]], *, reason_required: bool
) -> tuple[str, str | None]:
    """``by`` and the reason checked; problems name the field at fault. The reason travels as
    ``why`` (``--why`` on the command line): a dead letter's ``reason`` is already a filter."""
    if not isinstance(by, str) or not 1 <= len(by.strip()) <= MAX_BY:
        problems.append({"field": "by", "message": f"must be 1 to {MAX_BY} characters"})
    if reason is None and not reason_required:
        return str(by).strip(), None
    if not isinstance(reason, str) or not 1 <= len(reason.strip()) <= MAX_REASON:
        message = f"must say why, in 1 to {MAX_REASON} characters"
        problems.append({"field": "why", "message": message})
        return str(by).strip(), None
    return str(by).strip(), reason.strip()
