"""Fencing for effects outside Kafka: a worker acts on a record only while it can be sure its
partition is still its own.

A worker frozen past its session timeout (a long GC pause, a stopped container, SIGSTOP) has lost
its partitions to another worker by the time it runs again, but does not know it until its next
heartbeat is answered. Meanwhile it goes on with the records it had fetched. For table writes that
is harmless (a late changelog record carries an older version and is skipped, see
:mod:`pipeline.streaming.versions`) and for derived events too (deterministic ids, deduped
downstream). An email is neither: the new owner has sent it already, and the zombie sends it again
(found by the frozen-worker fault scenario once its checker counted the mail).

The group coordinator keeps a member for ``session.timeout`` after the last heartbeat it
received, and only then gives its partitions away. So a worker whose last successful heartbeat
was *sent* less than a session timeout ago (by its own monotonic clock, which runs on while
the process is stopped) still owns what it was assigned: that is its lease. :func:`owns` says
whether the lease holds and the record was fetched in the current group generation; the
notifications agent checks it right before it sends, and raises :class:`NotOwner` (transient)
otherwise. The record is retried, then set aside to a retry topic, from which the partition's
owner handles it, finds it notified, and sends nothing: no mail lost, none doubled.

What it cannot fence: a worker stopped between the check and the send itself (microseconds),
and a crash after the mail server accepted a message and before its mark reached the changelog
(see :mod:`agents.notifications`).
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka.consumer import group_coordinator

from pipeline.domain.failures import RetryableError

# Heartbeats are answered in milliseconds here; keep a margin for a slow answer and for the
# coordinator's clock granularity.
MARGIN_SECONDS = 0.5

_lease_from: float | None = None  # monotonic time the last successful heartbeat was sent


class NotOwner(RetryableError):
    """This worker cannot be sure it still owns the record's partition."""


def lease_left(session_timeout: float, now: float | None = None) -> float:
    """Seconds this worker's membership is certain for (negative: expired; no lease: -inf)."""
    if _lease_from is None:
        return float("-inf")
    now = time.monotonic() if now is None else now
    return _lease_from + session_timeout - MARGIN_SECONDS - now


def owns(message: Any, app: Any, session_timeout: float) -> bool:
    """Whether this worker can act on ``message`` as its partition's owner: its lease holds and
    the record was fetched in the group's current generation. Without a group (no heartbeat
    ever sent: an agent under ``test_context``) there is nothing to fence."""
    if _lease_from is not None and lease_left(session_timeout) <= 0:
        return False
    generation = getattr(message, "generation_id", None)
    return generation is None or generation == app.consumer_generation_id


def check(message: Any, app: Any, session_timeout: float) -> None:
    if not owns(message, app, session_timeout):
        raise NotOwner(
            f"{message.topic}[{message.partition}]@{message.offset}: no heartbeat answered for "
            f"{-lease_left(session_timeout) + session_timeout:.1f}s or a new group generation: "
            "this worker may have lost the partition; not acting on the record"
        )


def note_heartbeat(sent_at: float) -> None:
    global _lease_from
    if _lease_from is None or sent_at > _lease_from:
        _lease_from = sent_at


def reset() -> None:
    global _lease_from
    _lease_from = None


STOCK_DO_HEARTBEAT = group_coordinator.GroupCoordinator._do_heartbeat
STOCK_START_HEARTBEAT = group_coordinator.GroupCoordinator._start_heartbeat_task


async def _do_heartbeat(self: Any) -> bool:
    """aiokafka's heartbeat, noting when a heartbeat that was answered was sent."""
    sent_at = time.monotonic()
    ok: bool = await STOCK_DO_HEARTBEAT(self)
    if ok:
        note_heartbeat(sent_at)
    return ok


def _start_heartbeat_task(self: Any) -> None:
    """aiokafka's, after a join: the session starts now, as aiokafka's heartbeat loop counts."""
    note_heartbeat(time.monotonic())
    STOCK_START_HEARTBEAT(self)


def install() -> None:
    """Track the lease in aiokafka's group coordinator (idempotent)."""
    group_coordinator.GroupCoordinator._do_heartbeat = _do_heartbeat
    group_coordinator.GroupCoordinator._start_heartbeat_task = _start_heartbeat_task
