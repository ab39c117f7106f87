"""What the record being handled says about its delivery: its time, which places it within
the dedupe horizon, and whether it is a dead-letter replay (:mod:`pipeline.domain.horizon`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from faust.streams import current_event

from pipeline.app import settings
from pipeline.domain import failures
from pipeline.domain.horizon import Horizon


def current_message() -> Any:
    event = current_event()
    if event is None:
        raise RuntimeError("tables are written inside an agent, for an event")
    return event.message


def horizon(message: Any | None = None) -> Horizon:
    """The horizon at the time of ``message`` (the current record by default): its Kafka
    timestamp in whole seconds, which a retry or replay keeps from the original record."""
    message = current_message() if message is None else message
    stamp = message.timestamp  # seconds since the epoch (Faust converts Kafka's ms)
    now = int(stamp) if stamp is not None else int(time.time())
    return Horizon(now, settings.dedupe_horizon_seconds, settings.replay_max_age_seconds)


def cause_time(message: Any | None = None) -> datetime | None:
    """The time a record derived from the current one is sent with: the current record's own.

    Each key's horizon is measured on the times of the records it sees. Were derived records
    stamped when they are sent, a worker behind its backlog would spread a repeat and its first
    delivery further apart than they arrived (the repeat of a cancellation seconds later in
    ``orders.events`` could reach the stock keeper past the horizon, and release twice). Stamped
    with their cause's time, every record downstream keeps the time its source event had.
    """
    message = current_message() if message is None else message
    stamp = message.timestamp
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC)


def position(message: Any | None = None) -> str:
    """Where the record was read, ``"<s|r><partition>@<offset>"``: ``s`` for the agent's source
    topic, ``r`` for its redelivery topic (retries and replays), each read in offset order."""
    message = current_message() if message is None else message
    stream = "r" if ".redeliver." in f".{message.topic}" else "s"
    return f"{stream}{message.partition}@{message.offset}"


def event_id(message: Any) -> str | None:
    """The record's event id, from the ``event_id`` header every producer of ours sets (the
    value may be what failed to decode)."""
    for key, value in message.headers or ():
        if key == "event_id":
            try:
                return bytes(value).decode() or None
            except UnicodeDecodeError:
                return None
    return None


def is_replay(message: Any | None = None) -> bool:
    """Whether the record is a dead letter sent back by a replay."""
    message = current_message() if message is None else message
    for key, value in message.headers or ():
        if key == failures.REPLAYS:
            try:
                return int(value) > 0
            except ValueError:
                return False
    return False
