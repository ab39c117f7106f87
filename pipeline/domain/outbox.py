"""An outbox row as the forwarder sees it, and the states a row goes through.

A row is ``pending`` from the commit of its order's transaction until Kafka acknowledged it
(``published``), or until it proves unpublishable (``parked``, with the error that says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

PENDING, PUBLISHED, PARKED = "pending", "published", "parked"
MAX_ERROR_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class PendingRow:
    id: int
    event_id: str
    partition_key: str
    event_type: str
    schema_version: int
    payload: bytes
    created_at: datetime
